"""The study: opening it, recording results in it, and keeping it whole when workers die.

A trial's params are the genome's genes; its user attrs hold the genome text, canonical key, proxy metrics,
timings and the worker (``host:pid``) that ran it. Complete genomes are COMPLETE trials valued by their score
(lower is better); rejected genomes are PRUNED trials with their stage and reason.

Dead workers: a RUNNING trial whose worker process is gone (same host: the pid no longer exists; any host: no
heartbeat for ``GRACE_PERIOD`` seconds) is marked FAIL and its genome is enqueued again, once. Nothing finished
is lost and nothing stays RUNNING.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import quote

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from kdzero.errors import ConfigError
from kdzero.proxy import ProxyResult
from kdzero.search.evolution import trial_key
from kdzero.search.space import genome_to_params, space_choices

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; make_storage's retry still covers the race
    fcntl = None

HEARTBEAT_INTERVAL = int(os.environ.get("KDZERO_HEARTBEAT_INTERVAL", "10"))
GRACE_PERIOD = int(os.environ.get("KDZERO_GRACE_PERIOD", "60"))
CONFIG_ATTR = "kdzero_config"
SPACE_ATTR = "kdzero_space_choices"
BUDGET_ATTR = "kdzero_trials"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

optuna.logging.set_verbosity(optuna.logging.WARNING)
# We drive heartbeats ourselves (``Heartbeat``) because workers use ask/tell, which Optuna's warning assumes not.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def worker_id() -> str:
    """``host:pid`` of this process, recorded on every trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


