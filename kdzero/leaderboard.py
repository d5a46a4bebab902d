"""The population of a search as a table: study -> pandas DataFrame -> rich table, CSV or JSON.

    import kdzero
    df = kdzero.leaderboard("runs/digits")          # best first; rejected genomes with all=True

Columns (``COLUMNS``): rank (1 = best, complete genomes only), trial, genome, score (lower is better),
val_acc, val_ce, s_gap, cka_gap, state (complete, rejected, failed, running, waiting), stage and reason (why a
genome was rejected), seconds (compute spent on the trial), origin (preset, retry, sampler), duplicate_of (a
trial whose result was reused instead of training again), key (canonical key).
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from optuna.trial import TrialState
from rich.markup import escape
from rich.table import Table

from kdzero.errors import ConfigError

COLUMNS = ("rank", "trial", "genome", "score", "val_acc", "val_ce", "s_gap", "cka_gap", "state", "stage",
           "reason", "seconds", "origin", "duplicate_of", "key")
STATE_NAMES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "rejected", TrialState.FAIL: "failed",
               TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}


def open_study(run: str | Path | None = None, *, storage: str | None = None, study: str | None = None):
    """The study of a run directory (``runs/NAME``) or of a storage URL and study name."""
    from kdzero.search.study import load_study, make_storage

    if run is not None:
        run_dir = Path(run)
        database = run_dir / "study.db"
        if not database.is_file():
            hint = f"; runs there: {', '.join(sorted(p.name for p in run_dir.parent.iterdir() if p.is_dir()))}" \
                if run_dir.parent.is_dir() else ""
            raise ConfigError(f"no search run at {run_dir} (no study.db){hint}")
        storage = storage or f"sqlite:///{database.as_posix()}"
        study = study or run_dir.name
    if storage is None or study is None:
        raise ConfigError("give a run directory, or both a storage URL and a study name")
    try:
        return load_study(make_storage(storage), study)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot read study {study!r}: {str(exc).splitlines()[0]}") from None


def frame(study, include_all: bool = False) -> pd.DataFrame:
    """The study's trials as a DataFrame with ``COLUMNS``, best first; rejected/failed rows only with
    ``include_all``. Duplicates (reused results) are listed only with ``include_all`` too."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        origin = attrs.get("origin") or ("retry" if attrs.get("retry_of") is not None else "sampler")
        genome = attrs.get("genome")
        if genome is None and trial.params:
            from kdzero.search.space import genome_from_params

            try:
                genome = str(genome_from_params(trial.params))
            except Exception:
                genome = None
        value = trial.value if trial.state == TrialState.COMPLETE else None
        rows.append({
            "trial": trial.number, "genome": genome, "score": value,
            "val_acc": attrs.get("val_acc") if trial.state == TrialState.COMPLETE else None,
            "val_ce": attrs.get("val_ce"), "s_gap": attrs.get("s_gap"), "cka_gap": attrs.get("cka_gap"),
            "state": STATE_NAMES.get(trial.state, trial.state.name.lower()),
            "stage": attrs.get("stage") or "", "reason": attrs.get("reason") or "",
            "seconds": attrs.get("seconds"), "origin": origin, "duplicate_of": attrs.get("duplicate_of"),
            "key": attrs.get("key"),
        })
    df = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "rank"])
    df = df.astype({"score": float, "val_acc": float, "val_ce": float, "s_gap": float, "cka_gap": float,
                    "seconds": float})
    complete = df[(df.state == "complete") & df.duplicate_of.isna()].sort_values(["score", "trial"])
    complete = complete.assign(rank=range(1, len(complete) + 1))
    if include_all:
        rest = df.drop(complete.index).sort_values("trial").assign(rank=pd.NA)
        df = pd.concat([complete, rest])
    else:
        df = complete
    df["rank"] = df["rank"].astype("Int64")
    df["duplicate_of"] = df["duplicate_of"].astype("Int64")
    return df[list(COLUMNS)].reset_index(drop=True)


def load_leaderboard(run: str | Path | None = None, *, storage: str | None = None, study: str | None = None,
                     include_all: bool = False, top: int | None = None, sort: str | None = None) -> pd.DataFrame:
    """The leaderboard DataFrame of a run (see the module docstring); ``top`` keeps the first K rows,
    ``sort`` orders by another column (ascending, except accuracy)."""
    df = frame(open_study(run, storage=storage, study=study), include_all=include_all)
    if sort is not None:
        if sort not in df.columns:
            from kdzero.errors import suggest

            raise ConfigError(f"cannot sort by {sort!r}; {suggest(sort, df.columns)}")
        df = df.sort_values(sort, ascending=sort != "val_acc", kind="stable").reset_index(drop=True)
    if top is not None:
        df = df.head(top)
    return df


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def rich_table(df: pd.DataFrame, title: str = "leaderboard", baseline: dict | None = None) -> Table:
    """A rich table of a leaderboard DataFrame; ``baseline`` (a CE-only result dict) adds a reference row."""
    table = Table(title=title, title_justify="left")
    table.add_column("rank", justify="right")
    table.add_column("trial", justify="right")
    table.add_column("genome", overflow="fold")
    for name in ("score", "acc %", "CE", "S-gap", "CKA-gap"):
        table.add_column(name, justify="right")
    table.add_column("state")
    table.add_column("reason", overflow="fold", max_width=40)
    table.add_column("s", justify="right")
    for row in df.itertuples(index=False):
        acc = "-" if pd.isna(row.val_acc) else f"{100 * row.val_acc:.1f}"
        style = "green" if row.rank == 1 else ("dim" if row.state != "complete" else "")
        table.add_row(_fmt(row.rank), str(row.trial), escape(row.genome or "-"), _fmt(row.score), acc,
                      _fmt(row.val_ce), _fmt(row.s_gap), _fmt(row.cka_gap), row.state,
                      escape(row.reason or ("" if pd.isna(row.duplicate_of) else f"same as #{row.duplicate_of}")),
                      _fmt(row.seconds, 1), style=style)
    if baseline:
        table.add_section()
        table.add_row("", "", "CE-only student (no distillation)", _fmt(baseline.get("score")),
                      f"{100 * (baseline.get('val_acc') or 0):.1f}", _fmt(baseline.get("val_ce")),
                      _fmt(baseline.get("s_gap")), _fmt(baseline.get("cka_gap")), "reference", "", "",
                      style="italic")
    return table
