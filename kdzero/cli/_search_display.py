"""The live view of a running search: trial progress with ETA, best so far, current genomes, rejections."""
from __future__ import annotations

import time
from collections import Counter

from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from kdzero.cli._display import console
from kdzero.genome import Genome
from kdzero.proxy import ProxyResult
from kdzero.search.record import RunLog, trial_line
from kdzero.search.runner import SearchObserver


class LiveSearchDisplay(SearchObserver):
    """A rich Live view fed by the worker's events (in-process) or by polling the study (multi-worker)."""

    def __init__(self, total: int, done: int = 0, title: str = "kdzero search", enabled: bool = True,
                 plain_lines: bool = False, run_log: RunLog | None = None) -> None:
        self.enabled = enabled
        self.plain_lines = plain_lines or not enabled
        self.run_log = run_log
        self.title = title
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console)
        self.trials = self.progress.add_task("trials", total=total, completed=done)
        self.steps = self.progress.add_task("proxy steps", total=1, visible=False)
        self.best: tuple[float, str, int] | None = None
        self.baseline: float | None = None
        self.current: list[str] = []
        self.rejections: Counter[str] = Counter()
        self.messages: list[str] = []
        self.start = time.monotonic()
        self.live = Live(self._render(), console=console, refresh_per_second=4, transient=False)

    def __enter__(self) -> LiveSearchDisplay:
        if self.enabled:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.live.update(self._render())
            self.live.__exit__(*exc)
            if not self.live.console.is_terminal:
                # Off a terminal, Live prints its last frame without a line break, so the next line (the
                # leaderboard's title, in a log file or a pipe) would start on the panel's bottom border.
                self.live.console.line()

    def _render(self) -> Group:
        info = Table.grid(padding=(0, 1))
        info.add_column(style="bold")
        info.add_column(overflow="fold")
        if self.best is not None:
            info.add_row("best", f"{self.best[0]:.4f}  {escape(self.best[1])}  (trial {self.best[2]})")
        if self.baseline is not None:
            info.add_row("CE-only", f"{self.baseline:.4f}")
        for genome in self.current[:4]:
            info.add_row("now", escape(genome))
        if self.rejections:
            info.add_row("rejected", ", ".join(f"{n} {reason}" for reason, n in self.rejections.most_common()))
        for message in self.messages[-3:]:
            info.add_row("", f"[dim]{escape(message)}[/dim]")
        return Group(self.progress, Panel(info, title=self.title, title_align="left"))

    def refresh(self) -> None:
        """Redraw now."""
        if self.enabled:
            self.live.update(self._render())

    # ------------------------------------------------------------------------------------------- events
    def log(self, message: str) -> None:
        if self.run_log is not None:
            self.run_log.write(message)
        if self.enabled:
            self.messages.append(message)
            self.refresh()
        else:
            console.print(message, highlight=False, markup=False)

    def set_baseline(self, result: ProxyResult) -> None:
        """Show the CE-only reference score."""
        self.baseline = result.score
        self.refresh()

    def trials_started(self, numbers: list[int], genomes: list[Genome]) -> None:
        self.current = [f"#{n} {g}" for n, g in zip(numbers, genomes)]
        self.progress.reset(self.steps, total=1, visible=False)
        self.refresh()

    def step(self, step: int, total: int) -> None:
        self.progress.update(self.steps, total=total, completed=step, visible=True)

    def trial_finished(self, number: int, genome: Genome, result: ProxyResult, duplicate_of: int | None) -> None:
        self.progress.advance(self.trials)
        self.record(number, str(genome), result.score, result.stage if result.rejected else None,
                    seconds=result.seconds, duplicate_of=duplicate_of, rung=getattr(result, "rung", None))

    def record(self, number: int, genome: str, score: float | None, rejected_stage: str | None,
               seconds: float | None = None, duplicate_of: int | None = None, rung=None) -> None:
        """Account for one finished trial (also used when polling a multi-worker study): the best so far, the
        rejection counts, and its plain line (printed off a terminal or with --quiet; always in search.log)."""
        line = trial_line(number, genome, score, seconds, stage=rejected_stage, duplicate_of=duplicate_of,
                          rung=rung)
        if self.run_log is not None:
            self.run_log.write(line)
        if self.plain_lines:
            if self.enabled:
                self.live.console.print(line, highlight=False, markup=False, soft_wrap=True)
            else:
                console.print(line, highlight=False, markup=False, soft_wrap=True)
        if rejected_stage is not None:
            self.rejections[rejected_stage.replace("_", " ")] += 1
        elif score is not None and (self.best is None or score < self.best[0]):
            self.best = (score, genome, number)
        self.refresh()
