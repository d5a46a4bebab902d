"""KD-Zero's evolution (the paper's Algorithm 1) as an Optuna sampler.

The population is never held in memory between trials: every call derives it from the study's completed
trials, the best ``population_size`` unique genomes by score (rejected genomes never enter it). That makes the
"remove the worst" step implicit and lets any number of workers, on any number of machines, evolve one
population through the shared storage.

One iteration, for a new trial:
1. while fewer than ``population_size`` genomes are known, propose a random valid genome (the initial
   population; the classical presets are enqueued ahead of these by the runner);
2. otherwise sample a ratio ``sample_ratio`` of the population, take its ``top_k``, pick a parent at random and
   mutate it (with probability ``crossover_prob`` first cross it with a second top parent);
3. guided selection (optional): a ranker compares the child with a fresh random genome and only the one
   predicted better is proposed;
4. never propose a genome whose canonical key the study already holds (any state), so no distiller is paid for
   twice.

Adaptive shrinkage (optional) drops transforms whose genomes are mostly rejected, or all rank in the bottom
quantile, once each has ``shrink_min_evidence`` results; the dropped ops are logged to the study's user attrs.
"""
from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from kdzero.genome import Genome, SearchSpace
from kdzero.search.ranker import Ranker
from kdzero.search.space import distributions, genome_from_params, genome_to_params

MAX_PROPOSALS = 200
DROPPED_OPS_ATTR = "kdzero_dropped_ops"


def trial_genome(trial: FrozenTrial) -> Genome | None:
    """The genome a trial evaluated (None if its parameters are incomplete)."""
    try:
        return genome_from_params(trial.params)
    except Exception:  # a foreign or half-written trial
        return None


def trial_key(trial: FrozenTrial) -> str | None:
    """The canonical key of a trial's genome, recomputed from its parameters so that a study written under an
    older key (whose rules have since been corrected) deduplicates by today's rules; the stored user attr only
    stands in for a trial without readable parameters."""
    params = trial.params or trial.system_attrs.get("fixed_params")
    key = _params_key(tuple(sorted(params.items()))) if params else None
    return key or trial.user_attrs.get("key")


@functools.lru_cache(maxsize=65536)
def _params_key(items: tuple) -> str | None:
    try:
        return genome_from_params(dict(items)).key
    except Exception:  # a foreign or half-written trial
        return None


