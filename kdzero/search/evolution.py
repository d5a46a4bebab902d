"""KD-Zero's evolution (the paper's Algorithm 1) as an Optuna sampler.

The population is never held in memory between trials: every call derives it from the study's completed
trials, the best ``population_size`` unique genomes by score in the study's direction (rejected genomes never
enter it). That makes the "remove the worst" step implicit and lets any number of workers, on any number of
machines, evolve one population through the shared storage.

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

As an Optuna sampler it keeps Optuna's contract (``optuna.testing.pytest_samplers`` passes):
- relative sampling returns exactly the parameters of the search space Optuna passes in. Genes left out of it
  (a ``PartialFixedSampler`` removes the ones it fixes) and genes an enqueued trial fixes are pinned: the
  population is the part of the study that agrees with them and children keep them, so the other genes evolve;
- the sampler claims the genome genes only in a genome study: one that records kdzero's space, or whose trials
  hold genes with the sampler's distributions. Other parameters, and the genes of other studies, are drawn by
  the fallback ``RandomSampler``; a study that holds genes with the sampler's distributions and others under a
  gene's name with another distribution is refused with one ``ValueError`` naming them;
- minimised and maximised studies are both ranked best first; multi-objective studies are refused with a
  ``ValueError`` at their first suggestion, before any trial completes (a population needs one order);
- every proposal is drawn from a ``random.Random`` seeded by (seed, trial number), so a seeded run is
  reproducible, ``reseed_rng`` draws a new base seed, and a pickled or deep-copied sampler proposes what the
  original would have. State is plain data plus the callables passed in (``is_valid``, ``ranker``, ``log``):
  pass picklable ones (``ShapeCheck``, ``SurrogateRanker``, module-level functions) to pickle the sampler.
"""
from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from kdzero.genome import GENES, Genome, SearchSpace
from kdzero.search.ranker import Ranker
from kdzero.search.space import distributions, encode, genome_from_params, genome_to_params

MAX_PROPOSALS = 200
DROPPED_OPS_ATTR = "kdzero_dropped_ops"
SPACE_CHOICES_ATTR = "kdzero_space_choices"  # written by study.initialise: the study's genome space
SEED_STRIDE = 1_000_003  # trial rng = Random(base * SEED_STRIDE + trial number)


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


def any_genome(genome: Genome) -> bool:
    """The default validity filter: every genome may be proposed (a module-level function, so it pickles)."""
    return True


class ShapeCheck:
    """Static validity against fixed student/teacher feature shapes, as a picklable ``is_valid`` filter."""

    def __init__(self, student_shapes: Mapping[str, Sequence[int]],
                 teacher_shapes: Mapping[str, Sequence[int]]) -> None:
        self.student_shapes = {name: tuple(shape) for name, shape in student_shapes.items()}
        self.teacher_shapes = {name: tuple(shape) for name, shape in teacher_shapes.items()}

    def __call__(self, genome: Genome) -> bool:
        return genome.is_valid(self.student_shapes, self.teacher_shapes)


def check_single_objective(study: Study) -> None:
    """Refuse a multi-objective study: the population is ranked by one score."""
    if len(study.directions) > 1:
        shown = ", ".join(d.name.lower() for d in study.directions)
        raise ValueError(f"EvolutionSampler ranks its population by one objective, but this study has "
                         f"{len(study.directions)} ({shown}); optimise one score, or use a multi-objective "
                         f"sampler such as optuna.samplers.NSGAIISampler (kdzero's 'ga')")


