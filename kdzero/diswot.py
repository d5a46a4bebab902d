"""DisWOT: training-free search for the student architecture that suits a teacher (Dong et al., CVPR 2023).

From ONE batch, with the teacher (pretrained or random) and each candidate student at initialisation, DisWOT
measures how alike the two networks already see the data, and keeps the student most like its teacher:

* relation similarity: the batch Gram matrix of the pre-pooling feature map ``feat`` flattened to (N, C*H*W),
  row-L2-normalised as in similarity-preserving KD (``G = rownorm(F F^T)``, N x N); ``-||G_s - G_t||_F^2 / N^2``.
  Any widths and spatial sizes compare, since only sample-to-sample similarities are kept.
* semantic similarity: the gradient of the batch cross-entropy with respect to the classifier weight (K x D),
  the quantity Grad-CAM is built from; its class Gram matrix ``rownorm(g g^T)`` (K x K) is compared as
  ``-||G_s - G_t||_F^2 / K^2``. The K x K form is the one that compares when teacher and student widths D
  differ; it needs the same K classes on both sides, and a mismatch is an error, never a silent comparison.
* DisWOT score = relation + semantic, weight 1 each, as the paper sums them. Higher is better (0 = identical).

Studies follow the kdzero convention that lower is better: a student's trial value is ``-score``.

    score = diswot_score(teacher, create_student("resnet[3,3,3]x[16,32,64]", 10), images, labels)
    score.score, score.relation, score.semantic

The search space is CIFAR ResNets with free blocks and width per stage (``resnet[3,3,3]x[16,32,64]``) and Wide
ResNets (``wrn_d16_w2``), filtered by a parameter and FLOPs budget, explored by aging (regularised) evolution
(Real et al. 2019) with no training at all. The published code's bugs are avoided on purpose: any batch size
works; only the last feature map is used, whatever the network; a class-count mismatch raises; the tournament
keeps the HIGHEST DisWOT score; a mutation copies its parent and changes exactly one gene; the population never
holds two copies of one architecture.
"""
from __future__ import annotations

import contextlib
import math
import random
import re
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kdzero.errors import ConfigError, KdzeroError, suggest
from kdzero.features import Features
from kdzero.models.searchable import FAMILIES, StudentArch, create_student  # noqa: F401 - part of this module's API

# ---------------------------------------------------------------------------------------------------- metrics


def batch_gram(feat: torch.Tensor) -> torch.Tensor:
    """The row-L2-normalised batch Gram matrix (N, N) of ``feat`` flattened to (N, -1): SP's similarity."""
    flat = feat.flatten(1).float()
    return F.normalize(flat @ flat.t(), dim=1)


def class_gram(grad: torch.Tensor) -> torch.Tensor:
    """The row-L2-normalised class Gram matrix (K, K) of a classifier-weight gradient (K, D)."""
    grad = grad.float()
    return F.normalize(grad @ grad.t(), dim=1)


def classifier_grad(emb: torch.Tensor, logit: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """d CE / d W (K, D) for a linear classifier ``logit = emb W^T + b`` and the batch-mean cross-entropy.

    This is what one CE backward pass leaves in the classifier's ``weight.grad``, in closed form:
    ``(softmax(logit) - onehot(labels))^T emb / N``. It needs no autograd graph, so teachers with frozen
    parameters and scoring under ``torch.no_grad`` work alike.
    """
    probs = torch.softmax(logit.float(), dim=1)
    probs[torch.arange(labels.shape[0], device=labels.device), labels] -= 1.0
    return probs.t() @ emb.float() / labels.shape[0]


def _gram_similarity(g_s: torch.Tensor, g_t: torch.Tensor) -> torch.Tensor:
    """``-||g_s - g_t||_F^2 / n^2`` for two n x n matrices."""
    n = g_s.shape[0]
    return -(g_s - g_t).pow(2).sum() / (n * n)


def relation_similarity(feat_s: torch.Tensor, feat_t: torch.Tensor) -> torch.Tensor:
    """DisWOT's relation score of student and teacher feature maps of one batch (higher is better, max 0).

    Widths and spatial sizes may differ; the batch must be the same images (same N, at least 2).
    """
    if feat_s.shape[0] != feat_t.shape[0]:
        raise ConfigError(f"relation similarity needs the same batch on both sides, got {feat_s.shape[0]} student "
                          f"and {feat_t.shape[0]} teacher samples")
    if feat_s.shape[0] < 2:
        raise ConfigError("relation similarity needs a batch of at least 2 images")
    return _gram_similarity(batch_gram(feat_s), batch_gram(feat_t))


def semantic_similarity(grad_s: torch.Tensor, grad_t: torch.Tensor) -> torch.Tensor:
    """DisWOT's semantic score of student and teacher classifier-weight gradients (K x D_s, K x D_t; max 0).

    Raises KdzeroError when the class counts differ: class Gram matrices of different class sets do not compare.
    """
    k_s, k_t = grad_s.shape[0], grad_t.shape[0]
    if k_s != k_t:
        raise KdzeroError(f"teacher has {k_t} classes, student {k_s}: semantic similarity needs the same class set")
    return _gram_similarity(class_gram(grad_s), class_gram(grad_t))


class DisWOTScore(NamedTuple):
    """A student's DisWOT score (relation + semantic; higher is better, 0 is a perfect match) and its parts."""

    score: float
    relation: float
    semantic: float


class TeacherReference(NamedTuple):
    """The teacher's side of the metric on one batch, computed once per search: batch and class Gram matrices."""

    relation_gram: torch.Tensor
    class_gram: torch.Tensor
    num_classes: int


@contextlib.contextmanager
def _batch_statistics(model: nn.Module) -> Iterator[None]:
    """Evaluation mode except BatchNorm, which normalises with the batch's statistics (as zero-cost proxies do at
    initialisation) with momentum 0 so that its running statistics stay untouched; restored afterwards."""
    was_training = model.training
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.train()
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)


