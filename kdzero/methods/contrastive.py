"""The contrastive distiller CRD, with its memory banks of past embeddings."""
from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzero.errors import ConfigError
from kdzero.features import Features
from kdzero.methods._helpers import positive_number, side_size
from kdzero.methods.base import Distiller, Shapes, register


@register("crd")
class CRD(Distiller):
    """Tian, Krishnan & Isola 2020, "Contrastive Representation Distillation" (RepDistiller's ``CRDLoss``).

    Both embeddings pass their own linear + L2-normalise head (``embed_s``, ``embed_t``) to ``feat_dim``=128.
    Two memory banks of ``dataset_size`` unit vectors (``memory_s``, ``memory_t``) hold a momentum average
    (``momentum``=0.5) of every sample's past student / teacher embedding. For each sample i with K negatives
    j_1..j_K (uniform over the dataset unless ``contrast_index`` is given; the positive is i itself):
      h(v, m) = exp(v . m / tau) / Z,  tau=0.07, Z = mean of the first batch's exp(v . m / tau) * dataset_size
      NCE(x) = -[log x_pos / (x_pos + K/n) + sum_j log (K/n) / (x_j + K/n)]   (eps 1e-7 in the denominators)
    term = weight * (NCE of the student anchor against the teacher bank + NCE of the teacher anchor against the
    student bank), batch-averaged. K = nce_k = 16384 clamped to dataset_size - 1, weight=0.8 (RepDistiller's
    ``-a 0 -b 0.8``, added to CE). The banks are updated after each training-mode call with the batch's
    embeddings. ``forward`` needs ``index``: the samples' positions in the dataset.
    """

    needs_index: ClassVar[bool] = True

    memory_s: Tensor
    memory_t: Tensor
    z_s: Tensor
    z_t: Tensor

    def __init__(
        self, student_shapes: Shapes | None = None, teacher_shapes: Shapes | None = None, *,
        dataset_size: int | None = None, feat_dim: int = 128, nce_k: int = 16384, nce_t: float = 0.07,
        momentum: float = 0.5, weight: float = 0.8,
    ) -> None:
        super().__init__()
        if dataset_size is None or dataset_size < 2:
            raise ConfigError(
                f"method 'crd' needs dataset_size (the number of training samples, >= 2) for its memory bank; "
                f"got {dataset_size!r}"
            )
        self.embed_s = nn.Linear(side_size(student_shapes, "emb", "student", "crd"), feat_dim)
        self.embed_t = nn.Linear(side_size(teacher_shapes, "emb", "teacher", "crd"), feat_dim)
        self.dataset_size = int(dataset_size)
        self.nce_k = min(int(nce_k), self.dataset_size - 1)
        self.nce_t = positive_number(nce_t, "nce_t", "crd")
        self.momentum = float(momentum)
        self.weight = float(weight)
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_s", torch.rand(self.dataset_size, feat_dim) * 2 * stdv - stdv)
        self.register_buffer("memory_t", torch.rand(self.dataset_size, feat_dim) * 2 * stdv - stdv)
        self.register_buffer("z_s", torch.tensor(-1.0))
        self.register_buffer("z_t", torch.tensor(-1.0))

    def _nce(self, x: Tensor) -> Tensor:
        """RepDistiller's ``ContrastLoss``: NCE over (N, K + 1) scores with the positive in column 0."""
        k = x.shape[1] - 1
        noise = k / self.dataset_size
        log_pos = torch.log(x[:, 0] / (x[:, 0] + noise + 1e-7))
        log_neg = torch.log(noise / (x[:, 1:] + noise + 1e-7))
        return -(log_pos.sum() + log_neg.sum()) / x.shape[0]

    def forward(
        self, student: Features, teacher: Features, target: Tensor, index: Tensor | None = None,
        contrast_index: Tensor | None = None,
    ) -> Tensor:
        """The weighted two-sided NCE loss; ``index`` (N,) dataset positions, ``contrast_index`` (N, K + 1)."""
        if index is None:
            raise ConfigError("method 'crd' needs index= (the samples' dataset positions) in every call")
        v_s = F.normalize(self.embed_s(student.emb.flatten(1)), dim=1)
        v_t = F.normalize(self.embed_t(teacher.emb.detach().flatten(1)), dim=1)
        n = v_s.shape[0]
        if contrast_index is None:
            contrast_index = torch.randint(0, self.dataset_size, (n, self.nce_k + 1), device=index.device)
            contrast_index[:, 0] = index
        bank_t = self.memory_t[contrast_index].to(v_s.dtype)
        bank_s = self.memory_s[contrast_index].to(v_t.dtype)
        out_s = torch.exp(torch.bmm(bank_t, v_s.unsqueeze(2)).squeeze(2) / self.nce_t)
        out_t = torch.exp(torch.bmm(bank_s, v_t.unsqueeze(2)).squeeze(2) / self.nce_t)
        if self.z_s < 0:
            self.z_s.fill_(out_s.mean().item() * self.dataset_size)
            self.z_t.fill_(out_t.mean().item() * self.dataset_size)
        loss = self._nce(out_s / self.z_s) + self._nce(out_t / self.z_t)
        if self.training:
            with torch.no_grad():
                for bank, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
                    mixed = bank[index] * self.momentum + v.to(bank.dtype) * (1 - self.momentum)
                    bank.index_copy_(0, index, F.normalize(mixed, dim=1))
        return self.weight * loss
