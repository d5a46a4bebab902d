"""Study -> pandas DataFrame: opening a run's study, its trials (or a rung's genomes) as ``COLUMNS`` rows, best
first, the CE-only baseline, ordering and the genome at a rank."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from optuna.trial import TrialState

from kdzero.errors import ConfigError, suggest

COLUMNS = ("rank", "trial", "rung", "genome", "score", "val_acc", "val_ce", "s_gap", "cka_gap", "state", "stage",
           "reason", "seconds", "origin", "duplicate_of", "key")
STATE_NAMES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "rejected", TrialState.FAIL: "failed",
               TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}
BASELINE_ATTR = "kdzero_baseline"  # written by kdzero.search.baseline.ensure_baseline


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


def frame(study, include_all: bool = False, rung: int = 0) -> pd.DataFrame:
    """The study's trials as a DataFrame with ``COLUMNS``, best first; rejected/failed rows only with
    ``include_all``. Duplicates (reused results) are listed only with ``include_all`` too. ``rung`` >= 1: the
    genomes promoted to that rung, with their results there (``kdzero.search.rungs``). A student-search study gives
    its students instead (``kdzero.leaderboard.students.STUDENT_COLUMNS``)."""
    from kdzero.leaderboard.students import is_student_search, student_frame

    if is_student_search(study):
        return student_frame(study)
    reached = _rungs_reached(study)
    if rung:
        return _rung_frame(study, rung, reached, include_all)
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
            "trial": trial.number, "rung": reached.get(attrs.get("key"), 0) if value is not None else None,
            "genome": genome, "score": value,
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
    df["rung"] = df["rung"].astype("Int64")
    return df[list(COLUMNS)].reset_index(drop=True)


def _rungs_reached(study) -> dict[str, int]:
    """The highest rung with a finished result, by genome key."""
    from kdzero.search import rungs

    reached: dict[str, int] = {}
    rung = 1
    while True:
        entries = rungs.rung_entries(study, rung)
        if not entries:
            return reached
        for key, entry in entries.items():
            if entry.get("state") == "done" and key != rungs.BASELINE_KEY:
                reached[key] = rung
        rung += 1


def _rung_frame(study, rung: int, reached: dict[str, int], include_all: bool) -> pd.DataFrame:
    """Rung ``rung``'s genomes with their results there, best first (``COLUMNS``)."""
    from kdzero.search import rungs

    rows = []
    for key, entry in rungs.rung_entries(study, rung).items():
        if key == rungs.BASELINE_KEY:
            continue
        done = entry.get("state") == "done"
        complete = done and entry.get("status") == "complete"
        rows.append({"trial": entry.get("trial"), "rung": reached.get(key, rung), "genome": entry.get("genome"),
                     "score": entry.get("score") if complete else None,
                     "val_acc": entry.get("val_acc") if complete else None, "val_ce": entry.get("val_ce"),
                     "s_gap": entry.get("s_gap"), "cka_gap": entry.get("cka_gap"),
                     "state": ("complete" if complete else "rejected") if done else "running",
                     "stage": entry.get("stage") or "", "reason": entry.get("reason") or "",
                     "seconds": entry.get("seconds"), "origin": f"rung {rung}", "duplicate_of": None, "key": key})
    df = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "rank"])
    df = df.astype({"score": float, "val_acc": float, "val_ce": float, "s_gap": float, "cka_gap": float,
                    "seconds": float})
    complete = df[df.state == "complete"].sort_values(["score", "trial"])
    complete = complete.assign(rank=range(1, len(complete) + 1))
    rest = df.drop(complete.index).sort_values("trial").assign(rank=pd.NA) if include_all else df.iloc[0:0]
    df = pd.concat([complete, rest]) if len(rest) else complete
    df["rank"] = df["rank"].astype("Int64")
    for column in ("duplicate_of", "rung", "trial"):
        df[column] = df[column].astype("Int64")
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
    """The leaderboard DataFrame of a run (see the ``kdzero.leaderboard`` docstring); ``top`` keeps the first K rows,
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
