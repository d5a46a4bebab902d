"""Aging (regularised) evolution over student architectures (Real et al. 2019), scored without training."""
from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from kdzero.diswot.space import SearchSpace
from kdzero.errors import ConfigError
from kdzero.models.searchable import StudentArch


@dataclass
class Member:
    """An evaluated architecture: its DisWOT score (higher is better), when it was born and how.

    ``origin`` is ``random`` (initial population, or a cycle whose parent had no admissible mutation) or
    ``mutation`` (then ``parent`` is the parent's text); ``born`` counts births from 0.
    """

    arch: StudentArch
    score: float
    born: int
    origin: str
    parent: str | None = None


@dataclass
class EvolutionResult:
    """Every birth in order (``history``), the final population (oldest first) and the number of scorings."""

    history: list[Member]
    population: list[Member]
    scored: int

    def best(self, k: int = 1) -> list[Member]:
        """The ``k`` best distinct architectures ever born, highest score first."""
        unique: dict[StudentArch, Member] = {}
        for member in self.history:
            unique.setdefault(member.arch, member)
        return sorted(unique.values(), key=lambda m: (-m.score, m.born))[:k]


def aging_evolution(
    space: SearchSpace,
    score: Callable[[StudentArch], float],
    *,
    population: int = 20,
    cycles: int = 100,
    sample: int = 5,
    fits: Callable[[StudentArch], bool] = lambda _a: True,
    rng: random.Random | None = None,
    on_birth: Callable[[Member, bool], None] | None = None,
) -> EvolutionResult:
    """Aging (regularised) evolution, Real et al. 2019, maximising ``score`` over ``space`` without training.

    Fill the population with ``population`` distinct random architectures that ``fits``; then, each cycle, draw
    ``sample`` members at random, take the one with the HIGHEST score as parent, copy it with one gene mutated
    (admissible: fits and not already in the population), add the child and remove the OLDEST member. A parent
    with no admissible mutation makes the cycle draw a fresh random architecture instead. An architecture is
    scored once (``score`` is called once per distinct architecture); ``on_birth(member, fresh)`` is told of
    every birth, ``fresh`` when it was just scored.
    """
    for name, value in (("population", population), ("sample", sample)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    if cycles < 0:
        raise ConfigError(f"cycles must be at least 0, got {cycles}")
    rng = rng or random.Random(0)
    scores: dict[StudentArch, float] = {}
    alive: deque[Member] = deque()
    history: list[Member] = []

    def admissible(arch: StudentArch) -> bool:
        return all(m.arch != arch for m in alive) and fits(arch)

    def random_arch() -> StudentArch:
        for _ in range(2000):
            arch = space.random(rng)
            if admissible(arch):
                return arch
        raise ConfigError(f"found no new architecture within the budget after 2000 random draws (population "
                          f"{len(alive)}); raise the budget or lower --population")

    def birth(arch: StudentArch, origin: str, parent: StudentArch | None) -> None:
        fresh = arch not in scores
        if fresh:
            scores[arch] = float(score(arch))
        member = Member(arch, scores[arch], len(history), origin, str(parent) if parent else None)
        alive.append(member)
        history.append(member)
        if on_birth is not None:
            on_birth(member, fresh)

    while len(alive) < population:
        birth(random_arch(), "random", None)
    for _ in range(cycles):
        contenders = rng.sample(list(alive), min(sample, len(alive)))
        parent = max(contenders, key=lambda m: m.score)
        child = space.mutate(parent.arch, rng, admissible)
        if child is None:
            birth(random_arch(), "random", None)
        else:
            birth(child, "mutation", parent.arch)
        alive.popleft()
    return EvolutionResult(history, list(alive), len(scores))
