"""The population of a search as a table: study -> pandas DataFrame -> rich table, CSV, JSON or a plot.

    import kdzero
    df = kdzero.leaderboard("runs/digits")          # best first; rejected genomes with include_all=True

Columns (``COLUMNS``): rank (1 = best, complete genomes only), trial, genome, score (lower is better),
val_acc, val_ce, s_gap, cka_gap, state (complete, rejected, failed, running, waiting), stage and reason (why a
genome was rejected), seconds (compute spent on the trial), origin (preset, retry, sampler), duplicate_of (a
trial whose result was reused instead of training again), key (canonical key).
"""
from __future__ import annotations

import json
import math
import sys
import types
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from optuna.trial import TrialState
from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from kdzero.errors import ConfigError, KdzeroError, suggest

COLUMNS = ("rank", "trial", "genome", "score", "val_acc", "val_ce", "s_gap", "cka_gap", "state", "stage",
           "reason", "seconds", "origin", "duplicate_of", "key")
STATE_NAMES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "rejected", TrialState.FAIL: "failed",
               TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}
BASELINE_ATTR = "kdzero_baseline"  # written by kdzero.search.runner.ensure_baseline
# What the rank column shows for unranked rows, so that their state reads even where the state column is left out.
RANK_MARKS = {"rejected": "rej", "failed": "fail", "running": "run", "waiting": "wait"}
FOLD_MIN = 20  # the narrowest a folding column (rejection reasons) is squeezed to


