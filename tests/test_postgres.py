"""Many workers on one PostgreSQL study: a killed worker's trial is run again, once, and nothing is lost.

Needs a server: ``.ci/run`` starts one and exports KDZERO_TEST_POSTGRES_URL; without it these tests skip.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from kdzero.genome import Genome
from kdzero.search.space import genome_to_params
from kdzero.search.study import make_storage, recover_dead_trials

URL = os.environ.get("KDZERO_TEST_POSTGRES_URL")
pytestmark = [pytest.mark.postgres, pytest.mark.skipif(not URL, reason="KDZERO_TEST_POSTGRES_URL not set")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_three_workers_on_postgres_survive_one_killed_mid_trial(tiny_run, tmp_path):
    from tests.test_search import ROOT, _check_whole

    name = f"pg-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "kdzero", "search", "--config", str(tiny_run["config"]),
                             "--name", name, "--runs-dir", str(tmp_path), "--storage", URL, "--workers", "3",
                             "--steps", "150", "--quiet"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    storage = make_storage(URL)
    killed = None
    deadline = time.time() + 180
    while time.time() < deadline and killed is None:
        time.sleep(0.5)
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            continue
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        for trial in running:
            pid = int(str(trial.user_attrs.get("worker", ":0")).rpartition(":")[2] or 0)
            if complete and pid not in (0, proc.pid, os.getpid()) and _alive(pid):
                os.kill(pid, signal.SIGKILL)
                time.sleep(0.3)
                # The trial may have finished between reading it and the kill: then this kill hit the worker
                # between trials, and another worker is killed instead.
                if storage.get_trial(trial._trial_id).state in (TrialState.RUNNING, TrialState.FAIL):
                    killed = trial.number
                break
    assert killed is not None, "no worker was caught mid-trial"
    output, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, output
    study = optuna.load_study(study_name=name, storage=storage)
    _check_whole(study, budget=10)
    trials = study.get_trials()
    assert trials[killed].state == TrialState.FAIL
    retries = [t for t in trials if t.user_attrs.get("retry_of") == killed]
    assert len(retries) == 1 and retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    from kdzero.leaderboard import frame

    board = frame(study, include_all=True)
    assert len(board) == len(trials) and board["rank"].dropna().tolist() == list(range(1, board["rank"].count() + 1))


def test_stale_heartbeat_from_another_host_is_failed_and_retried_once(monkeypatch):
    monkeypatch.setattr("kdzero.search.study.GRACE_PERIOD", 1)
    monkeypatch.setattr("kdzero.search.study.HEARTBEAT_INTERVAL", 1)
    storage = make_storage(URL)
    study = optuna.create_study(study_name=f"stale-{uuid.uuid4().hex[:8]}", storage=storage)
    genome = Genome.parse("logit[no,no,no]|kl|no|T4|x1")
    study.enqueue_trial(genome_to_params(genome))
    trial = study.ask()
    for gene, value in genome_to_params(genome).items():
        trial.suggest_categorical(gene, [value])
    trial.set_user_attr("worker", "some-other-host:12345")
    storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)
    assert recover_dead_trials(study) == [trial.number]
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.WAITING]
    retry = study.ask()
    retry.set_user_attr("worker", "some-other-host:12345")
    storage.record_heartbeat(retry._trial_id)
    time.sleep(2.5)
    assert recover_dead_trials(study) == [retry.number]
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.FAIL]  # not a third time
