"""Atomic work claims in the study storage: each unit of work (a genome at a rung, a confirmation training) is
done by exactly one worker, across processes and machines, and survives kill -9.

A unit is one study user attribute ``<prefix>:<part>:...`` whose JSON value is ``{"state": "running", "worker":
"host:pid", "beat": epoch seconds}`` while claimed and ``{"state": "done", ...result}`` when finished. Claiming
inserts the attribute: the storage's unique (study, key) constraint lets exactly one concurrent insert succeed,
on SQLite and PostgreSQL alike (Optuna's own upsert of user attributes is a read-then-write and would let two
workers both believe they won). A claim whose worker is dead (same host: its pid is gone; any host: no beat for
``GRACE_PERIOD`` seconds) is taken over by a compare-and-swap on the stored text, so two rescuers cannot both
take it either. Finished units are never claimed again; a killed worker loses at most the unit it was running.
"""
from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterable

import optuna
import sqlalchemy
from optuna.storages._rdb.models import StudyUserAttributeModel

from kdzero.search.study import GRACE_PERIOD, HEARTBEAT_INTERVAL, _pid_alive, worker_id

_TABLE = StudyUserAttributeModel.__table__
RUNNING, DONE = "running", "done"


def _engine(study: optuna.Study) -> sqlalchemy.Engine:
    storage = study._storage
    storage = getattr(storage, "_backend", storage)  # Optuna's caching wrapper, where a version has one
    return storage.engine


def _row(study: optuna.Study, name: str) -> str | None:
    """The stored JSON text of unit ``name`` (None when unclaimed)."""
    with _engine(study).connect() as connection:
        return connection.execute(sqlalchemy.select(_TABLE.c.value_json).where(
            _TABLE.c.study_id == study._study_id, _TABLE.c.key == name)).scalar_one_or_none()


def _running() -> dict:
    return {"state": RUNNING, "worker": worker_id(), "beat": time.time()}


def is_dead(entry: dict, now: float | None = None) -> bool:
    """Whether a running claim's worker is gone: its pid on this host, or its beat older than the grace."""
    host, _, pid = str(entry.get("worker", "")).rpartition(":")
    if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
        return True
    return (now or time.time()) - float(entry.get("beat", 0.0)) > GRACE_PERIOD


def claim(study: optuna.Study, name: str) -> bool:
    """Claim unit ``name`` for this worker: True when it is now ours; False when it is done or another live
    worker holds it. A dead worker's claim is taken over."""
    try:
        with _engine(study).begin() as connection:
            connection.execute(sqlalchemy.insert(_TABLE).values(study_id=study._study_id, key=name,
                                                                value_json=json.dumps(_running())))
        return True
    except sqlalchemy.exc.IntegrityError:
        pass
    stored = _row(study, name)
    if stored is None:
        return claim(study, name)  # released between our insert and read: try again
    entry = json.loads(stored)
    if entry.get("state") != RUNNING or not is_dead(entry):
        return False
    return _swap(study, name, stored, _running())


def _swap(study: optuna.Study, name: str, old_text: str, new: dict) -> bool:
    """Replace the value of ``name`` only if it still reads ``old_text`` (one winner among rescuers)."""
    with _engine(study).begin() as connection:
        result = connection.execute(sqlalchemy.update(_TABLE).where(
            _TABLE.c.study_id == study._study_id, _TABLE.c.key == name, _TABLE.c.value_json == old_text
        ).values(value_json=json.dumps(new)))
    return result.rowcount == 1


def finish(study: optuna.Study, name: str, result: dict) -> None:
    """Record our unit as done with ``result`` (plain JSON data)."""
    study._storage.set_study_user_attr(study._study_id, name, {**result, "state": DONE, "worker": worker_id()})


def release(study: optuna.Study, names: Iterable[str]) -> None:
    """Give back units we claimed but will not finish (Ctrl-C): delete them so that anyone may claim them."""
    names = list(names)
    if not names:
        return
    with _engine(study).begin() as connection:
        connection.execute(sqlalchemy.delete(_TABLE).where(
            _TABLE.c.study_id == study._study_id, _TABLE.c.key.in_(names),
            _TABLE.c.value_json.like(f'%"state": "{RUNNING}"%')))


def entries(study: optuna.Study, prefix: str) -> dict[str, dict]:
    """Every unit whose name starts with ``prefix``, by name (one query, fresh from the storage)."""
    with _engine(study).connect() as connection:
        rows = connection.execute(sqlalchemy.select(_TABLE.c.key, _TABLE.c.value_json).where(
            _TABLE.c.study_id == study._study_id, _TABLE.c.key.startswith(prefix, autoescape=True))).all()
    return {key: json.loads(value) for key, value in rows}


class Beater:
    """Keeps this worker's running claims alive for other hosts: ``tick()`` (called from training steps)
    refreshes their beat at most every ``HEARTBEAT_INTERVAL`` seconds."""

    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        self.names: set[str] = set()
        self._last = time.time()

    def tick(self) -> None:
        """Refresh the beats if the interval has passed."""
        if time.time() - self._last < HEARTBEAT_INTERVAL:
            return
        self._last = time.time()
        for name in list(self.names):
            stored = _row(self.study, name)
            if stored is not None and json.loads(stored).get("state") == RUNNING:
                _swap(self.study, name, stored, _running())