POSTGRES_DRIVERS = (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2"))
"""PostgreSQL drivers in order of preference (module, SQLAlchemy dialect): psycopg 3, which ``kdzero[postgres]``
and ``kdzero[test]`` install, then psycopg2 for machines that only have the older one."""


def _with_installed_driver(url: str) -> str:
    """A ``postgresql://`` or ``postgres://`` URL that names no driver, given the best installed one.

    SQLAlchemy picks a default driver by version (psycopg2 before 2.1, psycopg 3 from 2.1 on) whether or not it is
    installed, and rejects the ``postgres://`` spelling that many hosting services hand out; users should not have
    to know either. A URL that names its driver (``postgresql+psycopg2://``) is left as it is.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        return url
    import importlib.util

    for module, dialect in POSTGRES_DRIVERS:
        if importlib.util.find_spec(module) is not None:
            return f"{dialect}://{rest}"
    raise ConfigError(f"storage {_redact(url)} needs a PostgreSQL driver and none is installed: "
                      f"pip install 'kdzero[postgres]' (psycopg 3)")


SQLITE_MAGIC = b"SQLite format 3\x00"
CONNECT_TIMEOUT = 10  # seconds to reach a database server before giving up


def _sqlite_path(url: str) -> Path | None:
    """The file of an ``sqlite:///PATH`` URL (None for other URLs and in-memory databases)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def check_storage_file(url: str, create: bool = True) -> None:
    """Refuse an SQLite file that is not an Optuna study database before anything opens it: Optuna would add
    its tables to any SQLite file (damaging a foreign one) and fails with a long error on a corrupt one.
    ``create=False`` (readers) also refuses a missing file instead of creating a database."""
    path = _sqlite_path(url)
    if path is None:
        return
    if not path.exists():
        if not create:
            raise ConfigError(f"no database file at {path}")
        return
    try:
        with path.open("rb") as handle:
            head = handle.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise ConfigError(f"cannot read study database {path}: {exc.strerror or exc}") from None
    if not head:
        raise ConfigError(f"study database {path} is an empty file, not a study; remove it to start afresh")
    if head != SQLITE_MAGIC:
        raise ConfigError(f"study database {path} is not an SQLite file (corrupt or something else); "
                          f"kdzero leaves it alone: move it away or use another run name")
    try:
        connection = sqlite3.connect(f"file:{quote(path.as_posix())}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise ConfigError(f"study database {path} is damaged: {exc}") from None
    if not {"studies", "trials", "version_info"} <= tables:
        shown = ", ".join(sorted(tables)[:5]) or "none"
        raise ConfigError(f"{path} is an SQLite database but not an Optuna study (its tables: {shown}); "
                          f"kdzero will not write into it: move it away or use another run name")


SCHEMA_RACE = ("already exists", "unique constraint", "duplicate key")
"""Fragments of the errors two processes get when both create a new study database at once (SQLite: "table
study_system_attributes already exists"; PostgreSQL: "duplicate key value violates unique constraint
pg_type_typname_nsp_index"); opening again succeeds because the other process has finished the schema."""
OPEN_ATTEMPTS = 5


@contextlib.contextmanager
def _schema_lock(url: str, create: bool) -> Iterator[None]:
    """Hold an exclusive lock on ``<database>.lock`` while an SQLite study database is checked and opened.

    Optuna creates its tables (and its version row, and Alembic's) one statement at a time when it opens a
    storage, so a second process opening a new database meanwhile sees it half made: Optuna fails on a table that
    appeared after it looked, and ``check_storage_file`` would refuse an empty file or one without Optuna's
    tables. Creators make the lock file before the database; readers lock only when both exist (a reader that
    finds the database without a lock file sees one made by another program, or finished, and a read-only
    folder still works). Other URLs and platforms without ``fcntl`` rely on ``make_storage``'s retry alone.
    """
    path = _sqlite_path(url)
    if path is None or fcntl is None:
        yield
        return
    lock_path = path.with_name(path.name + ".lock")
    try:
        if create:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        elif path.exists():
            fd = os.open(lock_path, os.O_RDONLY)
        else:
            fd = None
    except OSError:
        fd = None
    if fd is None:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def make_storage(url: str, create: bool = True) -> RDBStorage:
    """An RDB storage with heartbeats, for SQLite files and any SQLAlchemy URL (PostgreSQL for many machines).

    ``create=False`` is for readers and workers: a missing SQLite file is an error, not a new database. Safe to
    call from many processes at once on one new database: SQLite files are created under ``_schema_lock``, and
    an error of a concurrent schema creation (``SCHEMA_RACE``) is retried, up to ``OPEN_ATTEMPTS`` times.
    """
    url = _with_installed_driver(url)
    if url.startswith("sqlite:///"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
    elif url.startswith("postgresql"):
        engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": CONNECT_TIMEOUT}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    if create and _sqlite_path(url) is not None:
        _sqlite_path(url).parent.mkdir(parents=True, exist_ok=True)
    attempt = 1
    while True:
        with _schema_lock(url, create):
            check_storage_file(url, create=create)
            try:
                return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_INTERVAL,
                                  grace_period=GRACE_PERIOD)
            except ImportError as exc:
                raise ConfigError(f"storage {url.split(':')[0]!r} needs a database driver: {exc} "
                                  f"(for PostgreSQL: pip install 'kdzero[postgres]')") from None
            except Exception as exc:
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                if attempt == OPEN_ATTEMPTS or not any(part in first_line.lower() for part in SCHEMA_RACE):
                    raise ConfigError(f"cannot open storage {_redact(url)}: {first_line}") from None
        time.sleep(0.1 * attempt)
        attempt += 1


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def create_or_load_study(storage: RDBStorage, name: str, sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    """The study ``name`` in ``storage``, created (minimising the score) if it does not exist."""
    try:
        return optuna.create_study(study_name=name, storage=storage, sampler=sampler, direction="minimize",
                                   load_if_exists=True)
    except Exception as exc:
        raise ConfigError(f"cannot open study {name!r}: {str(exc).splitlines()[0]}") from None


def load_study(storage: RDBStorage, name: str, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    """An existing study; a missing one is a clear error listing the studies that exist."""
    names = [s.study_name for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False)]
    if name not in names:
        raise ConfigError(f"no study {name!r} in this storage; it has: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler)


def initialise(study: optuna.Study, config_dict: dict, space, budget: int, presets: Iterable = ()) -> None:
    """Record the run's config, space and budget in a new study and enqueue the presets (once)."""
    if CONFIG_ATTR in study.user_attrs:
        return
    study.set_user_attr(CONFIG_ATTR, json.loads(json.dumps(config_dict)))
    study.set_user_attr(SPACE_ATTR, space_choices(space))
    study.set_user_attr(BUDGET_ATTR, budget)
    for genome in presets:
        study.enqueue_trial(genome_to_params(genome), user_attrs={"origin": "preset"}, skip_if_exists=True)


def counts(trials: Iterable[FrozenTrial]) -> dict[TrialState, int]:
    """Number of trials in each state."""
    result = {state: 0 for state in TrialState}
    for trial in trials:
        result[trial.state] += 1
    return result


def finished_by_key(trials: Iterable[FrozenTrial]) -> dict[str, FrozenTrial]:
    """The first finished (complete or rejected) trial of every canonical key that was actually evaluated."""
    found: dict[str, FrozenTrial] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.state in FINISHED and "duplicate_of" not in trial.user_attrs:
            key = trial_key(trial)
            if key and key not in found:
                found[key] = trial
    return found


def tell_result(study: optuna.Study, trial: optuna.Trial, key: str, result: ProxyResult,
                extra: dict | None = None) -> None:
    """Store a proxy result on its trial and finish it: COMPLETE with the score, or PRUNED if rejected."""
    attrs = {**result.to_dict(), "key": key, **(extra or {})}
    for name, value in attrs.items():
        trial.set_user_attr(name, value)
    if result.rejected:
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, result.score)


def copy_result(study: optuna.Study, trial: optuna.Trial, source: FrozenTrial) -> None:
    """Finish ``trial`` with the result of ``source`` (same canonical key): the genome is not trained again."""
    for name, value in source.user_attrs.items():
        if name not in ("worker", "origin", "retry_of"):
            trial.set_user_attr(name, value)
    trial.set_user_attr("duplicate_of", source.number)
    trial.set_user_attr("seconds", 0.0)
    if source.state == TrialState.COMPLETE:
        study.tell(trial, source.value)
    else:
        study.tell(trial, state=TrialState.PRUNED)


def _heartbeats(storage) -> bool:
    """Whether ``storage`` (an RDBStorage or Optuna's caching wrapper around one) records heartbeats."""
    return callable(getattr(storage, "get_heartbeat_interval", None)) and storage.get_heartbeat_interval() is not None


def _fail(storage, trial_id: int) -> bool:
    """Set a trial to FAIL; False if another worker finished or failed it first."""
    try:
        return storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_dead_trials(study: optuna.Study) -> list[int]:
    """Fail and re-enqueue (once) every RUNNING trial whose worker is dead; returns their numbers.

    Dead means: on this host, its pid no longer exists (immediate, e.g. after kill -9 and a re-run); on any
    host, its heartbeat is older than the grace period (Optuna's stale-trial check).
    """
    storage = study._storage
    host = socket.gethostname()
    recovered: list[int] = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(trial.user_attrs.get("worker", ""))
        worker_host, _, pid = worker.rpartition(":")
        if worker_host == host and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            if _fail(storage, trial._trial_id):
                recovered.append(trial.number)
    if _heartbeats(storage):
        recovered += _fail_stale(study)
    for number in sorted(set(recovered)):
        failed = study.get_trials(deepcopy=False)[number]
        if failed.user_attrs.get("retry_of") is not None:
            continue  # a retry that died too is not run a third time
        study.enqueue_trial(failed.params, user_attrs={"retry_of": number})
    return sorted(set(recovered))


def _fail_stale(study: optuna.Study) -> list[int]:
    storage = study._storage
    stale_ids = storage._get_stale_trial_ids(study._study_id)  # Optuna's own stale query (no public form)
    failed = []
    for trial_id in stale_ids:
        if _fail(storage, trial_id):
            failed.append(storage.get_trial_number_from_id(trial_id))
    return failed


class Heartbeat:
    """A daemon thread that records a heartbeat for the trials this worker is running (ask/tell has none)."""

    def __init__(self, study: optuna.Study) -> None:
        self.storage = study._storage
        self.trial_ids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._enabled = _heartbeats(self.storage)

    def __enter__(self) -> Heartbeat:
        if self._enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def beat(self) -> None:
        """Record a heartbeat for every tracked trial now."""
        if self._enabled:
            for trial_id in list(self.trial_ids):
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception:  # a transient storage error must not kill the worker; the next beat retries
                    continue

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_INTERVAL):
            self.beat()
