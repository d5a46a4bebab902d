"""The population of a search as a table: study -> pandas DataFrame -> rich table, CSV, JSON or a plot.

    import kdzero
    df = kdzero.leaderboard("runs/digits")          # best first; rejected genomes with include_all=True

Columns (``COLUMNS``): rank (1 = best, complete genomes only), trial, rung (the highest rung the genome
reached; ``frame(study, rung=R)`` lists rung R's genomes with their rung-R results), genome, score (lower is better),
val_acc, val_ce, s_gap, cka_gap, state (complete, rejected, failed, running, waiting), stage and reason (why a
genome was rejected), seconds (compute spent on the trial), origin (preset, retry, sampler), duplicate_of (a
trial whose result was reused instead of training again), key (canonical key).

The package's modules: ``frame`` (study -> DataFrame, ranking), ``table`` (the rich table), ``plot``,
``confirmed`` (the confirmed table) and ``students`` (a student search's leaderboard).
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pandas as pd

from kdzero.leaderboard.confirmed import ConfirmedTable as ConfirmedTable
from kdzero.leaderboard.confirmed import _signed as _signed
from kdzero.leaderboard.confirmed import confirmed_rich as confirmed_rich
from kdzero.leaderboard.frame import BASELINE_ATTR as BASELINE_ATTR
from kdzero.leaderboard.frame import (
    COLUMNS,
    arrange,
    baseline,
    frame,
    genome_at,
    load_leaderboard,
    open_study,
    with_baseline,
)
from kdzero.leaderboard.frame import HIGHER_IS_BETTER as HIGHER_IS_BETTER
from kdzero.leaderboard.frame import STATE_NAMES as STATE_NAMES
from kdzero.leaderboard.frame import _run_location as _run_location
from kdzero.leaderboard.frame import _rung_frame as _rung_frame
from kdzero.leaderboard.frame import _rungs_reached as _rungs_reached
from kdzero.leaderboard.plot import _all_genomes as _all_genomes
from kdzero.leaderboard.plot import op_frequencies, plot
from kdzero.leaderboard.table import FOLD_MIN as FOLD_MIN
from kdzero.leaderboard.table import RANK_MARKS as RANK_MARKS
from kdzero.leaderboard.table import LeaderboardTable, preset_names, rich_table
from kdzero.leaderboard.table import _acc as _acc
from kdzero.leaderboard.table import _Column as _Column
from kdzero.leaderboard.table import _fmt as _fmt
from kdzero.leaderboard.table import _table_width as _table_width
from kdzero.leaderboard.table import _with_preset_name as _with_preset_name

# Every name the single-file kdzero/leaderboard.py defined stays importable from here (the imports above); a
# redundant alias (``name as name``) marks a re-export left out of __all__.
__all__ = ["COLUMNS", "LeaderboardTable", "arrange", "baseline", "frame", "genome_at", "load_leaderboard",
           "op_frequencies", "open_study", "plot", "preset_names", "rich_table", "with_baseline"]


class _CallableModule(types.ModuleType):
    """``kdzero.leaderboard`` names both this module and DESIGN's public function ``kdzero.leaderboard(run)``.
    Importing the submodule rebinds the package attribute to the module, so the module itself is callable and
    ``kdzero.leaderboard("runs/NAME")`` works before and after any import of ``kdzero.leaderboard``."""

    def __call__(self, run: str | Path | None = None, **kwargs) -> pd.DataFrame:
        return load_leaderboard(run, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
