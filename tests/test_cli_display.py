"""The search's live view when stdout is not a terminal (a log file, a pipe, CI)."""
from __future__ import annotations

import io

from rich.console import Console

from kdzero.cli import _search_display


def test_the_live_view_ends_its_last_frame_with_a_line_break_off_a_terminal(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(_search_display, "console", Console(file=out, width=80, force_terminal=False))
    with _search_display.LiveSearchDisplay(3, title="digits"):
        pass
    _search_display.console.print("leaderboard: digits")
    lines = out.getvalue().splitlines()
    assert lines[-1] == "leaderboard: digits"
    assert lines[-2].startswith("╰") and lines[-2].endswith("╯")