def _run_location(run_dir: Path) -> tuple[str, str]:
    """Storage URL and study name of a run directory: its saved config, else the SQLite file it holds."""
    database = run_dir / "study.db"
    saved = run_dir / "config.json"
    config = {}
    if saved.is_file():
        try:
            config = json.loads(saved.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            config = {}
    if not database.is_file() and not config.get("storage"):
        runs = sorted(p.name for p in run_dir.parent.iterdir() if p.is_dir()) if run_dir.parent.is_dir() else []
        hint = f"; runs there: {', '.join(runs)}" if runs else ""
        raise ConfigError(f"no search run at {run_dir} (no study.db){hint}")
    storage = config.get("storage") or f"sqlite:///{database.as_posix()}"
    return storage, config.get("study") or config.get("name") or run_dir.name


def open_study(run: str | Path | None = None, *, storage: str | None = None, study: str | None = None):
    """The study of a run directory (``runs/NAME``) or of a storage URL and study name. Reading never creates
    anything: a missing SQLite file is an error, not a new empty database."""
    from kdzero.search.study import load_study, make_storage

    if run is not None:
        run_storage, run_study = _run_location(Path(run))
        storage, study = storage or run_storage, study or run_study
    if storage is None or study is None:
        raise ConfigError("give a run directory, or both a storage URL and a study name")
    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///"):]).is_file():
        raise ConfigError(f"no database file at {storage[len('sqlite:///'):]}")
    try:
        return load_study(make_storage(storage, create=False), study)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot read study {study!r}: {str(exc).splitlines()[0]}") from None


def frame(study, include_all: bool = False) -> pd.DataFrame:
    """The study's trials as a DataFrame with ``COLUMNS``, best first; rejected/failed rows only with
    ``include_all``. Duplicates (reused results) are listed only with ``include_all`` too. A student-search
    study gives its students instead (``kdzero.student_leaderboard.STUDENT_COLUMNS``)."""
    from kdzero.student_leaderboard import is_student_search, student_frame

    if is_student_search(study):
        return student_frame(study)
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


def baseline(study) -> dict | None:
    """The CE-only student's proxy result (a ``ProxyResult`` dict) stored in the study, or None before the
    search computed it: the reference row every distiller is compared with."""
    stored = study.user_attrs.get(BASELINE_ATTR)
    return stored.get("result") if isinstance(stored, dict) else None


HIGHER_IS_BETTER = ("val_acc", "diswot", "relation", "semantic")  # sorted descending by ``arrange``


def arrange(df: pd.DataFrame, top: int | None = None, sort: str | None = None) -> pd.DataFrame:
    """``df`` ordered by column ``sort`` (ascending, except scores where higher is better: accuracy and the
    DisWOT terms; missing values last), then its first
    ``top`` rows. Without ``sort`` the order of ``frame`` (best first) is kept."""
    if sort is not None:
        if sort not in df.columns:
            raise ConfigError(f"cannot sort by {sort!r}; {suggest(sort, df.columns)}")
        df = df.sort_values(sort, ascending=sort not in HIGHER_IS_BETTER, kind="stable").reset_index(drop=True)
    if top is not None:
        if top < 1:
            raise ConfigError(f"top must be at least 1, got {top}")
        df = df.head(top)
    return df


def load_leaderboard(run: str | Path | None = None, *, storage: str | None = None, study: str | None = None,
                     include_all: bool = False, top: int | None = None, sort: str | None = None) -> pd.DataFrame:
    """The leaderboard DataFrame of a run (see the module docstring); ``top`` keeps the first K rows,
    ``sort`` orders by another column (ascending, except accuracy)."""
    return arrange(frame(open_study(run, storage=storage, study=study), include_all=include_all), top, sort)


def genome_at(run: str | Path | None, rank: int, *, storage: str | None = None, study: str | None = None) -> str:
    """The genome text at ``rank`` (1 = best) of a run's leaderboard: what ``replay`` and ``export`` take."""
    board = load_leaderboard(run, storage=storage, study=study)
    if "genome" not in board.columns:
        raise ConfigError(f"{run or study} is a student search: it ranks students, not distillers; replay a student "
                          "with 'kdzero replay --method kd --student TEXT' (the command student-search printed)")
    rows = board[board["rank"] == rank]
    if rows.empty:
        where = run if run is not None else f"study {study}"
        held = f"ranks 1..{len(board)}" if len(board) else "no complete genome yet"
        raise ConfigError(f"{where} has no rank {rank}; its leaderboard holds {held}")
    return str(rows.iloc[0]["genome"])


# ------------------------------------------------------------------------------------------------ rich table
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
    drop_order: tuple[str, ...] = field(default=("trial", "s", "CKA-gap", "S-gap", "CE", "state", "reason", "acc %"))
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

    return {genome.key: name.upper() for name, genome in PRESETS.items()}


def _with_preset_name(genome: str | None, key: str | None) -> str:
    if not genome:
        return "-"
    name = preset_names().get(key) if key else None
    return f"{genome} ({name})" if name else genome


def with_baseline(df: pd.DataFrame, baseline: dict | None) -> pd.DataFrame:
    """``df`` with the CE-only student as a last row (genome ``ce-only``, state ``reference``, no rank), as the
    table shows it, for CSV and JSON output."""
    if not baseline:
        return df
    row = {column: None for column in COLUMNS}
    row.update(genome="ce-only", score=baseline.get("score"), val_acc=baseline.get("val_acc"),
               val_ce=baseline.get("val_ce"), s_gap=baseline.get("s_gap"), cka_gap=baseline.get("cka_gap"),
               state="reference", stage="", reason="", seconds=baseline.get("seconds"), origin="baseline")
    reference = pd.DataFrame([row], columns=list(df.columns))
    numbers = {"rank": "Int64", "trial": "Int64", "duplicate_of": "Int64",
               **{c: float for c in ("score", "val_acc", "val_ce", "s_gap", "cka_gap", "seconds")}}
    return pd.concat([df.astype(numbers), reference.astype(numbers)], ignore_index=True)


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
    if others:
        columns.insert(-1, _Column("state", [r.state for r in rows], justify="left"))
        columns.insert(-1, _Column("reason", [reason(r) for r in rows], justify="left", max_width=40))
    styles = ["green" if not pd.isna(r.rank) and r.rank == 1 else "dim" if r.state != "complete" else ""
              for r in rows]
    if baseline:
        reference = {"rank": "", "trial": "", "genome": "CE-only baseline", "score": _fmt(baseline.get("score")),
                     "acc %": _acc(baseline.get("val_acc")), "CE": _fmt(baseline.get("val_ce"), 3),
                     "S-gap": _fmt(baseline.get("s_gap"), 3), "CKA-gap": _fmt(baseline.get("cka_gap"), 3),
                     "state": "reference", "reason": "", "s": _fmt(baseline.get("seconds"), 1)}
        for column in columns:
            column.cells.append(reference[column.header])
        styles.append("italic")
    return LeaderboardTable(columns, styles, title, baseline_row=bool(baseline))


# ------------------------------------------------------------------------------------------------------ plot
def op_frequencies(genomes: list[str]) -> dict[str, Counter]:
    """How often each transform (empty slots not counted), distance and weighting occurs in ``genomes``."""
    from kdzero.genome import Genome

    counts = {"transforms": Counter(), "distances": Counter(), "weights": Counter()}
    for text in genomes:
        genome = Genome.parse(text)
        counts["transforms"].update(name for name in genome.transforms if name != "no")
        counts["distances"][genome.distance] += 1
        counts["weights"][genome.weight] += 1
    return counts


def _all_genomes(texts: list[str]) -> bool:
    """Whether every text is a distiller genome (a student-search run lists architecture texts instead)."""
    from kdzero.genome import Genome

    try:
        for text in texts:
            Genome.parse(text)
    except KdzeroError:
        return False
    return True


def plot(df_all: pd.DataFrame, path: str | Path, top: int = 10, baseline: dict | None = None,
         title: str = "search") -> Path:
    """Draw a search to a PNG (or any format matplotlib writes): (a) the score of every trial in trial order,
    complete trials as points with the best-so-far line, rejected and failed trials as marks on the x axis,
    the CE-only ``baseline`` as a dashed line; (b) how often each op occurs among the ``top`` best genomes
    (left out for a student-search run, whose rows are architectures rather than distillers).
    ``df_all`` is ``frame(study, include_all=True)``. Needs the optional matplotlib (``kdzero[plot]``)."""
    try:
        from matplotlib.figure import Figure
    except ModuleNotFoundError:
        raise KdzeroError("plotting needs matplotlib: pip install 'kdzero[plot]'") from None
    path = Path(path)
    ranked = df_all[df_all["rank"].notna()].sort_values("rank").head(top)
    distillers = _all_genomes([g for g in ranked.genome if g])
    fig = Figure(figsize=(12, 9 if distillers else 5.5), layout="constrained")
    grid = fig.add_gridspec(2, 3, height_ratios=(1.4, 1)) if distillers else fig.add_gridspec(1, 3)
    ax = fig.add_subplot(grid[0, :])
    trials = df_all.sort_values("trial")
    complete = trials[trials.state == "complete"]
    others = trials[trials.state != "complete"]
    if not complete.empty:
        best = complete.score.cummin()
        ax.plot(complete.trial, complete.score, "o", color="tab:blue", alpha=0.7, label="complete trial")
        ax.step(complete.trial, best, where="post", color="tab:green", linewidth=2, label="best so far")
        best_row = complete.loc[complete.score.idxmin()]
        ax.plot([best_row.trial], [best_row.score], "*", color="tab:green", markersize=16,
                label=f"best: #{best_row.trial} {best_row.genome} ({best_row.score:.4f})")
        upper = complete.score.quantile(0.95)
        low, high = min(best.min(), (baseline or {}).get("score") or math.inf), upper
        margin = (high - low) * 0.15 or 0.05
        ax.set_ylim(low - margin, high + margin)
        clipped = complete[complete.score > high + margin]
        if not clipped.empty:
            ax.plot(clipped.trial, [high + margin] * len(clipped), "^", color="tab:blue", clip_on=False,
                    label="score above the range")
    if baseline and baseline.get("score") is not None:
        ax.axhline(baseline["score"], color="tab:gray", linestyle="--", label="CE-only baseline")
    if not others.empty:
        colours = {"rejected": "tab:red", "failed": "black"}
        for state, rows in others.groupby("state"):
            ax.plot(rows.trial, [0.0] * len(rows), "x", color=colours.get(state, "tab:orange"), markersize=9,
                    mew=2, clip_on=False, transform=ax.get_xaxis_transform(), label=f"{state} ({len(rows)})")
    ax.set_xlabel("trial")
    ax.set_ylabel("proxy score (lower is better)" if distillers else "score: -DisWOT (lower is better)")
    ax.set_title(f"{title}: {len(complete)} complete, {len(others)} rejected or failed", loc="left")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=3, fontsize=9, frameon=False)

    counts = op_frequencies([g for g in ranked.genome if g]) if distillers else {}
    for column, (kind, counter) in enumerate(counts.items()):
        bars = fig.add_subplot(grid[1, column])
        items = counter.most_common()[::-1]
        bars.barh([name for name, _ in items], [n for _, n in items], height=0.6, color="tab:purple")
        bars.set_title(f"{kind} in the top {len(ranked)}", loc="left")
        bars.set_xlabel("genomes" if kind != "transforms" else "slots (empty ones not counted)")
        bars.xaxis.get_major_locator().set_params(integer=True)
        bars.grid(axis="x", alpha=0.3)
    try:
        fig.savefig(path, dpi=110)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot write plot {path}: {exc}") from None
    return path


__all__ = ["COLUMNS", "LeaderboardTable", "arrange", "baseline", "frame", "genome_at", "load_leaderboard",
           "op_frequencies", "open_study", "plot", "preset_names", "rich_table", "with_baseline"]


class _CallableModule(types.ModuleType):
    """``kdzero.leaderboard`` names both this module and DESIGN's public function ``kdzero.leaderboard(run)``.
    Importing the submodule rebinds the package attribute to the module, so the module itself is callable and
    ``kdzero.leaderboard("runs/NAME")`` works before and after any import of ``kdzero.leaderboard``."""

    def __call__(self, run: str | Path | None = None, **kwargs) -> pd.DataFrame:
        return load_leaderboard(run, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
