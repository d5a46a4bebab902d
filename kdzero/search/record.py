"""What a run remembers about itself: its resolved pair (``pair.json``) and how it ran (``run.json``).

``pair.json`` is written when a search has loaded its data and teacher: the model specs, the dataset spec and
root, the normalisation, the teacher checkpoint's absolute path and sha256 (or, for a teacher given as a Python
object, the digest of its weights), the class and channel counts, image size, the feature shapes of both models
and the proxy budget. ``replay RUN``, ``evaluate --name RUN``, ``export RUN`` and ``leaderboard RUN`` read it, so
none of them needs the pair again, and a teacher checkpoint whose bytes changed since is refused.

``run.json`` holds the run's metadata: kdzero version, git commit (when the package lives in a git checkout),
torch version, Python, host, device, the first start and the last end time, and one entry per session.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import platform
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdzero.errors import CheckpointError, ConfigError

PAIR_FILE = "pair.json"
META_FILE = "run.json"
LOG_FILE = "search.log"
PAIR_ATTR = "kdzero_pair"  # the same pair, in the study (a PostgreSQL run's readers have no run folder)


@dataclass
class RunPair:
    """The resolved teacher-student pair and data of a run (see the module docstring)."""

    teacher: str
    student: str
    dataset: str
    normalize: str
    num_classes: int
    in_chans: int
    image_size: list[int]
    data_root: str | None = None
    teacher_ckpt: str | None = None
    teacher_sha256: str | None = None
    teacher_weights: str | None = None
    student_shapes: dict[str, list[int]] = field(default_factory=dict)
    teacher_shapes: dict[str, list[int]] = field(default_factory=dict)
    proxy: dict[str, Any] = field(default_factory=dict)

    @property
    def from_python(self) -> bool:
        """Whether the pair was given as Python objects (``kdzero.search``): the CLI cannot rebuild it."""
        return self.teacher.startswith("python:") or self.student.startswith("python:") or \
            self.dataset.startswith("python:")

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as stored."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunPair:
        """From stored data (unknown keys of a later version are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def check_teacher(self) -> None:
        """Refuse a teacher checkpoint that is gone or whose bytes changed since the run recorded it."""
        if self.teacher_ckpt is None or self.teacher_sha256 is None:
            return
        path = Path(self.teacher_ckpt)
        if not path.is_file():
            raise CheckpointError(f"the run's teacher checkpoint {path} no longer exists")
        digest = file_sha256(path)
        if digest != self.teacher_sha256:
            raise CheckpointError(f"teacher checkpoint {path} changed since the run recorded it (sha256 "
                                  f"{self.teacher_sha256[:12]}... then, {digest[:12]}... now); its scores were "
                                  f"measured with the old teacher: restore it, or search again with --name NEW")


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_pair(run_dir: str | Path, pair: RunPair) -> None:
    """Write ``pair.json``; a run that already has one keeps it unless the teacher is the same (refused
    otherwise: the run's scores belong to the recorded teacher)."""
    path = Path(run_dir) / PAIR_FILE
    old = load_pair(run_dir)
    if old is not None:
        for name in ("teacher_sha256", "teacher_weights"):
            before, now = getattr(old, name), getattr(pair, name)
            if before is not None and now is not None and before != now:
                raise ConfigError(f"run {Path(run_dir).name!r} was scored with another teacher ({name} "
                                  f"{before[:12]}... then, {now[:12]}... now): pass --name NEW for a new run, "
                                  f"or --fresh to discard this one and start again")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(pair.to_dict(), indent=2, sort_keys=True))


def load_pair(run_dir: str | Path) -> RunPair | None:
    """The recorded pair of a run, or None for a run that has none (made before pairs were recorded)."""
    path = Path(run_dir) / PAIR_FILE
    if not path.is_file():
        return None
    try:
        return RunPair.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as exc:
        raise ConfigError(f"{path} is corrupt ({exc}); remove it and resume the search to write it again") from None


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def git_commit() -> str | None:
    """The commit of the git checkout kdzero runs from, or None (an installed package, no git)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def start_session(run_dir: str | Path, device: str) -> dict[str, Any]:
    """Record a search session's start in ``run.json`` (created on the first) and return the metadata."""
    import torch

    from kdzero.version import __version__

    meta = load_meta(run_dir) or {}
    session = {"started": _now(), "ended": None, "host": socket.gethostname(), "device": device}
    meta.update({"kdzero_version": __version__, "git_commit": git_commit(), "torch_version": torch.__version__,
                 "python": platform.python_version(), "host": session["host"], "device": device})
    meta.setdefault("started", session["started"])
    meta["sessions"] = [*meta.get("sessions", []), session]
    _write_meta(run_dir, meta)
    return meta


