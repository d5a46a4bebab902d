"""Rungs (successive halving after the search), atomic claims, and the confirmation of the winner."""
from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from kdzero.confirm import ConfirmSettings, confirm, pooled_std, verdict
from kdzero.genome import Genome
from kdzero.presets import PRESETS
from kdzero.search import claims, rungs
from kdzero.search.config import load_config
from kdzero.search.space import genome_to_params, named_space, space_choices

ROOT = Path(__file__).resolve().parents[1]


def test_rung_steps_multiply_by_eta_up_to_the_top_rung():
    assert rungs.rung_steps(120, 3, 1080) == [120, 360, 1080]
    assert rungs.rung_steps(120, 3, 500) == [120, 360, 500]
    assert rungs.rung_steps(100, 2, 100) == [100]
    assert rungs.rung_steps(120, 3, None) == [120]


def _trial(study, genome: Genome, value: float | None, **attrs) -> None:
    choices = space_choices(named_space("full").including(ALL))
    distributions = {name: optuna.distributions.CategoricalDistribution(choices[name]) for name in choices}
    state = TrialState.COMPLETE if value is not None else TrialState.PRUNED
    study.add_trial(optuna.trial.create_trial(params=genome_to_params(genome), distributions=distributions,
                                              value=value, state=state,
                                              user_attrs={"genome": str(genome), "key": genome.key, **attrs}))


GENOMES = [Genome.parse(text) for text in (
    "logit[no,no,no]|kl|no|T4|x1", "logit[no,no,no]|kl|no|T1|x1", "feat[no,no,no]|l2|no|T1|x1",
    "emb[no,no,no]|cosine|no|T1|x1", "logit[no,no,no]|l1|no|T1|x1", "feat[no,no,no]|kl|no|T4|x1",
    "logit[no,no,no]|kl|no|T8|x1")]
HARMFUL = Genome.parse("logit[no,no,no]|kl|no|T1|x100")  # copies a random-init teacher at 100x CE's weight
ALL = [*GENOMES, HARMFUL, PRESETS["at"]]


@pytest.fixture
def sqlite_study(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    return optuna.create_study(storage=storage, study_name="s", direction="minimize")


def test_promotion_takes_the_best_third_of_distinct_complete_genomes_ties_by_trial(sqlite_study):
    scores = [0.5, 0.3, None, 0.3, 0.9, 0.1, 0.7]  # None: rejected
    for genome, score in zip(GENOMES, scores):
        _trial(sqlite_study, genome, score)
    _trial(sqlite_study, GENOMES[5], 0.1, duplicate_of=5)  # a reused result is not a second candidate
    promoted = rungs.promoted(sqlite_study, 1, eta=3)
    # complete distinct: 6 genomes -> ceil(6 / 3) = 2: trial 5 (0.1), then trial 1 (0.3, before trial 3's 0.3)
    assert [c.trial for c in promoted] == [5, 1]
    assert [c.genome for c in promoted] == [str(GENOMES[5]), str(GENOMES[1])]
    # rung 2 ranks by the rung-1 scores, not by rung 0's
    for candidate, score in zip(promoted, (0.8, 0.2)):
        assert claims.claim(sqlite_study, rungs.unit_name(1, candidate.key))
        claims.finish(sqlite_study, rungs.unit_name(1, candidate.key),
                      {"status": "complete", "score": score, "trial": candidate.trial, "genome": candidate.genome})
    assert [c.trial for c in rungs.promoted(sqlite_study, 2, eta=3)] == [1]
    assert rungs.top_rung(sqlite_study) == 1


def test_a_claim_is_won_once_and_a_dead_workers_claim_is_taken_over(sqlite_study):
    assert claims.claim(sqlite_study, "unit:a")
    assert not claims.claim(sqlite_study, "unit:a")  # held by a live worker (this one)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    sqlite_study.set_user_attr("unit:b", {"state": "running", "worker": f"{os.uname().nodename}:{dead.pid}",
                                          "beat": time.time()})
    assert claims.claim(sqlite_study, "unit:b")
    assert claims.entries(sqlite_study, "unit:b")["unit:b"]["worker"].endswith(f":{os.getpid()}")
    claims.finish(sqlite_study, "unit:b", {"x": 1})
    assert not claims.claim(sqlite_study, "unit:b")  # done is never claimed again
    claims.release(sqlite_study, ["unit:a", "unit:b"])
    assert set(claims.entries(sqlite_study, "unit:")) == {"unit:b"}  # only running claims are released


