"""Distillers of the relations between the samples' embeddings: CC, RKD, PKT."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzero.errors import ConfigError
from kdzero.features import Features
from kdzero.methods._helpers import side_size
from kdzero.methods.base import Distiller, Shapes, register


@register("cc")
class CC(Distiller):
    """Peng et al. 2019, "Correlation Congruence for Knowledge Distillation", in RepDistiller's form.

    Both embeddings pass their own learned linear head to ``feat_dim``=128 (``embed_s``, ``embed_t``; RepDistiller's
    ``LinearEmbed``, no normalisation, both trained with the student). With d_i = |f_s,i - f_t,i| the per-sample
    absolute difference of the heads' outputs, in batch order:
      term = weight * mean_{i=1..N-1} sum_k d_i,k * d_{i+1},k
    weight=0.02 (RepDistiller's ``-b 0.02`` for ``--distill correlation``, added to CE). This kernel-free
    correlation is the code RepDistiller received from the CC authors and the one its CIFAR-100 table, and its
    weight 0.02, were produced with; the paper's Taylor-expanded Gaussian-kernel congruence yields a term orders
    of magnitude smaller (its entries are bounded by exp(2 gamma) - 1 apart), so 0.02 applied to that form made
    the term negligible. Weight and formula now come from the same source.
    """

    def __init__(
        self, student_shapes: Shapes | None = None, teacher_shapes: Shapes | None = None, *,
        feat_dim: int = 128, weight: float = 0.02,
    ) -> None:
        super().__init__()
        self.embed_s = nn.Linear(side_size(student_shapes, "emb", "student", "cc"), feat_dim)
        self.embed_t = nn.Linear(side_size(teacher_shapes, "emb", "teacher", "cc"), feat_dim)
        self.weight = float(weight)

    def forward(self, student: Features, teacher: Features, target: Tensor) -> Tensor:
        """The weighted mean over neighbouring sample pairs of the product of their absolute differences."""
        delta = (self.embed_s(student.emb.flatten(1)) - self.embed_t(teacher.emb.detach().flatten(1))).abs()
        if delta.shape[0] < 2:
            raise ConfigError("method 'cc' correlates neighbouring samples and needs a batch of at least 2")
        return self.weight * (delta[:-1] * delta[1:]).sum(dim=1).mean()


@register("rkd")
class RKD(Distiller):
    """Park et al. 2019, "Relational Knowledge Distillation" (RepDistiller's ``RKDLoss`` on embeddings).

    Distance-wise: psi_D(i, j) = ||e_i - e_j|| / mu, mu the mean over the positive distances of the batch;
    angle-wise: psi_A(i, j, k) = <unit(e_i - e_j), unit(e_k - e_j)>;
    term = weight * (w_d * smoothL1(psi_D^s, psi_D^t) + w_a * smoothL1(psi_A^s, psi_A^t)), means over all
    pairs / triplets, w_d=25, w_a=50, weight=1 (RepDistiller, added to CE). Widths may differ.
    """

    def __init__(
        self, student_shapes: Shapes | None = None, teacher_shapes: Shapes | None = None, *,
        w_d: float = 25.0, w_a: float = 50.0, weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.w_d = float(w_d)
        self.w_a = float(w_a)
        self.weight = float(weight)

    @staticmethod
    def _distances(e: Tensor) -> Tensor:
        """Pairwise Euclidean distances (zero diagonal, safe gradient) divided by their mean positive value."""
        sq = e.pow(2).sum(dim=1)
        d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp_min(1e-12).sqrt()
        d = d * (1 - torch.eye(len(e), dtype=d.dtype, device=d.device))
        return d / d[d > 0].mean()

    @staticmethod
    def _angles(e: Tensor) -> Tensor:
        """Cosines of all angles e_i - e_j - e_k (flattened N^3 vector)."""
        diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
        return (diff @ diff.transpose(1, 2)).flatten()

    def forward(self, student: Features, teacher: Features, target: Tensor) -> Tensor:
        """The weighted distance-wise plus angle-wise relational loss."""
        s, t = student.emb.flatten(1), teacher.emb.detach().flatten(1)
        loss_d = F.smooth_l1_loss(self._distances(s), self._distances(t))
        loss_a = F.smooth_l1_loss(self._angles(s), self._angles(t))
        return self.weight * (self.w_d * loss_d + self.w_a * loss_a)


@register("pkt")
class PKT(Distiller):
    """Passalis & Tefas 2018, "Learning Deep Representations with Probabilistic Knowledge Transfer".

    Cosine similarities of the embeddings (each divided by its norm + eps), mapped to [0, 1] by (c + 1)/2 and
    normalised per row into conditional probabilities P(j | i); term = weight * mean_{i,j} P_t log((P_t + eps) /
    (P_s + eps)), eps=1e-7 (the mean over all N^2 entries, as in the authors' and RepDistiller's code).
    weight=30000 (RepDistiller, added to CE). Widths may differ.
    """

    def __init__(
        self, student_shapes: Shapes | None = None, teacher_shapes: Shapes | None = None, *,
        eps: float = 1e-7, weight: float = 30000.0,
    ) -> None:
        super().__init__()
        self.eps = float(eps)
        self.weight = float(weight)

    def _probabilities(self, e: Tensor) -> Tensor:
        """Row-stochastic (N, N) matrix of conditional probabilities from cosine similarities."""
        e = e.flatten(1)
        e = e / (e.norm(dim=1, keepdim=True) + self.eps)
        sim = (e @ e.t() + 1.0) / 2.0
        return sim / sim.sum(dim=1, keepdim=True)

    def forward(self, student: Features, teacher: Features, target: Tensor) -> Tensor:
        """The weighted KL of the student's conditional probabilities from the teacher's."""
        p_s = self._probabilities(student.emb)
        p_t = self._probabilities(teacher.emb.detach())
        return self.weight * (p_t * torch.log((p_t + self.eps) / (p_s + self.eps))).mean()
