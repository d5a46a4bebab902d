"""The leaderboard as a rich table that fits its console (``LeaderboardTable``, ``rich_table``); the student
search's table (``kdzero.leaderboard.students``) is drawn with the same columns and fitting."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd
from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

# What the rank column shows for unranked rows, so that their state reads even where the state column is left out.
RANK_MARKS = {"rejected": "rej", "failed": "fail", "running": "run", "waiting": "wait"}
FOLD_MIN = 20  # the narrowest a folding column (rejection reasons) is squeezed to


def _fmt(value, digits: int = 4) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _acc(value) -> str:
    return "-" if value is None or pd.isna(value) else f"{100 * value:.1f}"


@dataclass
class _Column:
    header: str
    cells: list[str]
    justify: str = "right"
    max_width: int | None = None  # wider cells fold (reasons), down to FOLD_MIN; None: never wraps

    def width(self) -> int:
        """The narrowest this column may be drawn: its widest cell, or FOLD_MIN for a folding column."""
        natural = max([len(self.header), *(len(c) for c in self.cells)])
        return min(natural, FOLD_MIN) if self.max_width else natural


def _table_width(columns: list[_Column]) -> int:
    """Characters a table of these columns takes: cells plus a 3-character gap (padding, rule, padding)."""
    return sum(c.width() for c in columns) + 3 * (len(columns) - 1)


@dataclass
class LeaderboardTable:
    """A leaderboard DataFrame as a rich renderable that fits the width it is drawn in: genome texts stay on one
    line, and where the console is too narrow the least important columns are left out (trial number first,
    then seconds, CKA-gap, S-gap, CE, state, reason, accuracy). State and reason columns appear only when some
    row is not a plain complete trial. Unranked rows show their state in the rank column (rej, fail, dup, run, wait),
    and when the reason column is left out their reasons follow the table, one line each."""

    columns: list[_Column]
    styles: list[str]
    title: str
    baseline_row: bool = False
    drop_order: tuple[str, ...] = field(default=("trial", "rung", "s", "CKA-gap", "S-gap", "CE", "state", "reason",
                                                 "acc %"))
    name_column: str = "genome"  # the column of names (genome or student text) that never wraps when it fits

    def fitted_columns(self, width: int) -> list[_Column]:
        """The columns kept for a console ``width`` characters wide: drop in ``drop_order`` until the rest fits,
        then take back, most important first, any dropped column that still fits."""
        kept = list(self.columns)
        dropped: list[str] = []
        for name in self.drop_order:
            if _table_width(kept) <= width:
                break
            dropped.append(name)
            kept = [c for c in kept if c.header != name]
        for name in reversed(dropped):
            trial = [c for c in self.columns if c in kept or c.header == name]
            if _table_width(trial) <= width:
                kept = trial
        return kept

    def reason_notes(self, kept: list[_Column]) -> list[str]:
        """When the reason column did not fit, each unranked row's reason as a line of its own (genome, trial,
        reason), so that ``--all`` in a narrow terminal still says why a genome was rejected or failed."""
        if any(c.header == "reason" for c in kept):
            return []
        by_header = {c.header: c for c in self.columns}
        if "reason" not in by_header:
            return []
        reasons, trials = by_header["reason"].cells, by_header["trial"].cells
        genomes = by_header[self.name_column].cells
        return [f"{genomes[i]} (trial {trials[i]}): {reasons[i]}" for i in range(len(reasons)) if reasons[i]]

    def table(self, kept: list[_Column], width: int) -> Table:
        """The rich Table of the ``kept`` columns (``fitted_columns(width)``) for a console ``width`` wide."""
        fits = _table_width(kept) <= width
        table = Table(title=self.title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                      padding=(0, 1), collapse_padding=False)
        for column in kept:
            if column.header == self.name_column:
                table.add_column(column.header, no_wrap=fits, overflow="fold")
            else:
                table.add_column(column.header, justify=column.justify, no_wrap=column.max_width is None,
                                 overflow="fold", max_width=column.max_width)
        rows = len(self.styles)
        for index in range(rows):
            if self.baseline_row and index == rows - 1:
                table.add_section()
            table.add_row(*(escape(c.cells[index]) for c in kept), style=self.styles[index])
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        kept = self.fitted_columns(options.max_width)
        yield self.table(kept, options.max_width)
        hidden = [c.header for c in self.columns if c not in kept]
        if hidden:
            yield Text(f"not shown at this width: {', '.join(hidden)} (widen the terminal, or use --format csv or "
                       f"json for every column)", style="dim")
        notes = self.reason_notes(kept)
        if notes:
            yield Text("why (too narrow for the reason column):", style="bold")
            for note in notes:
                yield Padding(Text(note, style="dim"), (0, 0, 0, 2), expand=False)  # wrapped lines keep the indent


def preset_names() -> dict[str, str]:
    """Canonical key -> upper-case preset name (KD, AT, SP, ...), to name the classical distillers in a table."""
    from kdzero.presets import PRESETS

    return {genome.key: name.upper().replace("_", "+") for name, genome in PRESETS.items()}  # kd_ls -> KD+LS


def _with_preset_name(genome: str | None, key: str | None) -> str:
    if not genome:
        return "-"
    name = preset_names().get(key) if key else None
    return f"{genome} ({name})" if name else genome


def rich_table(df: pd.DataFrame, title: str = "leaderboard", baseline: dict | None = None) -> LeaderboardTable:
    """A rich renderable of a leaderboard DataFrame that fits the console it is printed to (see
    ``LeaderboardTable``); ``baseline`` (a CE-only result dict) adds a reference row."""
    rows = list(df.itertuples(index=False))
    others = any(r.state != "complete" or not pd.isna(r.duplicate_of) for r in rows)

    def reason(row) -> str:
        if row.reason:
            return f"{row.stage}: {row.reason}" if row.stage else row.reason
        return "" if pd.isna(row.duplicate_of) else f"same as trial {row.duplicate_of}"

    def rank(row) -> str:
        if not pd.isna(row.rank):
            return str(row.rank)
        return "dup" if not pd.isna(row.duplicate_of) else RANK_MARKS.get(row.state, "-")

    columns = [
        _Column("rank", [rank(r) for r in rows]),
        _Column("trial", [str(r.trial) for r in rows]),
        _Column("genome", [_with_preset_name(r.genome, r.key) for r in rows], justify="left"),
        _Column("score", [_fmt(r.score) for r in rows]),
        _Column("acc %", [_acc(r.val_acc) for r in rows]),
        _Column("CE", [_fmt(r.val_ce, 3) for r in rows]),
        _Column("S-gap", [_fmt(r.s_gap, 3) for r in rows]),
        _Column("CKA-gap", [_fmt(r.cka_gap, 3) for r in rows]),
        _Column("s", [_fmt(r.seconds, 1) for r in rows]),
    ]
    if any(not pd.isna(r.rung) and r.rung > 0 for r in rows):
        columns.insert(2, _Column("rung", [_fmt(r.rung) for r in rows]))
    if others:
        columns.insert(-1, _Column("state", [r.state for r in rows], justify="left"))
        columns.insert(-1, _Column("reason", [reason(r) for r in rows], justify="left", max_width=40))
    styles = ["green" if not pd.isna(r.rank) and r.rank == 1 else "dim" if r.state != "complete" else ""
              for r in rows]
    if baseline:
        reference = {"rank": "", "trial": "", "genome": "CE-only baseline", "score": _fmt(baseline.get("score")),
                     "acc %": _acc(baseline.get("val_acc")), "CE": _fmt(baseline.get("val_ce"), 3),
                     "S-gap": _fmt(baseline.get("s_gap"), 3), "CKA-gap": _fmt(baseline.get("cka_gap"), 3),
                     "state": "reference", "reason": "", "s": _fmt(baseline.get("seconds"), 1), "rung": ""}
        for column in columns:
            column.cells.append(reference[column.header])
        styles.append("italic")
    return LeaderboardTable(columns, styles, title, baseline_row=bool(baseline))
