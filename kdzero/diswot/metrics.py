"""DisWOT's training-free similarity of a student to its teacher: relation and semantic Gram matrices, one batch."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kdzero.errors import ConfigError, KdzeroError
from kdzero.features import Features


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
