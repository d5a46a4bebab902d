"""The search: samplers over one study, KD-Zero evolution's rules, and runs that survive kill -9 and share work."""
from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from kdzero.genome import GENES, SHRUNK_SPACE, Genome
from kdzero.presets import PRESETS
from kdzero.search import SAMPLERS, EvolutionSampler, SurrogateRanker, create_sampler, genome_to_params
from kdzero.search.space import KD_GRID_SPACE, genome_from_params, space_choices, suggest_genome
from kdzero.search.study import initialise, make_storage

FEAT = {"feat": (16, 4, 4), "emb": (16,), "logit": (10,)}


def synthetic_score(genome: Genome) -> float:
    """A deterministic stand-in for a proxy score: KL on logits and T4 are good, large magnitudes bad."""
    score = 1.0 + 0.1 * math.log10(genome.magnitude + 1e-3)
    score -= 0.3 * (genome.distance == "kl") + 0.2 * (genome.input == "logit") + 0.1 * (genome.temperature == 4)
    score += 0.01 * sum(name != "no" for name in genome.transforms)
    return score


def run_study(sampler_name: str, space, n_trials: int, seed: int = 0, presets=()) -> optuna.Study:
    space = space.including(list(presets))
    sampler = create_sampler(sampler_name, space, seed=seed, population_size=6,
                             is_valid=lambda g: g.is_valid(FEAT, FEAT))
    study = optuna.create_study(sampler=sampler, direction="minimize")
    initialise(study, {"test": True}, space, n_trials, presets)
    for _ in range(n_trials):
        trial = study.ask()
        genome = suggest_genome(trial)
        trial.set_user_attr("key", genome.key)
        if not genome.is_valid(FEAT, FEAT):
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, synthetic_score(genome))
    return study


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_runs_the_same_small_study_within_its_space(name: str):
    space = KD_GRID_SPACE if name == "grid" else SHRUNK_SPACE
    presets = [] if name == "grid" else [PRESETS["kd"], PRESETS["at"]]
    study = run_study(name, space, n_trials=18, presets=presets)
    trials = study.get_trials()
    assert len(trials) == 18 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    allowed = space_choices(space.including(presets))
    for trial in trials:
        assert set(trial.params) == set(GENES)
        for gene, value in trial.params.items():
            assert value in allowed[gene], (name, gene, value)
        assert isinstance(genome_from_params(trial.params), Genome)
    if presets:
        assert [genome_from_params(t.params) for t in trials[:2]] == presets  # enqueued presets run first
    assert study.best_value == min(t.value for t in trials if t.state == TrialState.COMPLETE)


@pytest.mark.parametrize("name", ["evolution", "random", "tpe"])
def test_samplers_are_reproducible_for_a_seed(name: str):
    first = [t.params for t in run_study(name, SHRUNK_SPACE, 12, seed=3).get_trials()]
    second = [t.params for t in run_study(name, SHRUNK_SPACE, 12, seed=3).get_trials()]
    assert first == second


def test_evolution_never_proposes_a_canonical_genome_twice_and_only_valid_ones():
    study = run_study("evolution", SHRUNK_SPACE, n_trials=40, presets=list(PRESETS.values()))
    keys = [genome_from_params(t.params).key for t in study.get_trials()]
    assert len(keys) == len(set(keys))
    assert all(genome_from_params(t.params).is_valid(FEAT, FEAT) for t in study.get_trials())


def test_evolution_improves_on_random_search_for_a_learnable_score():
    evolution = run_study("evolution", SHRUNK_SPACE, n_trials=40, seed=1).best_value
    random_best = run_study("random", SHRUNK_SPACE, n_trials=40, seed=1).best_value
    assert evolution <= random_best


