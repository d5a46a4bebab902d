"""The classical, hand-designed distillers, built by name: the references every searched distiller is measured against.

Every method is an ``nn.Module`` called as ``loss(student=Features, teacher=Features, target=labels)`` and returns a
scalar tensor: ONLY its distillation term, already multiplied by its paper's default weight. The trainer adds the
cross-entropy on the labels itself, so the total objective is always ``CE + term``. Papers that mix CE and the
term with a convex ``alpha`` (Hinton's KD, Tf-KD) are given here in their alpha-free form; each docstring says how
the paper combines the two. Teacher tensors are detached inside; gradient reaches only the student (and the
method's own learned parts).

    from kdzero.methods import create_method, feature_shapes
    kd = create_method("kd")                                       # T=4, weight 1
    fitnet = create_method("fitnet", student_shapes=feature_shapes(s), teacher_shapes=feature_shapes(t))
    ofd = create_method("ofd", feature_shapes(s), feature_shapes(t), margin=teacher_margin(teacher_model))
    loss = ce + fitnet(student=s, teacher=t, target=y)             # fitnet.parameters(): its regressor

The distillers live in one module per family (``logit``, ``feature``, ``relation``, ``contrastive``) over a
shared ``base``; every name is importable from ``kdzero.methods``.

Methods with learned parts (fitnet, ofd, ickd, cc, crd; cwd when the student's and teacher's sizes differ) build
them eagerly from per-sample shapes ``{"feat": (C, H, W), "emb": (D,), "logit": (K,)}`` so that the optimiser
sees them before the first step. Where feature maps of different spatial size meet, the larger one is average-
pooled down to the smaller (RepDistiller's convention for AT), per axis.

Defaults follow RepDistiller (Tian et al. 2020) and mdistiller (Zhao et al. 2022), the code behind the CIFAR-100
tables every later paper copies.
"""
from __future__ import annotations

from kdzero.loss import feature_shapes
from kdzero.methods.base import FAMILIES, Distiller, Shapes, create_method, list_methods
from kdzero.methods.contrastive import CRD
from kdzero.methods.feature import AT, CWD, ICKD, OFD, SP, FitNet, bn_margin, teacher_margin
from kdzero.methods.logit import DKD, DKDLS, KD, LS, AlphaDivergence, TfKD
from kdzero.methods.relation import CC, PKT, RKD

__all__ = [
    "AT",
    "CC",
    "CRD",
    "CWD",
    "DKD",
    "DKDLS",
    "FAMILIES",
    "ICKD",
    "KD",
    "LS",
    "OFD",
    "PKT",
    "RKD",
    "SP",
    "AlphaDivergence",
    "Distiller",
    "FitNet",
    "Shapes",
    "TfKD",
    "bn_margin",
    "create_method",
    "feature_shapes",
    "list_methods",
    "teacher_margin",
]
