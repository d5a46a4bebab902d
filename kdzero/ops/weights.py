"""The 5 weightings: per-sample distances (N,) -> the scalar loss.

A weighting decides how much each sample counts. Weights are computed from the logits (and the labels) of both
models at temperature 1, without gradient, and rescaled to mean 1 over the batch, so a weighting changes the
emphasis between samples but not the overall scale that ``magnitude`` controls. The class count is read from
the logits. When no labels are given, the teacher's arg-max stands in for them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdzero.ops._registry import WEIGHTS

register = WEIGHTS.register
WEIGHT_EPS = 1e-6
FOCAL_GAMMA = 2.0


def _weighted_mean(distances: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    weights = (weights.detach().float() + WEIGHT_EPS)
    weights = weights / weights.mean()
    return (distances * weights.to(distances.dtype)).mean()


def _true_class_probability(logit: torch.Tensor, teacher_logit: torch.Tensor,
                            target: torch.Tensor | None) -> torch.Tensor:
    """softmax(logit)[y] per sample, y the labels or, without labels, the teacher's arg-max."""
    labels = teacher_logit.argmax(dim=1) if target is None else target
    return torch.softmax(logit.float(), dim=1).gather(1, labels.view(-1, 1)).squeeze(1)


@register(formula="mean_i d_i")
def no(distances: torch.Tensor, student_logit: torch.Tensor, teacher_logit: torch.Tensor,
       target: torch.Tensor | None) -> torch.Tensor:
    """Uniform: every sample counts the same."""
    return distances.mean()


@register(formula="w_i = H(softmax(t_i)) / log K")
def entropy(distances: torch.Tensor, student_logit: torch.Tensor, teacher_logit: torch.Tensor,
            target: torch.Tensor | None) -> torch.Tensor:
    """Teacher-entropy weighting: samples on which the teacher is unsure carry more dark knowledge."""
    with torch.no_grad():
        log_p = torch.log_softmax(teacher_logit.float(), dim=1)
        weights = -(log_p.exp() * log_p).sum(dim=1) / math.log(max(teacher_logit.shape[1], 2))
    return _weighted_mean(distances, weights)


@register(formula="w_i = (1 - softmax(s_i)[y_i])^2")
def focal(distances: torch.Tensor, student_logit: torch.Tensor, teacher_logit: torch.Tensor,
          target: torch.Tensor | None) -> torch.Tensor:
    """Focal weighting (gamma 2): samples the student still gets wrong count more."""
    with torch.no_grad():
        weights = (1.0 - _true_class_probability(student_logit, teacher_logit, target)).pow(FOCAL_GAMMA)
    return _weighted_mean(distances, weights)


@register(formula="w_i = 1 - cos(softmax(s_i), softmax(t_i))")
def sim(distances: torch.Tensor, student_logit: torch.Tensor, teacher_logit: torch.Tensor,
        target: torch.Tensor | None) -> torch.Tensor:
    """Dissimilarity weighting: samples on which student and teacher predictions disagree count more."""
    with torch.no_grad():
        weights = 1.0 - F.cosine_similarity(torch.softmax(student_logit.float(), dim=1),
                                            torch.softmax(teacher_logit.float(), dim=1), dim=1)
    return _weighted_mean(distances, weights)


@register(formula="w_i = softmax(t_i)[y_i]")
def conf(distances: torch.Tensor, student_logit: torch.Tensor, teacher_logit: torch.Tensor,
         target: torch.Tensor | None) -> torch.Tensor:
    """Teacher-confidence weighting: trust the teacher where it puts mass on the true class."""
    with torch.no_grad():
        weights = _true_class_probability(teacher_logit, teacher_logit, target)
    return _weighted_mean(distances, weights)