def _forward(model: nn.Module, images: torch.Tensor) -> Features:
    out = model(images)
    if not isinstance(out, Features):
        raise ConfigError(f"{type(out).__name__} is not Features: wrap the model with kdzero.models.wrap_model")
    return out


@torch.no_grad()
def teacher_reference(teacher: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> TeacherReference:
    """The teacher's Gram matrices on the batch; the teacher runs in evaluation mode (its own statistics)."""
    was_training = teacher.training
    teacher.eval()
    try:
        out = _forward(teacher, images)
    finally:
        teacher.train(was_training)
    grad = classifier_grad(out.emb, out.logit, labels)
    return TeacherReference(batch_gram(out.feat), class_gram(grad), out.logit.shape[1])


@torch.no_grad()
def score_student(reference: TeacherReference, student: nn.Module, images: torch.Tensor,
                  labels: torch.Tensor) -> DisWOTScore:
    """The DisWOT score of ``student`` against a precomputed teacher reference on the same batch.

    The student runs with batch statistics in its BatchNorm layers (``_batch_statistics``): at initialisation
    its running statistics mean nothing.
    """
    if images.shape[0] < 2:
        raise ConfigError("DisWOT needs a batch of at least 2 images")
    with _batch_statistics(student):
        out = _forward(student, images)
    grad = classifier_grad(out.emb, out.logit, labels)
    if grad.shape[0] != reference.num_classes:
        raise KdzeroError(f"teacher has {reference.num_classes} classes, student {grad.shape[0]}: semantic "
                          "similarity needs the same class set")
    relation = float(_gram_similarity(batch_gram(out.feat), reference.relation_gram))
    semantic = float(_gram_similarity(class_gram(grad), reference.class_gram))
    return DisWOTScore(relation + semantic, relation, semantic)


def diswot_score(teacher: nn.Module, student: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> DisWOTScore:
    """DisWOT score of ``student`` for ``teacher`` on one batch of normalised ``images`` and their ``labels``.

    Both models return ``Features``; any batch size of at least 2; widths and resolutions may differ; the class
    counts must agree (KdzeroError otherwise).
    """
    return score_student(teacher_reference(teacher, images, labels), student, images, labels)


# ----------------------------------------------------------------------------------------------- architectures

# ------------------------------------------------------------------------------------------------------ costs


class Cost(NamedTuple):
    """Parameter count and FLOPs (multiply-accumulates of convolutions and linear layers, one image)."""

    params: int
    flops: int


def count_flops(model: nn.Module, in_chans: int, image_size: tuple[int, int]) -> int:
    """Multiply-accumulates of every Conv2d and Linear for one image of ``image_size``, counted by forward hooks.

    The CIFAR papers' convention ("FLOPs" = MACs, BN/ReLU/additions ignored): resnet20 at 32x32 is ~41M.
    """
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        total += output[0].numel() * per_output

    def linear_hook(module: nn.Linear, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += module.in_features * module.out_features

    handles = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
               for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters(), torch.empty(0)).device  # a teacher already moved to the GPU
            model(torch.zeros(1, in_chans, *image_size, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total


def model_cost(model: nn.Module, in_chans: int, image_size: tuple[int, int]) -> Cost:
    """Parameters and FLOPs of any model."""
    return Cost(sum(p.numel() for p in model.parameters()), count_flops(model, in_chans, image_size))


def arch_cost(arch: StudentArch, num_classes: int, in_chans: int, image_size: tuple[int, int]) -> Cost:
    """Parameters and FLOPs of a student architecture in closed form, without building it.

    The budget filter runs on every random draw and every candidate mutation, where building the network would
    cost more than scoring it; ``model_cost(arch.build(...))`` gives the same numbers (a test checks it).
    """
    height, width = image_size
    params = flops = 0

    def conv(c_in: int, c_out: int, kernel: int, stride: int, bn: bool) -> None:
        nonlocal params, flops, height, width
        height, width = -(-height // stride), -(-width // stride)  # ceil: padding keeps "same" at stride 1
        params += c_in * c_out * kernel * kernel + (2 * c_out if bn else 0)
        flops += height * width * c_out * c_in * kernel * kernel

    if arch.family == "resnet":
        half = len(arch.genes) // 2
        depths, widths = arch.genes[:half], arch.genes[half:]
        conv(in_chans, widths[0], 3, 1, bn=True)
        planes = widths[0]
        for stage, (blocks, out) in enumerate(zip(depths, widths)):
            for i in range(blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                if stride != 1 or planes != out:  # the 1x1 conv + BN shortcut, at the block's output size
                    conv(planes, out, 1, stride, bn=True)
                    stride = 1
                conv(planes, out, 3, stride, bn=True)
                conv(out, out, 3, 1, bn=True)
                planes = out
    else:
        depth, widen = arch.genes
        conv(in_chans, 16, 3, 1, bn=False)
        planes = 16
        for stage, out in enumerate((16 * widen, 32 * widen, 64 * widen)):
            for i in range((depth - 4) // 6):
                stride = 2 if stage > 0 and i == 0 else 1
                params += 2 * planes  # the pre-activation BN
                if planes != out:
                    conv(planes, out, 1, stride, bn=False)
                    stride = 1
                conv(planes, out, 3, stride, bn=True)
                conv(out, out, 3, 1, bn=False)
                planes = out
        params += 2 * planes  # the final BN
    return Cost(params + planes * num_classes + num_classes, flops + planes * num_classes)


_SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


def parse_count(text: str | float | int, what: str = "count") -> int:
    """``0.3M`` -> 300000, ``40M``, ``250k``, ``1.2G`` or a plain number; ConfigError otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmg]?)\s*", str(text).lower())
    if not match or float(match[1]) <= 0:
        raise ConfigError(f"{what} must be a positive number like 0.3M, 40M or 250k, got {text!r}")
    return round(float(match[1]) * _SUFFIXES[match[2]])


DEFAULT_BUDGET_RATIO = 0.5
"""A student is bounded by this fraction of its teacher's parameters AND FLOPs unless the user says otherwise:
a student worth distilling into is at least twice smaller and twice cheaper than its teacher."""


def parse_limit(text: str | float | int, reference: int, what: str = "budget") -> int:
    """An upper bound: ``0.3M``/``40M``/``250k`` absolute, or ``0.5x`` as a fraction of ``reference`` (the
    teacher's own count); ConfigError otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*x\s*", str(text).lower())
    if match:
        ratio = float(match[1])
        if ratio <= 0:
            raise ConfigError(f"{what} must be a positive fraction of the teacher like 0.5x, got {text!r}")
        return max(1, math.floor(ratio * reference))
    try:
        return parse_count(text, what)
    except ConfigError:
        raise ConfigError(f"{what} must be a count like 0.3M, 40M or 250k, or a fraction of the teacher like "
                          f"0.5x, got {text!r}") from None


def format_count(value: int) -> str:
    """300000 -> ``0.30M``, 40800000 -> ``40.80M``, 2500 -> ``2.5k``."""
    if value >= 10**6:
        return f"{value / 10**6:.2f}M"
    return f"{value / 10**3:.1f}k" if value >= 10**3 else str(value)


@dataclass(frozen=True)
class Budget:
    """Upper bounds on a student's parameters and FLOPs (None: unbounded)."""

    params: int | None = None
    flops: int | None = None

    def fits(self, cost: Cost) -> bool:
        """Whether ``cost`` is within both bounds."""
        return (self.params is None or cost.params <= self.params) and (self.flops is None or cost.flops <= self.flops)

    def __str__(self) -> str:
        parts = [f"params <= {format_count(self.params)}" if self.params is not None else "",
                 f"FLOPs <= {format_count(self.flops)}" if self.flops is not None else ""]
        return ", ".join(p for p in parts if p) or "unbounded"

    def relative_to(self, teacher: Cost) -> str:
        """The bounds with their fraction of the teacher's cost: ``params <= 0.14M (0.50x teacher), ...``."""
        parts = [f"{name} <= {format_count(bound)} ({bound / of:.2f}x teacher)"
                 for name, bound, of in (("params", self.params, teacher.params), ("FLOPs", self.flops, teacher.flops))
                 if bound is not None and of > 0]
        return ", ".join(parts) or "unbounded"


# ------------------------------------------------------------------------------------------------ search space


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


# --------------------------------------------------------------------------------------------------- evolution


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


# ------------------------------------------------------------------------------------------ the student search

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