def _claim_all(url: str, names: list[str], out: str, start) -> None:
    study = optuna.load_study(study_name="s", storage=url)
    start.wait()
    won = []
    for name in names:
        if claims.claim(study, name):
            won.append(name)
            claims.finish(study, name, {})  # a worker that exits holding a running claim would be "dead"
    Path(out).write_text(json.dumps(won))


def test_two_processes_racing_for_the_same_units_never_both_win(sqlite_study, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    names = [f"race:{i}" for i in range(60)]
    context = multiprocessing.get_context("fork")  # no re-import of torch in the children: seconds, not a minute
    start = context.Event()
    procs = [context.Process(target=_claim_all, args=(url, names, str(tmp_path / f"{k}"), start)) for k in range(2)]
    for proc in procs:
        proc.start()
    time.sleep(0.5)
    start.set()
    for proc in procs:
        proc.join(60)
    won = [set(json.loads((tmp_path / f"{k}").read_text())) for k in range(2)]
    assert not won[0] & won[1], "a unit was claimed by both processes"
    assert won[0] | won[1] == set(names)


def test_pooled_noise_and_verdicts_match_a_hand_computation():
    # groups (1, 3): s^2 = 2 with 1 dof; (10, 10, 13): s^2 = 3 with 2 dof -> s_p^2 = (2 + 6) / 3
    assert math.isclose(pooled_std([[1.0, 3.0], [10.0, 10.0, 13.0]]), math.sqrt(8 / 3))
    assert math.isnan(pooled_std([[1.0], [2.0]]))
    assert verdict(1.0, 0.9) == "beyond noise" and verdict(-0.5, 0.9) == "within noise"


# ----------------------------------------------------------------------------------------- real runs
def _run(command: str, args: list[str], **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "kdzero", command, *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _study(run_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name=run_dir.name, storage=f"sqlite:///{(run_dir / 'study.db').as_posix()}")


def _kill_when(proc: subprocess.Popen, run_dir: Path, ready, timeout: float = 240) -> dict:
    """Poll the run's study until ``ready(study)`` returns a snapshot, then kill -9 the process."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.2)
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be killed:\n{proc.communicate()[0]}")
        if not (run_dir / "study.db").exists():
            continue
        try:
            snapshot = ready(_study(run_dir))
        except Exception:
            continue
        if snapshot:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return snapshot
    pytest.fail("the run never reached the state to kill it in")


def _done(study, prefix: str) -> dict[str, dict]:
    return {k: v for k, v in claims.entries(study, prefix).items() if v.get("state") == claims.DONE}


@pytest.mark.slow
def test_search_killed_during_promotion_and_confirmation_resumes_losing_and_repeating_nothing(tiny_run, tmp_path):
    runs = tmp_path / "runs"
    run_dir = runs / "fid"
    args = ["--config", str(tiny_run["config"]), "--name", "fid", "--runs-dir", str(runs), "--quiet",
            "--iterations", "5", "--max-steps", "108", "--confirm", "1", "--confirm-epochs", "3",
            "--confirm-subset", "20", "--confirm-seeds", "2"]

    def mid_rung(study):
        done = _done(study, rungs.PREFIX)
        genomes = [k for k in done if not k.endswith(rungs.BASELINE_KEY)]
        return dict(done) if genomes and len(genomes) < len(rungs.promoted(study, 1, 3)) else None

    kept = _kill_when(_run("search", args), run_dir, mid_rung)

    def mid_confirm(study):
        done = _done(study, "kdzero_confirm:")
        return dict(done) if 0 < len(done) < 8 else None

    kept_confirm = _kill_when(_run("search", args), run_dir, mid_confirm)
    rerun = _run("search", args)
    output, _ = rerun.communicate(timeout=400)
    assert rerun.returncode == 0, output
    study = _study(run_dir)
    after = _done(study, rungs.PREFIX)
    assert all(after[name] == entry for name, entry in kept.items()), "a finished rung training changed"
    for rung in (1, 2):
        assert rungs.rung_complete(study, rung, 3)
    confirmed = _done(study, "kdzero_confirm:")
    assert len(confirmed) == 8  # (1 genome + CE-only, KD, DKD) x 2 seeds, each exactly once
    assert all(confirmed[name] == entry for name, entry in kept_confirm.items()), "a confirmation was redone"
    # the resumed run trained only what was missing: its progress lines count the rest
    assert len(re.findall(r"^confirm \d+/8: ", output, flags=re.M)) == 8 - len(kept_confirm)
    assert "confirmed winner:" in output
    top = rungs.ranked(study, rungs.top_rung(study))[0][0]
    assert rungs.top_rung(study) == 2 and f"{top.genome} (trial {top.trial}, rung 2)" in output


def test_confirmed_numbers_are_the_trainings_real_test_accuracies_and_a_harmful_genome_ranks_below_kd(
        tiny_run, tmp_path, capsys):
    from kdzero.search import runner
    from kdzero.train import evaluate, load_data

    config = load_config(tiny_run["config"]).with_overrides({"runs_dir": str(tmp_path), "name": "planted"})
    run = runner.prepare_run(config, log=lambda _m: None)
    harmful = HARMFUL
    _trial(run.study, harmful, 0.01)
    _trial(run.study, PRESETS["at"], 0.02)
    settings = ConfirmSettings(top=1, epochs=4, subset=20, seeds=2)
    table = confirm(run.study, config, settings, log=lambda _m: None)
    rows = table.set_index("distiller")
    assert list(table.distiller[:1]) != [str(harmful)]
    assert rows.loc[str(harmful), "last_mean"] < rows.loc["KD", "last_mean"] - 10
    assert rows.loc[str(harmful), "vs_kd"] == "beyond noise"
    data = load_data("digits")
    from kdzero.models import create_model

    for seed in range(2):
        folder = config.run_dir / "confirm" / settings.tag / "logit_no_no_no_kl_no_T1_x100" / f"seed{seed}"
        state = torch.load(folder / "last.pt", weights_only=False)
        model = create_model("resnet8", num_classes=10, in_chans=1)
        model.load_state_dict(state["model"])
        entry = claims.entries(run.study, f"kdzero_confirm:{settings.tag}:{harmful}:{seed}")
        stored = next(iter(entry.values()))
        assert stored["last_acc"] == pytest.approx(evaluate(model, data.test), abs=1e-9)
    expected = (sum(claims.entries(run.study, f"kdzero_confirm:{settings.tag}:KD:{s}")
                    [f"kdzero_confirm:{settings.tag}:KD:{s}"]["last_acc"] for s in range(2)) / 2)
    assert rows.loc["KD", "last_mean"] == pytest.approx(expected)
    # the strongest hand-made reference (KD, DKD, KD+LS, DKD+LS: all trained) is the bar every row is measured by
    hand = rows.loc[["KD", "DKD", "KD+LS", "DKD+LS"], "last_mean"]
    assert set(table.best_reference) == {hand.idxmax()}
    for _, row in rows.iterrows():
        assert row.gain_best == pytest.approx(row.last_mean - hand.max())
    from kdzero.cli.confirm import hand_made_verdict

    top = table[table.kind == "searched"].iloc[0]
    assert hand_made_verdict(table) == (
        f"best hand-made: {hand.idxmax()} {hand.max():.2f} ± {rows.loc[hand.idxmax(), 'last_std']:.2f}; best found: "
        f"{top.distiller} {top.gain_best:+.2f} ± {top.noise_best:.2f}, {top.vs_best}")
    # the leaderboard carries the confirmed table: above the population, and as CSV/JSON with --table confirmed
    from kdzero.cli import main

    assert main(["leaderboard", str(config.run_dir), "--table", "confirmed", "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["distiller"] for r in records] == list(table.distiller)
    assert records[0]["last_mean"] == pytest.approx(table.last_mean.iloc[0])
    assert main(["leaderboard", str(config.run_dir)]) == 0
    shown = capsys.readouterr().out
    assert shown.index("confirmed:") < shown.index("leaderboard:")


def test_confirm_refuses_bad_input_in_one_line(tmp_path, capsys):
    from kdzero.cli import main

    assert main(["confirm", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip().endswith("no config.json)")
    assert main(["confirm", str(tmp_path / "nope"), "--top", "0"]) == 2
    assert "--top must be at least 1, got 0" in capsys.readouterr().err


def test_the_label_poor_subset_is_the_digits_demos_and_no_default_for_other_data():
    from kdzero.cli import build_parser
    from kdzero.cli.search import resolve_config

    def resolved(*argv: str):
        return resolve_config(build_parser().parse_args(["search", *argv]))

    assert resolved().proxy.train_subset == 30  # the demo: 300 labelled digits
    assert resolved("--dataset", "cifar10").proxy.train_subset is None  # a user's data: every labelled image
    assert resolved("--dataset", "cifar10", "--train-subset", "50").proxy.train_subset == 50


def test_confirmation_resolves_the_searchs_teacher_on_the_whole_training_split(tiny_run, tmp_path, monkeypatch):
    """The labelled subset is the students'; the teacher is the one the search used, found (or, on digits,
    trained once) on the whole split: resolving it on the subset trained a second, weak teacher."""
    from kdzero import confirm as confirming
    from kdzero.search import runner
    from kdzero.train import load_data

    seen: list[int] = []

    def teacher_checkpoint(config, data, log=print):
        seen.append(len(data.train))
        return config.teacher_ckpt

    monkeypatch.setattr(runner, "teacher_checkpoint", teacher_checkpoint)
    config = load_config(tiny_run["config"]).with_overrides({"runs_dir": str(tmp_path), "name": "teacher"})
    pair = confirming.load_pair(config, ConfirmSettings(top=1, epochs=1, subset=5, seeds=1), log=lambda _m: None)
    assert seen == [len(load_data("digits").train)]
    assert len(pair.data.train) == 5 * 10


def test_a_confirmation_training_longer_than_the_grace_period_keeps_its_claim(tiny_run, tmp_path, monkeypatch):
    """A real confirmation training lasts minutes; a claim whose beat is older than the grace period is taken
    over by any idle worker. The training beats while it runs, so nobody else can claim it (before, two workers
    trained the same (distiller, seed) into the same folder)."""
    from kdzero import confirm as confirming
    from kdzero.search import runner

    monkeypatch.setattr(claims, "GRACE_PERIOD", 0.3)
    monkeypatch.setattr(claims, "HEARTBEAT_INTERVAL", 0.0)
    config = load_config(tiny_run["config"]).with_overrides({"runs_dir": str(tmp_path), "name": "beats"})
    run = runner.prepare_run(config, log=lambda _m: None)
    _trial(run.study, PRESETS["kd"], 0.01)
    settings = ConfirmSettings(top=1, epochs=1, subset=5, seeds=1)
    rivals: list[bool] = []

    def long_training(model, data, train_config, *, heartbeat=None, **kwargs):
        for _ in range(6):  # 0.6 s: twice the grace period
            time.sleep(0.1)
            if heartbeat is not None:  # before the fix none was given
                heartbeat()
        running = [n for n, e in claims.entries(run.study, "kdzero_confirm:").items() if e["state"] == "running"]
        rivals.extend(claims.claim(run.study, name) for name in running)  # what an idle worker would try now
        assert len(running) == 1
        return types.SimpleNamespace(last_acc=50.0, best_acc=50.0, best_epoch=1, seconds=0.6)

    monkeypatch.setattr(confirming, "train_model", long_training)
    confirm(run.study, config, settings, log=lambda _m: None)
    assert rivals and not any(rivals)


def test_full_training_beats_after_every_step_and_evaluation():
    from kdzero.models import create_model
    from kdzero.train import TrainConfig, load_data, train_model

    data = load_data("digits", train_subset=100)
    beats: list[float] = []
    config = TrainConfig(epochs=2, batch_size=32, milestones=(1,), device="cpu", channels_last=False)
    train_model(create_model("resnet8", num_classes=10, in_chans=1), data, config, progress=False,
                heartbeat=lambda: beats.append(time.time()))
    steps = 2 * math.ceil(len(data.train) / 32)
    assert len(beats) == steps + 2  # every optimiser step, and each epoch's evaluation
