"""The 8 distances: student tensor, teacher tensor -> one non-negative value per sample, shape (N,).

Both tensors are first viewed as (N, G, D): a 2-D (N, K) tensor is one row of K; a 3-D (N, C, L) tensor is C rows
of L; a 4-D (N, C, H, W) map is C rows of H*W. Distributional distances (kl, hard, cosine, pearson) compare along
the last axis D (classes for logits, positions for maps) and average over the G rows; elementwise ones (l1, l2,
smooth_l1) average over all entries. ``batch_congruence`` compares how each sample relates to the rest of the batch
(it was called ``correlation``, a name still accepted).
The student always comes first; kl and hard are asymmetric and take the teacher as the target.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdzero.ops._registry import DISTANCES

register = DISTANCES.register
COS_EPS = 1e-8


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """(N, ...) -> (N, G, D) as described in the module docstring."""
    if x.dim() == 2:
        return x.unsqueeze(1)
    return x.reshape(x.shape[0], x.shape[1], -1)


def _row_len(shape: tuple[int, ...]) -> int:
    """D, the length of the rows of ``as_rows`` for a (batch-included) shape."""
    return shape[-1] if len(shape) <= 3 else math.prod(shape[2:])


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision input is promoted so that (log-)softmax stays accurate; float64 stays float64."""
    return x if x.dtype == torch.float64 else x.float()


@register(formula="mean |s - t|", bound=lambda b, s: 2 * b)
def l1(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per sample."""
    return (s - t).abs().reshape(s.shape[0], -1).mean(dim=1)


@register(formula="mean (s - t)^2", bound=lambda b, s: 4 * b * b, squares=True)
def l2(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample (FitNet, AT and SP all use this form)."""
    return (s - t).pow(2).reshape(s.shape[0], -1).mean(dim=1)


@register(formula="mean huber_1(s - t)", bound=lambda b, s: 2 * b)
def smooth_l1(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Smooth L1 (Huber with beta 1) per sample: quadratic near zero, linear for large errors."""
    return F.smooth_l1_loss(s, t, reduction="none", beta=1.0).reshape(s.shape[0], -1).mean(dim=1)


@register(formula="mean_G sum_D softmax(t) * (log_softmax(t) - log_softmax(s))", min_compare_len=2,
          bound=lambda b, s: 2 * b + math.log(_row_len(s)))
def kl(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """KL(softmax(t) || softmax(s)) along D: the teacher's distribution is the target, the student's log-softmax
    the prediction (Hinton KD's direction). Defined for any real input, raw features included."""
    log_p_s = torch.log_softmax(_at_least_float32(as_rows(s)), dim=-1)
    log_p_t = torch.log_softmax(_at_least_float32(as_rows(t)), dim=-1)
    per_row = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(dim=-1)
    return per_row.mean(dim=1).to(s.dtype)


@register(formula="mean_G cross_entropy(s, argmax_D t)", min_compare_len=2,
          bound=lambda b, s: 2 * b + math.log(_row_len(s)))
def hard(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Hard-label distillation: cross-entropy of the student's row against the teacher's arg-max along D."""
    rows_s = _at_least_float32(as_rows(s))
    target = as_rows(t).argmax(dim=-1)
    per_row = F.cross_entropy(rows_s.transpose(1, 2), target, reduction="none")
    return per_row.mean(dim=1).to(s.dtype)


@register(formula="mean_G (1 - cos(s, t)) along D", min_compare_len=2, bound=lambda b, s: 2.0, squares=True)
def cosine(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Cosine distance 1 - cos: 0 for parallel rows, 2 for opposite ones (minimising it aligns the student)."""
    return (1.0 - F.cosine_similarity(as_rows(s), as_rows(t), dim=-1, eps=COS_EPS)).mean(dim=1)


@register(formula="mean_G (1 - pearson(s, t)) along D", min_compare_len=3, bound=lambda b, s: 2.0, squares=True)
def pearson(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Pearson distance 1 - r: cosine distance after centring each row, blind to shift and scale (as DIST).
    Rows need three entries: two centred entries are always +-(a - b)/2, so r would be +-1 whatever the input."""
    rows_s, rows_t = as_rows(s), as_rows(t)
    centred_s = rows_s - rows_s.mean(dim=-1, keepdim=True)
    centred_t = rows_t - rows_t.mean(dim=-1, keepdim=True)
    return (1.0 - F.cosine_similarity(centred_s, centred_t, dim=-1, eps=COS_EPS)).mean(dim=1)


@register(formula="mean_j (cos(s_i, s_j) - cos(t_i, t_j))^2 over the batch", bound=lambda b, s: 4.0, squares=True,
          degenerate=lambda s: "each sample holds one entry, so every cosine is +-1" if math.prod(s[1:]) == 1 else "")
def batch_congruence(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Batch similarity congruence: sample i's row of the batch cosine-similarity matrix, student vs teacher.
    Distils how samples relate to each other rather than the features themselves (CC / SP / RKD family).

    Formerly named ``correlation``, which it is not: it is no cross-correlation of the two tensors (KD-Zero's
    eq. 12) but a congruence of within-batch cosine similarities, close to Peng et al.'s correlation
    congruence with a linear kernel on L2-normalised samples. The old name stays accepted (same op)."""
    flat_s = F.normalize(s.reshape(s.shape[0], -1), dim=1, eps=COS_EPS)
    flat_t = F.normalize(t.reshape(t.shape[0], -1), dim=1, eps=COS_EPS)
    return (flat_s @ flat_s.t() - flat_t @ flat_t.t()).pow(2).mean(dim=1)


DISTANCES.alias("correlation", "batch_congruence")