def _frozen(genome: Genome, number: int, value: float | None, state=TrialState.COMPLETE):
    return optuna.trial.create_trial(params=genome_to_params(genome),
                                     distributions=EvolutionSampler(SHRUNK_SPACE)._distributions, value=value,
                                     state=state, user_attrs={"key": genome.key}) if state == TrialState.COMPLETE \
        else optuna.trial.create_trial(params=genome_to_params(genome),
                                       distributions=EvolutionSampler(SHRUNK_SPACE)._distributions,
                                       state=state, user_attrs={"key": genome.key})


def test_population_is_the_best_unique_complete_genomes_and_excludes_rejected():
    rng = random.Random(0)
    genomes = []
    while len(genomes) < 8:
        g = Genome.random(rng, SHRUNK_SPACE)
        if g.key not in {x.key for x in genomes}:
            genomes.append(g)
    trials = [_frozen(g, i, float(i)) for i, g in enumerate(genomes[:6])]
    trials.append(_frozen(genomes[6], 6, None, state=TrialState.PRUNED))
    trials.append(_frozen(genomes[0], 7, 0.5))  # same key as trial 0 again: counted once
    sampler = EvolutionSampler(SHRUNK_SPACE, population_size=4)
    population = sampler.population(trials)
    assert [g for g, _ in population] == genomes[:4]
    assert genomes[6] not in [g for g, _ in sampler.population(trials)]


def test_mutation_children_inherit_all_but_one_or_two_genes_from_a_top_parent():
    rng = random.Random(5)
    genomes = [Genome.random(rng, SHRUNK_SPACE) for _ in range(10)]
    trials = [_frozen(g, i, float(i)) for i, g in enumerate(genomes)]
    sampler = EvolutionSampler(SHRUNK_SPACE, population_size=10, sample_ratio=1.0, top_k=2, crossover_prob=0.0)
    top = genomes[:2]
    for seed in range(20):
        child = sampler.propose(trials, random.Random(seed))
        differences = min(sum(child.gene(g) != parent.gene(g) for g in GENES) for parent in top)
        assert 1 <= differences <= 2


def test_guided_selection_keeps_the_genome_the_ranker_prefers():
    calls = []

    def prefer_logit(a: Genome, b: Genome, history) -> Genome:
        calls.append((a, b))
        return a if a.input == "logit" else b

    rng = random.Random(2)
    trials = [_frozen(Genome.random(rng, SHRUNK_SPACE), i, float(i)) for i in range(8)]
    sampler = EvolutionSampler(SHRUNK_SPACE, population_size=6, ranker=prefer_logit)
    chosen = sampler.propose(trials, random.Random(0))
    a, b = calls[0]
    assert chosen == (a if a.input == "logit" else b)


def test_surrogate_ranker_learns_which_genes_score_well():
    rng = random.Random(0)
    history = [(g, synthetic_score(g)) for g in (Genome.random(rng, SHRUNK_SPACE) for _ in range(60))]
    good = Genome.parse("logit[no,no,no]|kl|no|T4|x1")
    bad = Genome.parse("feat[no,no,no]|l1|no|T16|x100")
    ranker = SurrogateRanker()
    assert ranker(good, bad, history) == good and ranker(bad, good, history) == good
    assert ranker(bad, good, history[:3]) == bad  # without enough history it keeps the child


def test_adaptive_shrinkage_drops_an_op_whose_genomes_always_fail():
    rng = random.Random(0)
    trials = []
    for i in range(40):
        g = Genome.random(rng, SHRUNK_SPACE)
        failing = "natt" in g.transforms
        trials.append(_frozen(g, i, None if failing else 1.0 + i * 0.001,
                              state=TrialState.PRUNED if failing else TrialState.COMPLETE))
    sampler = EvolutionSampler(SHRUNK_SPACE, adaptive_shrink=True, shrink_min_evidence=3)
    assert "natt" in sampler.dropped_transforms(trials)
    assert "natt" not in sampler.current_space(trials).slots[0]
    assert "natt" in EvolutionSampler(SHRUNK_SPACE).current_space(trials).slots[0]  # off by default


