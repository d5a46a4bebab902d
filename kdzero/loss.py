"""UnifiedLoss: a genome compiled into a drop-in ``nn.Module`` — the one place where the ops meet.

    loss_fn = UnifiedLoss(Genome.parse("logit[no,no,no]|kl|no|T4|x1"))
    value = loss_fn(student=student_features, teacher=teacher_features, target=labels)

Steps, for the knowledge input the genome names:
1. take that tensor from both ``Features``; the teacher's is detached (gradient reaches the student only);
2. align shapes: a learned connector on the student side when channel/embedding widths differ (1x1 conv + BN for
   maps, linear for embeddings), adaptive average pooling to the smaller map when spatial sizes differ and the
   transforms would not compare them as they are (``pools_spatially``: not before a batch or channel Gram);
3. apply the three transforms in order, identically to both sides, sharing any random draw;
4. divide both by the temperature;
5. the distance gives one value per sample;
6. the weighting (which may read both models' logits and the labels) turns them into a scalar;
7. multiply by magnitude x temperature^2 (Hinton's gradient-scale correction).

A connector has parameters the optimiser must see: pass the per-sample shapes at construction
(``UnifiedLoss(g, student_shapes=..., teacher_shapes=...)``) or call ``loss_fn.build(student, teacher)`` with one
batch before creating the optimiser. ``loss_fn.parameters()`` then yields them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdzero.errors import GenomeError, KdzeroError
from kdzero.features import Features
from kdzero.genome import Genome
from kdzero.ops import DISTANCES, TRANSFORMS, WEIGHTS, OpContext

Shapes = Mapping[str, Sequence[int]]


def feature_shapes(features: Features) -> dict[str, tuple[int, ...]]:
    """Per-sample shapes of a Features batch, the form validation and connectors take."""
    return {name: tuple(tensor.shape[1:]) for name, tensor in zip(Features._fields, features)}


class ConnectorBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d that stays defined when a training batch holds one value per channel (one sample of 1x1
    maps): batch statistics need at least two values, so such a batch is normalised with the running
    statistics instead (as in evaluation) and leaves them unchanged. Every other batch behaves exactly like
    ``nn.BatchNorm2d``; parameter and buffer names are the same, so state dicts move both ways."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] <= 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training=False,
                                eps=self.eps)
        return super().forward(x)


def map_connector(student_width: int, teacher_width: int) -> nn.Module | None:
    """A 1x1 conv + batch norm taking the student's feature-map channels to the teacher's; None when they agree."""
    if student_width == teacher_width:
        return None
    return nn.Sequential(nn.Conv2d(student_width, teacher_width, kernel_size=1, bias=False),
                         ConnectorBatchNorm(teacher_width))


def vector_connector(student_width: int, teacher_width: int) -> nn.Module | None:
    """A linear layer taking the student's embedding width to the teacher's; None when they agree."""
    if student_width == teacher_width:
        return None
    return nn.Linear(student_width, teacher_width)


def make_connector(input_name: str, student_shape: Sequence[int], teacher_shape: Sequence[int]) -> nn.Module | None:
    """The student-side module that maps its width to the teacher's, or None when widths agree. The exported
    file (``kdzero.export``) carries the source of ``map_connector``/``vector_connector`` themselves."""
    if student_shape[0] == teacher_shape[0]:
        return None
    if input_name == "feat":
        return map_connector(int(student_shape[0]), int(teacher_shape[0]))
    if input_name == "emb":
        return vector_connector(int(student_shape[0]), int(teacher_shape[0]))
    raise GenomeError(f"student has {student_shape[0]} classes and teacher {teacher_shape[0]}; logits cannot be "
                      f"connected")


def align_spatial(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-average-pool the larger of two maps to the smaller's height and width."""
    if student.dim() != 4 or student.shape[2:] == teacher.shape[2:]:
        return student, teacher
    size = (min(student.shape[2], teacher.shape[2]), min(student.shape[3], teacher.shape[3]))
    if tuple(student.shape[2:]) != size:
        student = F.adaptive_avg_pool2d(student, size)
    if tuple(teacher.shape[2:]) != size:
        teacher = F.adaptive_avg_pool2d(teacher, size)
    return student, teacher


_PROBE_MAPS = ((8, 8), (16, 16))  # two spatial sizes every op handles; any two distinct ones give the same verdict


def pools_spatially(genome: Genome) -> bool:
    """Whether ``UnifiedLoss`` average-pools the larger of two unequal maps before the transforms.

    Only when the transforms would not make two spatial sizes comparable by themselves. A batch Gram (``mm``:
    SP's N x N similarities), a channel Gram (``bmm``) or a spatial pyramid (``multi_scale_r*``) compare maps of
    any size as they are, as their papers do (Tung & Mori's G = Q Q^T on each side's own flattened map);
    pooling first would change the value (SP on 8x8 vs 4x4 maps). The same rule as for the width connector:
    align only what the transforms leave incomparable. Inputs other than maps are never pooled."""
    if genome.input != "feat":
        return False
    outputs = set()
    for size in _PROBE_MAPS:
        shape: tuple[int, ...] = (4, 16, *size)
        try:
            for name in genome.transforms:
                shape = TRANSFORMS[name].output_shape(shape)
        except GenomeError:
            return True
        outputs.add(shape)
    return len(outputs) > 1


