"""The student search space: architectures of the allowed families within a ``Budget``, sampled and mutated."""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from kdzero.errors import ConfigError, suggest
from kdzero.models.searchable import FAMILIES, StudentArch


@dataclass(frozen=True)
class SearchSpace:
    """The students a search may visit: each gene's choices, per family.

    ResNets have ``stages`` stages, each with blocks in ``depths`` and width in ``widths`` (chosen freely per
    stage); WRNs have depth in ``wrn_depths`` and widening factor in ``wrn_widens``. Mutation changes one gene
    within its choices and never changes the family.
    """

    depths: tuple[int, ...] = tuple(range(1, 10))
    widths: tuple[int, ...] = (8, 16, 24, 32, 40, 48, 56, 64)
    stages: int = 3
    wrn_depths: tuple[int, ...] = (10, 16, 22, 28, 34, 40)
    wrn_widens: tuple[int, ...] = (1, 2, 3, 4)
    families: tuple[str, ...] = FAMILIES

    def __post_init__(self) -> None:
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown or not self.families:
            raise ConfigError(f"unknown student family {unknown[0] if unknown else ''!r}; "
                              f"{suggest(unknown[0] if unknown else '', FAMILIES)}")

    def gene_choices(self, family: str) -> tuple[tuple[int, ...], ...]:
        """The choices of every gene of ``family``, in gene order."""
        if family == "resnet":
            return (self.depths,) * self.stages + (self.widths,) * self.stages
        return (self.wrn_depths, self.wrn_widens)

    def contains(self, arch: StudentArch) -> bool:
        """Whether every gene of ``arch`` is one of the space's choices."""
        if arch.family not in self.families:
            return False
        choices = self.gene_choices(arch.family)
        return len(arch.genes) == len(choices) and all(g in c for g, c in zip(arch.genes, choices))

    def random(self, rng: random.Random) -> StudentArch:
        """A uniformly random family, then uniformly random genes."""
        family = rng.choice(self.families)
        return StudentArch(family, tuple(rng.choice(c) for c in self.gene_choices(family)))

    def neighbours(self, arch: StudentArch) -> list[StudentArch]:
        """Every architecture that differs from ``arch`` in exactly one gene (its possible mutations)."""
        return [arch.with_gene(i, value) for i, choices in enumerate(self.gene_choices(arch.family))
                for value in choices if value != arch.genes[i]]

    def mutate(self, arch: StudentArch, rng: random.Random,
               accept: Callable[[StudentArch], bool] = lambda _a: True) -> StudentArch | None:
        """A uniformly random accepted one-gene mutation of ``arch`` (a copy; the rest inherited), or None."""
        candidates = self.neighbours(arch)
        rng.shuffle(candidates)
        return next((child for child in candidates if accept(child)), None)
