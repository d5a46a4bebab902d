"""Samplers by name, all over the same genome parameters: KD-Zero evolution and Optuna's own.

``evolution`` is ours (``EvolutionSampler``); ``tpe``, ``random``, ``grid`` and ``ga`` (NSGA-II used as a
single-objective genetic algorithm) are Optuna's. What is tested: every one runs the same genome study and keeps
to its space (tests/test_search.py); the evolution sampler, built here as the CLI builds it and with its
defaults, passes Optuna's own conformance battery (``optuna.testing.pytest_samplers``: the basic, relative and
single-objective-only cases, tests/test_sampler_contract.py), which Optuna runs on its samplers itself. The
evolution sampler is single-objective: it refuses a multi-objective study with a ValueError; ``ga`` is the one to
use for several objectives.
"""
from __future__ import annotations

from collections.abc import Callable

import optuna

from kdzero.errors import ConfigError, suggest
from kdzero.genome import Genome, SearchSpace
from kdzero.search.evolution import EvolutionSampler
from kdzero.search.ranker import Ranker, SurrogateRanker
from kdzero.search.space import space_choices

SAMPLERS: tuple[str, ...] = ("evolution", "tpe", "random", "grid", "ga")
MAX_GRID = 10_000


def create_sampler(name: str, space: SearchSpace, *, seed: int | None = 0, population_size: int = 20,
                   guided: bool = True, ranker: Ranker | None = None, adaptive_shrink: bool = False,
                   is_valid: Callable[[Genome], bool] | None = None,
                   log: Callable[[str], None] | None = None) -> optuna.samplers.BaseSampler:
    """The sampler called ``name`` over ``space``.

    ``guided`` turns on guided selection with ``ranker`` (default: the surrogate); ``adaptive_shrink`` and
    ``is_valid`` apply to the evolution sampler only (Optuna's samplers propose invalid genomes too, which the
    proxy rejects statically at no training cost). The evolution sampler pickles when ``is_valid``, ``ranker``
    and ``log`` do (``ShapeCheck``, ``SurrogateRanker`` and module-level functions do; lambdas do not).
    """
    if name == "evolution":
        return EvolutionSampler(space, population_size=population_size, seed=seed, is_valid=is_valid,
                                ranker=(ranker or SurrogateRanker()) if guided else None,
                                adaptive_shrink=adaptive_shrink, log=log)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, population_size))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "ga":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(2, population_size))
    if name == "grid":
        if space.size() > MAX_GRID:
            raise ConfigError(f"grid search over {space.size():,} genomes is too large (max {MAX_GRID:,}); use "
                              f"--space kd-grid, or another sampler")
        return optuna.samplers.GridSampler(space_choices(space), seed=seed)
    raise ConfigError(f"unknown sampler {name!r}; {suggest(name, SAMPLERS)}")