class UnifiedLoss(nn.Module):
    """The distillation loss a genome describes (see the module docstring for its seven steps).

    ``generator`` optionally seeds the random transforms (mask, drop) for reproducible runs.
    """

    def __init__(self, genome: Genome | str, student_shapes: Shapes | None = None,
                 teacher_shapes: Shapes | None = None, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.genome = Genome.parse(genome) if isinstance(genome, str) else genome
        if not isinstance(self.genome, Genome):
            raise GenomeError(f"UnifiedLoss takes a Genome or its text, got {type(genome).__name__}")
        self._transforms = [TRANSFORMS[name] for name in self.genome.transforms]
        self._pool = pools_spatially(self.genome)
        self._distance = DISTANCES[self.genome.distance]
        self._weight = WEIGHTS[self.genome.weight]
        self.generator = generator
        self.connector: nn.Module | None = None
        self._built = False
        if student_shapes is not None and teacher_shapes is not None:
            self.build_from_shapes(student_shapes, teacher_shapes)

    def build_from_shapes(self, student_shapes: Shapes, teacher_shapes: Shapes) -> UnifiedLoss:
        """Validate the genome for these per-sample shapes and create the connector if one is needed."""
        self.genome.validate(student_shapes, teacher_shapes)
        name = self.genome.input
        self.connector = None
        self._expected = (tuple(student_shapes[name]), tuple(teacher_shapes[name]))
        if self.genome.needs_connector(student_shapes, teacher_shapes):
            self.connector = make_connector(name, tuple(student_shapes[name]), tuple(teacher_shapes[name]))
        self._built = True
        return self

    def build(self, student: Features, teacher: Features) -> UnifiedLoss:
        """``build_from_shapes`` from one batch of features; the connector lands on the features' device."""
        self.build_from_shapes(feature_shapes(student), feature_shapes(teacher))
        if self.connector is not None:
            source = student.select(self.genome.input)
            self.connector.to(device=source.device)
        return self

    def _build_lazily(self, student: Features, teacher: Features) -> None:
        """Build on the first call, unless that would create a connector: its parameters would be missing from
        an optimiser created before this call and would silently never train."""
        student_shapes, teacher_shapes = feature_shapes(student), feature_shapes(teacher)
        if self.genome.needs_connector(student_shapes, teacher_shapes):
            name = self.genome.input
            raise KdzeroError(
                f"{self.genome} needs a learned connector from the student's {name} width "
                f"{student_shapes[name][0]} to the teacher's {teacher_shapes[name][0]}; call "
                f"loss.build(student_out, teacher_out) (or pass student_shapes= and teacher_shapes= to UnifiedLoss) "
                f"before creating the optimiser, so that it trains the connector's parameters")
        self.build(student, teacher)

    def extra_repr(self) -> str:
        return f"genome={self.genome}"

    def compare(self, student: Features, teacher: Features, ctx: OpContext | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 1-4: the two tensors the distance compares."""
        if not self._built:
            self._build_lazily(student, teacher)
        name = self.genome.input
        s = student.select(name)
        t = teacher.select(name).detach()
        if (tuple(s.shape[1:]), tuple(t.shape[1:])) != self._expected:
            raise GenomeError(f"this loss was built for {name} shapes {self._expected[0]} (student) and "
                              f"{self._expected[1]} (teacher) but got {tuple(s.shape[1:])} and "
                              f"{tuple(t.shape[1:])}; build a new UnifiedLoss for these models")
        if self.connector is not None:
            s = self.connector(s)
        if self._pool:
            s, t = align_spatial(s, t)
        ctx = ctx or OpContext(training=self.training, generator=self.generator)
        for slot, op in enumerate(self._transforms):
            ctx.share(slot, tuple(s.shape), tuple(t.shape))
            s = op(s, ctx)
            t = op(t, ctx)
        temperature = float(self.genome.temperature)
        return s / temperature, t / temperature

    def per_sample(self, student: Features, teacher: Features) -> torch.Tensor:
        """Steps 1-5: the distance for every sample, shape (N,), before weighting and scaling."""
        s, t = self.compare(student, teacher)
        return self._distance(s, t)

    def forward(self, student: Features, teacher: Features, target: torch.Tensor | None = None) -> torch.Tensor:
        """The scalar distillation loss of ``student`` against ``teacher`` (labels ``target`` optional)."""
        distances = self.per_sample(student, teacher)
        value = self._weight(distances, student.logit, teacher.logit.detach(), target)
        return value * (self.genome.magnitude * self.genome.temperature ** 2)


def check_runs(genome: Genome, student_shapes: Shapes, teacher_shapes: Shapes, batch_size: int = 4) -> None:
    """Validate ``genome`` and run it once on random inputs of these shapes, raising GenomeError if the value
    is not finite. A cheap static gate before any training."""
    loss_fn = UnifiedLoss(genome, student_shapes, teacher_shapes)
    gen = torch.Generator().manual_seed(0)

    def random_features(shapes: Shapes) -> Features:
        return Features(*(torch.randn(batch_size, *shapes[name], generator=gen) for name in Features._fields))

    value = loss_fn(random_features(student_shapes), random_features(teacher_shapes),
                    torch.randint(0, int(teacher_shapes["logit"][0]), (batch_size,), generator=gen))
    if not torch.isfinite(value):
        raise GenomeError(f"{genome} gives a non-finite loss on random inputs")


__all__ = ["ConnectorBatchNorm", "UnifiedLoss", "align_spatial", "check_runs", "feature_shapes", "make_connector",
           "map_connector", "pools_spatially", "vector_connector"]
