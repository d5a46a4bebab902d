"""The results of a student search (``kdzero student-search``) as a table, CSV, JSON or plot.

A student-search study holds one COMPLETE trial per distinct architecture, valued ``-DisWOT`` (lower is better,
the kdzero convention), with the architecture text and its cost in the trial's user attrs. Its leaderboard is
about students, not distillers: the name column is ``student`` and the columns are the DisWOT score (higher is
better), its relation and semantic terms, parameters, FLOPs and, once the verdict trained it
(``kdzero.student_confirm``), the student's mean test top-1 after KD.

    import kdzero
    df = kdzero.leaderboard("runs/diswot-resnet20-digits")     # a student search: STUDENT_COLUMNS
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from optuna.trial import TrialState

from kdzero.diswot import CONFIG_ATTR, format_count
from kdzero.errors import ConfigError, KdzeroError
from kdzero.leaderboard.table import LeaderboardTable, _Column, _fmt
from kdzero.student_confirm import stored_verdict

STUDENT_COLUMNS = ("rank", "trial", "student", "diswot", "relation", "semantic", "params", "flops", "top1",
                   "seconds", "origin", "parent")


def is_student_search(study) -> bool:
    """Whether ``study`` holds a student search (its settings attr) rather than a distiller search."""
    return CONFIG_ATTR in study.user_attrs


def student_frame(study) -> pd.DataFrame:
    """The students of a student-search study, highest DisWOT first (``STUDENT_COLUMNS``; rank 1 = best)."""
    rows = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        attrs = trial.user_attrs
        if "genome" not in attrs:
            continue
        rows.append({"trial": trial.number, "student": attrs["genome"], "diswot": attrs.get("diswot"),
                     "relation": attrs.get("relation"), "semantic": attrs.get("semantic"),
                     "params": attrs.get("params"), "flops": attrs.get("flops"), "seconds": attrs.get("seconds"),
                     "origin": attrs.get("origin"), "parent": attrs.get("parent")})
    df = pd.DataFrame(rows, columns=[c for c in STUDENT_COLUMNS if c not in ("rank", "top1")])
    df = df.astype({"diswot": float, "relation": float, "semantic": float, "seconds": float})
    df = df.astype({"params": "Int64", "flops": "Int64"})
    verdict = stored_verdict(study)
    df["top1"] = df.student.map(dict(zip(verdict.student, verdict.last_mean))).astype(float)
    df = df.sort_values(["diswot", "trial"], ascending=[False, True], kind="stable")
    df.insert(0, "rank", pd.array(range(1, len(df) + 1), dtype="Int64"))
    return df[list(STUDENT_COLUMNS)].reset_index(drop=True)


def student_table(df: pd.DataFrame, title: str):
    """A rich renderable of ``student_frame`` rows that fits its console: architecture texts never wrap, and
    the least important columns are left out first in a narrow terminal (trial, seconds, relation, semantic)."""
    rows = list(df.itertuples(index=False))
    columns = [
        _Column("rank", [str(r.rank) for r in rows]),
        _Column("trial", [str(r.trial) for r in rows]),
        _Column("student", [r.student for r in rows], justify="left"),
        _Column("DisWOT", [_fmt(r.diswot, 5) for r in rows]),
        _Column("relation", [_fmt(r.relation, 5) for r in rows]),
        _Column("semantic", [_fmt(r.semantic, 5) for r in rows]),
        _Column("params", [_count(r.params) for r in rows]),
        _Column("FLOPs", [_count(r.flops) for r in rows]),
        _Column("top-1 %", ["-" if pd.isna(r.top1) else f"{r.top1:.2f}" for r in rows]),
        _Column("s", [_fmt(r.seconds, 2) for r in rows]),
    ]
    styles = ["green" if r.rank == 1 else "" for r in rows]
    return LeaderboardTable(columns, styles, title, name_column="student",
                            drop_order=("trial", "s", "relation", "semantic", "top-1 %"))


def _count(value) -> str:
    return "-" if value is None or pd.isna(value) else format_count(int(value))


def student_plot(df: pd.DataFrame, path: str | Path, title: str = "student search") -> Path:
    """Draw a student search to a PNG: (a) DisWOT of every student in scoring order with the best so far; (b)
    DisWOT against parameters and (c) against FLOPs, the best student starred. Needs matplotlib
    (``kdzero[plot]``)."""
    try:
        from matplotlib.figure import Figure
    except ModuleNotFoundError:
        raise KdzeroError("plotting needs matplotlib: pip install 'kdzero[plot]'") from None
    path = Path(path)
    fig = Figure(figsize=(12, 8), layout="constrained")
    grid = fig.add_gridspec(2, 2)
    ax = fig.add_subplot(grid[0, :])
    ordered = df.sort_values("trial")
    if not ordered.empty:
        ax.plot(ordered.trial, ordered.diswot, "o", color="tab:blue", alpha=0.7, label="student")
        ax.step(ordered.trial, ordered.diswot.cummax(), where="post", color="tab:green", linewidth=2,
                label="best so far")
        best = df.iloc[0]
        ax.plot([best.trial], [best.diswot], "*", color="tab:green", markersize=16,
                label=f"best: {best.student} ({best.diswot:.5f})")
    ax.set_xlabel("student (order scored)")
    ax.set_ylabel("DisWOT score (higher is better)")
    ax.set_title(f"{title}: {len(df)} students", loc="left")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    for column, (key, label) in enumerate((("params", "parameters"), ("flops", "FLOPs (MACs per image)"))):
        cost = fig.add_subplot(grid[1, column])
        if not df.empty:
            values = df[key].astype(float)
            cost.plot(values, df.diswot, "o", color="tab:purple", alpha=0.7)
            cost.plot([values.iloc[0]], [df.diswot.iloc[0]], "*", color="tab:green", markersize=16)
            if values.max() > 0 and values[values > 0].min() > 0 and values.max() / values[values > 0].min() > 20:
                cost.set_xscale("log")
        cost.set_xlabel(label)
        cost.set_ylabel("DisWOT score")
        cost.grid(alpha=0.3)
    try:
        fig.savefig(path, dpi=110)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot write plot {path}: {exc}") from None
    return path


__all__ = ["STUDENT_COLUMNS", "is_student_search", "student_frame", "student_plot", "student_table"]