class EvolutionSampler(BaseSampler):
    """KD-Zero evolution over a genome ``space``; see the module docstring.

    ``is_valid(genome)`` (optional) filters proposals statically, e.g. against the teacher/student shapes, so
    that no trial is spent on a genome that cannot run. ``ranker`` enables guided selection.
    """

    def __init__(self, space: SearchSpace, *, population_size: int = 20, sample_ratio: float = 0.5,
                 top_k: int = 3, crossover_prob: float = 0.3, ranker: Ranker | None = None,
                 is_valid: Callable[[Genome], bool] | None = None, adaptive_shrink: bool = False,
                 shrink_min_evidence: int = 4, shrink_quantile: float = 0.25, seed: int | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        if population_size < 2:
            raise ValueError("population_size must be at least 2")
        self.space = space
        self.population_size = population_size
        self.sample_ratio = sample_ratio
        self.top_k = top_k
        self.crossover_prob = crossover_prob
        self.ranker = ranker
        self.is_valid = is_valid or (lambda genome: True)
        self.adaptive_shrink = adaptive_shrink
        self.shrink_min_evidence = shrink_min_evidence
        self.shrink_quantile = shrink_quantile
        self.seed = seed
        self.log = log
        self._distributions = distributions(space)
        self._fallback = RandomSampler(seed=seed)

    # --------------------------------------------------------------------------------------- Optuna API
    def reseed_rng(self) -> None:
        self._fallback.reseed_rng()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self._distributions)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        rng = random.Random(None if self.seed is None else self.seed * 1_000_003 + trial.number)
        genome = self.propose(study.get_trials(deepcopy=False), rng, study)
        return genome_to_params(genome)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    # ---------------------------------------------------------------------------------------- algorithm
    def population(self, trials: Sequence[FrozenTrial]) -> list[tuple[Genome, float]]:
        """The current population: the best ``population_size`` unique complete genomes, best first."""
        seen: set[str] = set()
        ranked: list[tuple[Genome, float]] = []
        complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
                    and math.isfinite(t.value)]
        for trial in sorted(complete, key=lambda t: (t.value, t.number)):
            genome = trial_genome(trial)
            if genome is None or genome.key in seen:
                continue
            seen.add(genome.key)
            ranked.append((genome, float(trial.value)))
        return ranked[: self.population_size]

    def propose(self, trials: Sequence[FrozenTrial], rng: random.Random, study: Study | None = None) -> Genome:
        """The genome for the next trial given the study's ``trials`` (see the module docstring)."""
        taken = {key for key in (trial_key(t) for t in trials) if key}
        space = self.current_space(trials, study)
        population = self.population(trials)
        for _ in range(MAX_PROPOSALS):
            if len(population) < self.population_size:
                candidate = self._random_valid(rng, space, taken)
            else:
                candidate = self._child(population, rng, space)
                if self.ranker is not None and candidate is not None:
                    rival = self._random_valid(rng, space, taken)
                    history = [(g, float(t.value)) for t in trials if t.state == TrialState.COMPLETE
                               and t.value is not None and (g := trial_genome(t)) is not None]
                    candidate = self.ranker(candidate, rival, history)
            if candidate is not None and candidate.key not in taken and self.is_valid(candidate):
                return candidate
        return self._random_valid(rng, space, taken) or Genome.random(rng, space)

    def _child(self, population: list[tuple[Genome, float]], rng: random.Random, space: SearchSpace) -> Genome:
        sample_size = max(2, math.ceil(self.sample_ratio * len(population)))
        sampled = sorted(rng.sample(population, min(sample_size, len(population))), key=lambda gs: gs[1])
        top = [genome for genome, _ in sampled[: self.top_k]]
        parent = rng.choice(top)
        if len(top) > 1 and rng.random() < self.crossover_prob:
            other = rng.choice([g for g in top if g is not parent])
            parent = parent.crossover(other, rng)
        return parent.mutate(rng, space)

    def _random_valid(self, rng: random.Random, space: SearchSpace, taken: set[str]) -> Genome | None:
        for _ in range(MAX_PROPOSALS):
            genome = Genome.random(rng, space)
            if genome.key not in taken and self.is_valid(genome):
                return genome
        return None

    def current_space(self, trials: Sequence[FrozenTrial], study: Study | None = None) -> SearchSpace:
        """The space proposals are drawn from: ``space`` minus adaptively dropped transforms (if enabled)."""
        if not self.adaptive_shrink:
            return self.space
        dropped = self.dropped_transforms(trials)
        space = self.space
        for slot in (1, 2, 3):
            space = space.without(f"transform{slot}", dropped)
        if study is not None and dropped and sorted(dropped) != study.user_attrs.get(DROPPED_OPS_ATTR):
            study.set_user_attr(DROPPED_OPS_ATTR, sorted(dropped))
            if self.log is not None:
                self.log(f"adaptive shrinkage: dropped {', '.join(sorted(dropped))}")
        return space

    def dropped_transforms(self, trials: Sequence[FrozenTrial]) -> set[str]:
        """Transforms with enough evidence that their genomes are rejected or rank in the bottom quantile."""
        finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        scores = sorted(t.value for t in finished if t.state == TrialState.COMPLETE and t.value is not None
                        and math.isfinite(t.value))
        if not scores:
            return set()
        cutoff = scores[min(len(scores) - 1, int(len(scores) * (1 - self.shrink_quantile)))]
        evidence: dict[str, list[bool]] = {}
        for trial in finished:
            genome = trial_genome(trial)
            if genome is None:
                continue
            bad = trial.state == TrialState.PRUNED or trial.value is None or trial.value >= cutoff
            for name in set(genome.transforms) - {"no"}:
                evidence.setdefault(name, []).append(bad)
        return {name for name, flags in evidence.items()
                if len(flags) >= self.shrink_min_evidence and all(flags)}


__all__ = ["DROPPED_OPS_ATTR", "EvolutionSampler", "trial_genome", "trial_key"]
