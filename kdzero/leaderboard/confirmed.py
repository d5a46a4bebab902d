"""The confirmed table (``kdzero.confirm.confirmed_table``) as a rich renderable that fits its console."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from kdzero.leaderboard.table import _fmt


def _signed(value, noise, verdict: str) -> str:
    if value is None or pd.isna(value):
        return "-"
    value = round(float(value), 2) + 0.0  # no "-0.00"
    shown = f"{value:+.2f}" if noise is None or pd.isna(noise) else f"{value:+.2f} ±{noise:.2f}"
    return f"{shown} noise" if verdict == "within noise" else f"{shown}      "  # numbers stay aligned


@dataclass
class ConfirmedTable:
    """The confirmed table (``kdzero.confirm.confirmed_table``) as a rich renderable, winner first: last-epoch
    test top-1 mean ± std over seeds, gains over KD, over the strongest hand-made reference (when it is not KD)
    and over CE-only with their noise bound (2 pooled standard errors; "noise" marks a gain within it), the best
    epoch's top-1, and the distiller. A narrow console drops the best epoch column first, then the trial/rung
    note; the distiller text folds rather than vanish."""

    df: pd.DataFrame
    title: str = "confirmed"

    @property
    def strongest(self) -> str:
        """The strongest hand-made reference of the run, when it is not KD (whose column is always shown)."""
        name = str(self.df.best_reference.iloc[0]) if len(self.df) and "best_reference" in self.df else ""
        return "" if name in ("", "KD") else name

    def _table(self, best: bool, origin: bool) -> Table:
        table = Table(title=self.title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                      pad_edge=False, padding=(0, 1))
        strongest = self.strongest
        headers = (["rank", "top-1 %", "vs KD"] + ([f"vs {strongest}"] if strongest else []) + ["vs CE-only"]
                   + (["best %"] if best else []) + ["distiller"])
        for header in headers:
            table.add_column(header, justify="left" if header == "distiller" else "right",
                             no_wrap=header != "distiller", overflow="fold", min_width=12 if header == "distiller"
                             else None)
        for row in self.df.itertuples(index=False):
            name = row.distiller
            if origin and row.kind != "reference":
                name = f"{name} (trial {row.trial}, rung {row.rung})"
            cells = ["" if pd.isna(row.rank) else str(row.rank),
                     "failed" if pd.isna(row.last_mean) else f"{row.last_mean:.2f} ± {_fmt(row.last_std, 2)}",
                     "" if row.distiller == "KD" else _signed(row.gain_kd, row.noise_kd, row.vs_kd)]
            if strongest:
                cells.append("" if row.distiller == strongest else _signed(row.gain_best, row.noise_best, row.vs_best))
            cells.append("" if row.distiller == "CE-only" else _signed(row.gain_ce, row.noise_ce, row.vs_ce))
            if best:
                cells.append("-" if pd.isna(row.best_mean) else f"{row.best_mean:.2f} (ep {row.best_epoch:.0f})")
            table.add_row(*cells, escape(name),
                          style="green" if row.rank == 1 else "italic" if row.kind == "reference" else "")
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width - (18 if self.strongest else 0)
        names = max([len(str(d)) for d in self.df.distiller] + [9])
        best, origin = width >= 92 + names, width >= 112 + names
        yield self._table(best=best, origin=origin)
        yield Text("gains are last-epoch mean differences ± 2 pooled standard errors of the seed noise; "
                   "'noise': the gain does not exceed that bound", style="dim")


def confirmed_rich(df: pd.DataFrame, title: str = "confirmed") -> ConfirmedTable:
    """The confirmed table as a renderable that fits its console (``ConfirmedTable``)."""
    return ConfirmedTable(df, title)
