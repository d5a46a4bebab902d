"""The student search as a run: an Optuna study of DisWOT-scored students, resumable, read by the leaderboard."""
from __future__ import annotations

import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdzero.diswot.costs import Budget, Cost, arch_cost
from kdzero.diswot.evolution import EvolutionResult, Member, aging_evolution
from kdzero.diswot.metrics import score_student, teacher_reference
from kdzero.diswot.space import SearchSpace
from kdzero.errors import ConfigError, KdzeroError
from kdzero.models.searchable import StudentArch

CONFIG_ATTR = "kdzero_student_search"
"""Study user attr holding a student search's settings; a re-run must match them to resume."""


@dataclass
class StudentResult:
    """One scored student as stored in the study: DisWOT score and parts, cost, scoring seconds, origin."""

    arch: str
    score: float
    relation: float
    semantic: float
    params: int
    flops: int
    seconds: float
    origin: str
    parent: str | None = None

    def user_attrs(self) -> dict[str, Any]:
        """The trial's user attrs (``genome`` is the architecture text, as the leaderboard expects)."""
        return {"genome": self.arch, "diswot": self.score, "relation": self.relation, "semantic": self.semantic,
                "params": self.params, "flops": self.flops, "seconds": self.seconds, "origin": self.origin,
                "parent": self.parent}


@dataclass
class StudentSearch:
    """A DisWOT student search for one teacher on one batch, stored in the Optuna study of ``run_dir``.

    ``images`` (normalised) and ``labels`` are the one batch every student is scored on. Each distinct
    architecture becomes one COMPLETE trial valued ``-score`` (lower is better, the kdzero convention) with user
    attrs genome (the architecture text), diswot, relation, semantic, params, flops, seconds, origin, parent.
    Student weights are seeded from ``seed`` and the architecture text, so a score does not depend on the order
    of the search; re-running with the same settings reuses the stored scores and continues.
    """

    teacher: nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    in_chans: int
    image_size: tuple[int, int]
    run_dir: Path
    budget: Budget = field(default_factory=Budget)
    space: SearchSpace = field(default_factory=SearchSpace)
    seed: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.reference = teacher_reference(self.teacher, self.images, self.labels)
        if self.reference.num_classes != self.num_classes:
            raise KdzeroError(f"teacher has {self.reference.num_classes} classes, student {self.num_classes}: "
                              "semantic similarity needs the same class set")
        self.study = self._open_study()
        self.results: dict[str, StudentResult] = {}
        for trial in self.study.get_trials(deepcopy=False):
            attrs = trial.user_attrs
            if trial.value is not None and "genome" in attrs:
                self.results[attrs["genome"]] = StudentResult(
                    arch=attrs["genome"], score=attrs["diswot"], relation=attrs["relation"],
                    semantic=attrs["semantic"], params=attrs["params"], flops=attrs["flops"],
                    seconds=attrs["seconds"], origin=attrs["origin"], parent=attrs.get("parent"))
        self.stored = set(self.results)

    def _open_study(self):
        from kdzero.search.study import create_or_load_study, make_storage

        name = self.run_dir.name
        storage = make_storage(f"sqlite:///{(self.run_dir / 'study.db').as_posix()}")
        study = create_or_load_study(storage, name, sampler=None)
        settings = {**self.settings, "budget": str(self.budget), "seed": self.seed, "batch": len(self.labels),
                    "space": repr(self.space)}
        stored = study.user_attrs.get(CONFIG_ATTR)
        if stored is None:
            study.set_user_attr(CONFIG_ATTR, settings)
        elif stored != settings:
            changed = sorted(k for k in settings.keys() | stored.keys() if settings.get(k) != stored.get(k))
            raise ConfigError(f"run {self.run_dir} was searched with other settings ({', '.join(changed)}); "
                              "use another --name or the same options to resume")
        return study

    def cost(self, arch: StudentArch) -> Cost:
        """Parameters and FLOPs of ``arch`` for this dataset."""
        return arch_cost(arch, self.num_classes, self.in_chans, tuple(self.image_size))

    def fits(self, arch: StudentArch) -> bool:
        """Whether ``arch`` is within the budget."""
        return self.budget.fits(self.cost(arch))

    def evaluate(self, arch: StudentArch) -> StudentResult:
        """Score ``arch`` at its seeded initialisation, or return its known result."""
        text = str(arch)
        if text not in self.results:
            began = time.perf_counter()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed * 1_000_003 + zlib.crc32(text.encode()))
                student = arch.build(self.num_classes, self.in_chans).to(self.images.device)
            value = score_student(self.reference, student, self.images, self.labels)
            cost = self.cost(arch)
            self.results[text] = StudentResult(text, value.score, value.relation, value.semantic, cost.params,
                                               cost.flops, round(time.perf_counter() - began, 4), "random")
        return self.results[text]

    def store(self, member: Member) -> None:
        """Record the first birth of ``member``'s architecture as a COMPLETE trial valued ``-score``."""
        import optuna

        result = self.evaluate(member.arch)
        if result.arch in self.stored:
            return
        result.origin, result.parent = member.origin, member.parent
        self.study.add_trial(optuna.trial.create_trial(value=-result.score, user_attrs=result.user_attrs()))
        self.stored.add(result.arch)

    def run(self, *, population: int = 20, cycles: int = 100, sample: int = 5,
            on_birth: Callable[[Member, bool], None] | None = None) -> EvolutionResult:
        """Aging evolution of students under the budget, every distinct one scored once and stored.

        ``on_birth(member, fresh)`` is told of every birth after it is stored (for progress displays).
        """
        def birth(member: Member, fresh: bool) -> None:
            self.store(member)
            if on_birth is not None:
                on_birth(member, fresh)

        return aging_evolution(self.space, lambda arch: self.evaluate(arch).score, population=population,
                               cycles=cycles, sample=sample, fits=self.fits, rng=random.Random(self.seed),
                               on_birth=birth)