def end_session(run_dir: str | Path, trial_seconds: float) -> dict[str, Any]:
    """Record the end of the current session and the run's total trial seconds in ``run.json``."""
    meta = load_meta(run_dir) or {}
    meta["ended"] = _now()
    meta["trial_seconds"] = round(float(trial_seconds), 3)
    if meta.get("sessions"):
        meta["sessions"][-1]["ended"] = meta["ended"]
    _write_meta(run_dir, meta)
    return meta


def load_meta(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``run.json``, or None."""
    path = Path(run_dir) / META_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _write_meta(run_dir: str | Path, meta: dict[str, Any]) -> None:
    path = Path(run_dir) / META_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, indent=2, sort_keys=True))


def trial_line(number: int, genome: str, score: float | None, seconds: float | None, *,
               stage: str | None = None, duplicate_of: int | None = None, rung: Any = None) -> str:
    """One plain line for a finished trial: number, state, score, rung (when the run has rungs), seconds,
    genome. The same line goes to the terminal (``--quiet`` or off a terminal) and to ``search.log``."""
    if stage is not None:
        state = f"rejected ({stage.replace('_', ' ')})"
    elif duplicate_of is not None:
        state = f"duplicate of {duplicate_of}"
    else:
        state = "complete"
    shown = "-" if score is None or stage is not None else f"{score:.4f}"
    time_text = "-" if seconds is None else f"{seconds:.1f} s"
    rung_text = f"  rung {rung}" if rung is not None else ""
    return f"trial {number}  {state}  score {shown}{rung_text}  {time_text}  {genome}"


class RunLog:
    """Appends time-stamped lines to ``runs/<name>/search.log`` (opened per line, so workers may share it)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOG_FILE

    def write(self, line: str) -> None:
        """Append ``line`` with a UTC time stamp."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(f"{_now()}  {line}\n")


def run_pair(run_dir: str | Path) -> RunPair:
    """The pair a run was searched with: ``pair.json``, or for a run made before pairs were recorded, what its
    ``config.json`` says (the built-in digits teacher found where the search keeps it)."""
    run_dir = Path(run_dir)
    pair = load_pair(run_dir)
    if pair is not None:
        return pair
    saved = run_dir / "config.json"
    if not saved.is_file():
        raise ConfigError(f"{run_dir} is not a search run (no pair.json or config.json)")
    try:
        config = json.loads(saved.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{saved} is corrupt") from None
    teacher = config.get("teacher", "resnet20")
    checkpoint = config.get("teacher_ckpt")
    if checkpoint is None and config.get("dataset", "digits") == "digits":
        checkpoint = str(run_dir / "teacher" / f"{teacher}-digits" / "best.pt")
    return RunPair(teacher=teacher, student=config.get("student", "resnet8"),
                   dataset=config.get("dataset", "digits"), normalize=config.get("normalize", "dataset"),
                   num_classes=0, in_chans=0, image_size=[], data_root=config.get("data_root"),
                   teacher_ckpt=checkpoint)


SAFE_OVERRIDES = ("data_root",)
"""Pair settings an explicit option may change with a warning: where the same data lives now."""


REPLAY_ELSE = "give --genome TEXT instead of the run to train another pair"


def apply_pair(pair: RunPair, run: str | Path, given: dict[str, Any], warn, instead: str = REPLAY_ELSE
               ) -> dict[str, Any]:
    """The pair's settings with the explicitly ``given`` options (name -> value, None when not given) checked
    against them: a contradiction is an error naming both values; a safe one (``SAFE_OVERRIDES``) is applied
    with a warning through ``warn``."""
    if pair.from_python:
        raise ConfigError(f"run {run} was searched on Python objects ({pair.teacher} -> {pair.student}); the "
                          f"command line cannot rebuild them: use kdzero.replay({str(run)!r}, teacher=..., "
                          f"student=..., train_data=...)")
    resolved = {}
    for name, value in given.items():
        recorded = getattr(pair, name)
        if value is None or value == recorded or (name == "teacher_ckpt" and recorded is not None
                                                  and Path(value).resolve() == Path(recorded).resolve()):
            resolved[name] = recorded
        elif name in SAFE_OVERRIDES:
            warn(f"warning: run {run} was searched with {name} {recorded!r}; using {value!r} as given")
            resolved[name] = value
        else:
            option = "--" + name.replace("_", "-")
            raise ConfigError(f"{option} {value!r} contradicts run {run}, searched with {name} {recorded!r}; "
                              f"drop {option} to use the run's, or {instead}")
    return resolved