# ----------------------------------------------------------------------------------------- real runs
ROOT = Path(__file__).resolve().parents[1]


def _search(args: list[str], runs: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160"}
    return subprocess.Popen([sys.executable, "-m", "kdzero", "search", "--runs-dir", str(runs), "--quiet", *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _study(runs: Path, name: str) -> optuna.Study:
    """The run's study, opened as ``kdzero leaderboard`` opens it: never creating the database, and under the
    schema lock, so that polling a search that is still creating its tables cannot break it."""
    storage = make_storage(f"sqlite:///{(runs / name / 'study.db').as_posix()}", create=False)
    return optuna.load_study(study_name=name, storage=storage)


def _check_whole(study: optuna.Study, budget: int) -> None:
    trials = study.get_trials()
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == budget
    evaluated = [t.user_attrs["key"] for t in finished if "duplicate_of" not in t.user_attrs]
    assert len(evaluated) == len(set(evaluated)), "a canonical genome was trained twice"


def test_search_killed_mid_trial_resumes_without_losing_or_repeating_trials(tiny_run, tmp_path):
    runs = tmp_path / "runs"
    args = ["--config", str(tiny_run["config"]), "--name", "killed", "--steps", "150"]
    proc = _search(args, runs)
    deadline = time.time() + 120
    before: dict[int, float] = {}
    while time.time() < deadline:
        time.sleep(0.5)
        if proc.poll() is not None:
            pytest.fail(f"the search ended before it could be killed:\n{proc.communicate()[0]}")
        db = runs / "killed" / "study.db"
        if not db.exists():
            continue
        try:
            trials = _study(runs, "killed").get_trials()
        except KeyError:  # the database exists, the study in it not yet
            continue
        finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        if finished and any(t.state == TrialState.RUNNING for t in trials):
            before = {t.number: (t.state, t.value) for t in finished}
            break
    assert before, "the search never reached a running trial after a finished one"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    rerun = _search(args, runs)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    study = _study(runs, "killed")
    _check_whole(study, budget=10)
    after = {t.number: (t.state, t.value) for t in study.get_trials()}
    assert all(after[n] == kept for n, kept in before.items()), "a finished trial changed or vanished"
    failed = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert failed and all(any(r.user_attrs.get("retry_of") == f.number for r in study.get_trials()) for f in failed)
    assert "leaderboard" in output


def test_two_workers_share_one_population_and_never_train_a_genome_twice(tiny_run, tmp_path):
    runs = tmp_path / "runs"
    proc = _search(["--config", str(tiny_run["config"]), "--name", "pair", "--workers", "2", "--sampler",
                    "random", "--space", "kd-grid", "--iterations", "16", "--steps", "150"], runs)
    output, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, output
    study = _study(runs, "pair")
    _check_whole(study, budget=20)
    # Both workers took trials from the one study; with a random sampler over the 32-genome KD grid many
    # proposals repeat, and a repeat is answered from the first result (or waits for it), never trained again.
    workers = {t.user_attrs.get("worker") for t in study.get_trials()}
    assert len(workers) == 2, workers
    assert any("duplicate_of" in t.user_attrs for t in study.get_trials())


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_configs_load_and_name_real_models(path: Path):
    from kdzero.models import list_models
    from kdzero.search.config import load_config

    config = load_config(path)
    assert config.teacher in list_models() and config.student in list_models()
    assert config.name == path.stem


def test_a_trial_asked_beyond_the_budget_is_failed_as_surplus_before_training():
    from kdzero.search.runner import _without_surplus

    study = optuna.create_study()
    for _ in range(3):
        study.tell(study.ask(), 1.0)
    first, second = study.ask(), study.ask()  # two workers that both saw one free slot of a budget of 4
    assert _without_surplus(study, [first], budget=4) == [first]
    assert _without_surplus(study, [second], budget=4) == []
    surplus = study.get_trials()[second.number]
    assert surplus.state == TrialState.FAIL and surplus.user_attrs["surplus"] is True