def _fresh_seed() -> int:
    return random.SystemRandom().randrange(2**32)


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
        self.is_valid = is_valid or any_genome
        self.adaptive_shrink = adaptive_shrink
        self.shrink_min_evidence = shrink_min_evidence
        self.shrink_quantile = shrink_quantile
        self.seed = seed
        self.log = log
        self._distributions = distributions(space)
        self._rng_base = seed if seed is not None else _fresh_seed()
        self._fallback = RandomSampler(seed=seed)

    # --------------------------------------------------------------------------------------- Optuna API
    def reseed_rng(self) -> None:
        """New randomness for genome proposals and the fallback sampler (Optuna calls this per worker thread)."""
        self._rng_base = _fresh_seed()
        self._fallback.reseed_rng()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        """The genome genes in a genome study (see the module docstring), else nothing."""
        check_single_objective(study)
        if not self._is_genome_study(study):
            return {}
        return dict(self._distributions)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        """A value for every parameter of ``search_space``: genes from one evolved genome, others from the
        fallback sampler."""
        check_single_objective(study)
        genes = [name for name, dist in search_space.items() if self._distributions.get(name) == dist]
        params: dict[str, Any] = {}
        if genes:
            pins = self._pins(study, trial, genes)
            rng = random.Random(self._rng_base * SEED_STRIDE + trial.number)
            genome = self.propose(study.get_trials(deepcopy=False), rng, study, pins=pins)
            params = {name: value for name, value in genome_to_params(genome).items() if name in genes}
        return {name: params[name] if name in params
                else self._fallback.sample_independent(study, trial, name, dist)
                for name, dist in search_space.items()}

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        """Parameters outside the relative search space come from the fallback ``RandomSampler``."""
        check_single_objective(study)
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    # ------------------------------------------------------------------------------------- study checks
    def _is_genome_study(self, study: Study) -> bool:
        """True when the study records genes (in kdzero's space attr or its trials) and every record agrees
        with the sampler's distributions; False when it records none that agree. A study whose records agree
        for some genes and not for others cannot be evolved: ValueError naming them."""
        agree: dict[str, list[bool]] = {}
        others: dict[str, set[str]] = {}
        choices = study.user_attrs.get(SPACE_CHOICES_ATTR)
        for gene in GENES if isinstance(choices, dict) else ():
            if gene in choices:
                recorded = CategoricalDistribution(choices[gene])
                agree.setdefault(gene, []).append(recorded == self._distributions[gene])
                others.setdefault(gene, set()).add(repr(recorded))
        for trial in study.get_trials(deepcopy=False):
            for name, dist in trial.distributions.items():
                if name in self._distributions:
                    agree.setdefault(name, []).append(dist == self._distributions[name])
                    others.setdefault(name, set()).add(repr(dist))
        matching = [gene for gene, flags in agree.items() if all(flags)]
        conflicting = [gene for gene in GENES if gene in agree and not all(agree[gene])]
        if matching and conflicting:
            shown = "; ".join(f"{gene} as {' and '.join(sorted(others[gene]))}" for gene in conflicting)
            raise ValueError(f"this study records genome genes with other distributions than the sampler's "
                             f"({shown}; the sampler's {conflicting[0]} is {self._distributions[conflicting[0]]!r}): "
                             f"build the EvolutionSampler over the study's space, or rename the parameters "
                             f"that are not genome genes")
        return bool(matching)

    def _pins(self, study: Study, trial: FrozenTrial, genes: Sequence[str]) -> dict[str, str]:
        """Gene values fixed from outside this sampler: by the trial (``enqueue_trial``) or by a wrapper that
        left them out of the relative search space (asked for them as the trial will be)."""
        pins: dict[str, str] = {}
        fixed = trial.system_attrs.get("fixed_params", {})
        for gene in GENES:
            if gene in fixed:
                pins[gene] = fixed[gene]
            elif gene not in genes and study.sampler is not self:
                try:
                    pins[gene] = study.sampler.sample_independent(study, trial, gene, self._distributions[gene])
                except ValueError as error:  # the wrapper refuses its own value: say which gene and why
                    raise self._bad_pin(gene, error) from None
        for gene, value in pins.items():
            if value not in self._distributions[gene].choices:
                raise self._bad_pin(gene, f"fixed to {value!r}")
        return pins

    def _bad_pin(self, gene: str, detail: object) -> ValueError:
        return ValueError(f"gene {gene} is fixed to a value that is not among the sampler's choices "
                          f"{list(self._distributions[gene].choices)} (gene values are strings): {detail}")

    # ---------------------------------------------------------------------------------------- algorithm
    def population(self, trials: Sequence[FrozenTrial], direction: StudyDirection = StudyDirection.MINIMIZE,
                   pins: Mapping[str, str] | None = None) -> list[tuple[Genome, float]]:
        """The current population: the best ``population_size`` unique complete genomes (best first in
        ``direction``) that agree with the pinned genes ``pins``; pairs of genome and objective value."""
        sign = -1.0 if direction == StudyDirection.MAXIMIZE else 1.0
        return [(genome, sign * loss) for genome, loss in self._ranked(trials, sign, pins or {})]

    def _ranked(self, trials: Sequence[FrozenTrial], sign: float,
                pins: Mapping[str, str]) -> list[tuple[Genome, float]]:
        """The population with each value as a loss (``sign * value``: lower is better), best first."""
        seen: set[str] = set()
        ranked: list[tuple[Genome, float]] = []
        complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
                    and math.isfinite(t.value)]
        for trial in sorted(complete, key=lambda t: (sign * t.value, t.number)):
            genome = trial_genome(trial)
            if genome is None or genome.key in seen or not _agrees(genome, pins):
                continue
            seen.add(genome.key)
            ranked.append((genome, sign * float(trial.value)))
        return ranked[: self.population_size]

    def propose(self, trials: Sequence[FrozenTrial], rng: random.Random, study: Study | None = None, *,
                direction: StudyDirection | None = None, pins: Mapping[str, str] | None = None) -> Genome:
        """The genome for the next trial given the study's ``trials`` (see the module docstring).

        ``direction`` defaults to the study's (minimise without a study); ``pins`` maps genes to the parameter
        values they must keep."""
        pins = dict(pins or {})
        if set(pins) >= set(GENES):
            return genome_from_params(pins)
        if direction is None:
            direction = study.direction if study is not None else StudyDirection.MINIMIZE
        sign = -1.0 if direction == StudyDirection.MAXIMIZE else 1.0
        taken = {key for key in (trial_key(t) for t in trials) if key}
        space = self._pinned(self.current_space(trials, study, direction=direction), pins)
        population = self._ranked(trials, sign, pins)
        for _ in range(MAX_PROPOSALS):
            if len(population) < self.population_size:
                candidate = self._random_valid(rng, space, taken)
            else:
                candidate = self._child(population, rng, space)
                if self.ranker is not None and candidate is not None:
                    rival = self._random_valid(rng, space, taken)
                    history = [(g, sign * float(t.value)) for t in trials if t.state == TrialState.COMPLETE
                               and t.value is not None and (g := trial_genome(t)) is not None]
                    candidate = self.ranker(candidate, rival, history)
            if candidate is not None and candidate.key not in taken and self.is_valid(candidate):
                return candidate
        return self._random_valid(rng, space, taken) or Genome.random(rng, space)

    def _pinned(self, space: SearchSpace, pins: Mapping[str, str]) -> SearchSpace:
        """``space`` with each pinned gene reduced to its pinned value."""
        for gene, value in pins.items():
            space = space.without(gene, [v for v in self.space.choices(gene) if encode(v) != value])
        return space

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

    def current_space(self, trials: Sequence[FrozenTrial], study: Study | None = None, *,
                      direction: StudyDirection = StudyDirection.MINIMIZE) -> SearchSpace:
        """The space proposals are drawn from: ``space`` minus adaptively dropped transforms (if enabled)."""
        if not self.adaptive_shrink:
            return self.space
        dropped = self.dropped_transforms(trials, direction)
        space = self.space
        for slot in (1, 2, 3):
            space = space.without(f"transform{slot}", dropped)
        if study is not None and dropped and sorted(dropped) != study.user_attrs.get(DROPPED_OPS_ATTR):
            study.set_user_attr(DROPPED_OPS_ATTR, sorted(dropped))
            if self.log is not None:
                self.log(f"adaptive shrinkage: dropped {', '.join(sorted(dropped))}")
        return space

    def dropped_transforms(self, trials: Sequence[FrozenTrial],
                           direction: StudyDirection = StudyDirection.MINIMIZE) -> set[str]:
        """Transforms with enough evidence that their genomes are rejected or rank in the bottom quantile
        (the worst values in ``direction``)."""
        sign = -1.0 if direction == StudyDirection.MAXIMIZE else 1.0
        finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        losses = sorted(sign * t.value for t in finished if t.state == TrialState.COMPLETE and t.value is not None
                        and math.isfinite(t.value))
        if not losses:
            return set()
        cutoff = losses[min(len(losses) - 1, int(len(losses) * (1 - self.shrink_quantile)))]
        evidence: dict[str, list[bool]] = {}
        for trial in finished:
            genome = trial_genome(trial)
            if genome is None:
                continue
            bad = trial.state == TrialState.PRUNED or trial.value is None or sign * trial.value >= cutoff
            for name in set(genome.transforms) - {"no"}:
                evidence.setdefault(name, []).append(bad)
        return {name for name, flags in evidence.items()
                if len(flags) >= self.shrink_min_evidence and all(flags)}


def _agrees(genome: Genome, pins: Mapping[str, str]) -> bool:
    return all(encode(genome.gene(gene)) == value for gene, value in pins.items())


__all__ = ["DROPPED_OPS_ATTR", "EvolutionSampler", "ShapeCheck", "any_genome", "check_single_objective",
           "trial_genome", "trial_key"]
