"""The genome as Optuna parameters: one flat, string-valued categorical per gene, with fixed choices per study.

String values keep every storage backend and optuna-dashboard happy and make the study readable on its own:
``temperature`` is "4", ``magnitude`` "0.1", written as in the genome text (``format_number``), so a study
created before off-grid values existed ("4", "0.01", ...) has exactly the same choices today. The choices come
from a ``SearchSpace`` fixed when the study is created (the full space, the static shrunk space, or a small
named space such as the KD grid).
"""
from __future__ import annotations

from collections.abc import Mapping

from optuna.distributions import CategoricalDistribution

from kdzero.errors import ConfigError, suggest
from kdzero.genome import FULL_SPACE, GENES, SHRUNK_SPACE, Genome, SearchSpace, format_number, parse_number

# Hinton KD's grid over temperature x weight: the seed framework's ready-made grid search.
KD_GRID_SPACE = SearchSpace(inputs=("logit",), slots=(("no",), ("no",), ("no",)), distances=("kl",),
                            weights=("no",))
SPACES: dict[str, SearchSpace] = {"full": FULL_SPACE, "shrunk": SHRUNK_SPACE, "kd-grid": KD_GRID_SPACE}


def named_space(name: str) -> SearchSpace:
    """The search space called ``name`` (full, shrunk, kd-grid)."""
    if name not in SPACES:
        raise ConfigError(f"unknown search space {name!r}; {suggest(name, SPACES)}")
    return SPACES[name]


def encode(value) -> str:
    """A gene value as its parameter string (numbers in the genome text's canonical form)."""
    return format_number(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _temperature(text: str) -> float:
    return parse_number("T" + str(text), "T", "temperature")


def _magnitude(text: str) -> float:
    return float(parse_number("x" + str(text), "x", "magnitude"))


def distributions(space: SearchSpace) -> dict[str, CategoricalDistribution]:
    """Parameter name -> categorical distribution, one per gene, in ``GENES`` order."""
    return {gene: CategoricalDistribution([encode(v) for v in space.choices(gene)]) for gene in GENES}


def genome_to_params(genome: Genome) -> dict[str, str]:
    """The trial parameters of a genome."""
    return {gene: encode(genome.gene(gene)) for gene in GENES}


def genome_from_params(params: Mapping[str, str]) -> Genome:
    """The genome of a trial's parameters (inverse of ``genome_to_params``)."""
    missing = [gene for gene in GENES if gene not in params]
    if missing:
        raise ConfigError(f"trial parameters lack {', '.join(missing)}; is this a kdzero study?")
    return Genome(params["input"], (params["transform1"], params["transform2"], params["transform3"]),
                  params["distance"], params["weight"], _temperature(params["temperature"]),
                  _magnitude(params["magnitude"]))


def suggest_genome(trial) -> Genome:
    """Ask an Optuna trial for every gene (the sampler decides) and build the genome."""
    dists = trial.study.user_attrs.get("kdzero_space_choices")
    if dists is None:
        raise ConfigError("this study was not created by kdzero (no search space recorded)")
    params = {gene: trial.suggest_categorical(gene, dists[gene]) for gene in GENES}
    return genome_from_params(params)


def space_choices(space: SearchSpace) -> dict[str, list[str]]:
    """JSON-able choices per gene, stored in the study so every worker uses the same space."""
    return {gene: [encode(v) for v in space.choices(gene)] for gene in GENES}


def space_from_choices(choices: Mapping[str, list[str]]) -> SearchSpace:
    """Inverse of ``space_choices``."""
    return SearchSpace(
        inputs=tuple(choices["input"]),
        slots=tuple(tuple(choices[f"transform{i}"]) for i in (1, 2, 3)),
        distances=tuple(choices["distance"]),
        weights=tuple(choices["weight"]),
        temperatures=tuple(_temperature(v) for v in choices["temperature"]),
        magnitudes=tuple(_magnitude(v) for v in choices["magnitude"]),
    )
