"""Opening a study's storage: the driver a PostgreSQL URL gets, and many processes opening one new database."""
from __future__ import annotations

import importlib.util
import multiprocessing
import time
from pathlib import Path

import optuna
import pytest

from kdzero.errors import ConfigError
from kdzero.search import study as studies

# ------------------------------------------------------------------------------------------------ drivers


def _installed(monkeypatch, *modules: str) -> None:
    """Pretend exactly ``modules`` are importable, as far as driver detection can tell."""
    real = importlib.util.find_spec
    drivers = {module for module, _ in studies.POSTGRES_DRIVERS}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (real("json") if name in modules else None) if name in drivers
                        else real(name, *a))


@pytest.mark.parametrize("given", ["postgresql://kd:pw@db/kdzero", "postgres://kd:pw@db/kdzero"])
def test_a_url_without_driver_gets_psycopg3_when_installed(monkeypatch, given):
    _installed(monkeypatch, "psycopg", "psycopg2")
    assert studies._with_installed_driver(given) == "postgresql+psycopg://kd:pw@db/kdzero"


def test_a_url_without_driver_falls_back_to_psycopg2(monkeypatch):
    _installed(monkeypatch, "psycopg2")
    assert studies._with_installed_driver("postgres://kd@db/x") == "postgresql+psycopg2://kd@db/x"


def test_a_url_that_names_its_driver_or_another_database_is_kept(monkeypatch):
    _installed(monkeypatch, "psycopg")
    for url in ("postgresql+psycopg2://kd@db/x", "sqlite:///runs/x/study.db", "mysql://u@h/d", "not a url"):
        assert studies._with_installed_driver(url) == url


def test_no_postgres_driver_is_one_clear_error_naming_the_extra(monkeypatch):
    _installed(monkeypatch)
    with pytest.raises(ConfigError, match=r"needs a PostgreSQL driver.*kdzero\[postgres\]") as info:
        studies.make_storage("postgresql://kd:secret@db/x")
    assert "secret" not in str(info.value) and "***@db" in str(info.value)


def test_the_test_extra_installs_the_postgres_driver_kdzero_prefers():
    """README's test command must pass on a fresh venv: the PostgreSQL bad-input tests need a driver."""
    import configparser

    setup = configparser.ConfigParser()
    setup.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    extras = setup["options.extras_require"]
    preferred = studies.POSTGRES_DRIVERS[0][0]
    for extra in ("test", "postgres"):
        requirements = [line.split("[")[0].split(">")[0].strip() for line in extras[extra].splitlines()]
        assert preferred in requirements, f"extra {extra!r} lacks {preferred}"


# ------------------------------------------------------------------------------------------------ concurrency
OPENERS = 6


def _open_at_once(url: str, create: bool, barrier, results) -> None:
    """One process: wait for the others, then open ``url`` as a search (create) or a poller (read) would."""
    barrier.wait()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                storage = studies.make_storage(url, create=create)
                break
            except ConfigError as exc:  # a poller may come before the file exists: that is not the race
                if create or "no database file" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        if create:
            studies.create_or_load_study(storage, "race", optuna.samplers.RandomSampler(seed=0))
        else:
            optuna.study.get_all_study_summaries(storage, include_best_trial=False)
        results.put("ok")
    except BaseException as exc:  # report every failure to the parent, which asserts on it
        results.put(f"{type(exc).__name__}: {exc}")


ROUNDS = 3


def test_many_processes_open_one_new_sqlite_study_at_once(tmp_path):
    """Half the processes create the study (a search, its workers), half poll it (leaderboard, a test), all
    released at one instant; each round on a new database. Before the lock, most rounds failed with "table ...
    already exists" or a half-made file refused as "not an Optuna study"."""
    studies.make_storage(f"sqlite:///{(tmp_path / 'warm.db').as_posix()}")  # imports done once, before forking
    context = multiprocessing.get_context("fork")
    for round_ in range(ROUNDS):
        url = f"sqlite:///{(tmp_path / f'run{round_}' / 'study.db').as_posix()}"
        barrier, results = context.Barrier(OPENERS), context.Queue()
        processes = [context.Process(target=_open_at_once, args=(url, i % 2 == 0, barrier, results))
                     for i in range(OPENERS)]
        for process in processes:
            process.start()
        outcomes = [results.get(timeout=120) for _ in processes]
        for process in processes:
            process.join(timeout=10)
        assert outcomes == ["ok"] * OPENERS, f"round {round_}"
        summaries = optuna.study.get_all_study_summaries(studies.make_storage(url, create=False),
                                                         include_best_trial=False)
        assert [s.study_name for s in summaries] == ["race"]


def test_a_schema_race_on_a_server_database_is_retried(monkeypatch):
    """PostgreSQL has no lock file: two creators collide inside the server, and the loser opens again."""
    calls = []

    def racing_storage(url, **kwargs):
        calls.append(url)
        if len(calls) == 1:
            raise RuntimeError('(psycopg.errors.UniqueViolation) duplicate key value violates unique constraint '
                               '"pg_type_typname_nsp_index"')
        return "opened"

    monkeypatch.setattr(studies, "RDBStorage", racing_storage)
    _installed(monkeypatch, "psycopg")
    assert studies.make_storage("postgresql://kd@db/x") == "opened"
    assert calls == ["postgresql+psycopg://kd@db/x"] * 2


def test_other_storage_errors_are_not_retried(monkeypatch):
    calls = []

    def refusing_storage(url, **kwargs):
        calls.append(url)
        raise RuntimeError("connection refused")

    monkeypatch.setattr(studies, "RDBStorage", refusing_storage)
    _installed(monkeypatch, "psycopg")
    with pytest.raises(ConfigError, match="connection refused"):
        studies.make_storage("postgresql://kd@db/x")
    assert len(calls) == 1
