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

One module per concern: ``metrics`` (the score), ``costs`` (parameters, FLOPs, budgets), ``space`` (the
architectures a search may visit), ``evolution`` (aging evolution), ``search`` (the resumable study run).
Every name is importable from ``kdzero.diswot``.
"""
from __future__ import annotations

from kdzero.diswot.costs import (
    DEFAULT_BUDGET_RATIO,
    Budget,
    Cost,
    arch_cost,
    count_flops,
    format_count,
    model_cost,
    parse_count,
    parse_limit,
)
from kdzero.diswot.evolution import EvolutionResult, Member, aging_evolution
from kdzero.diswot.metrics import (
    DisWOTScore,
    TeacherReference,
    batch_gram,
    class_gram,
    classifier_grad,
    diswot_score,
    relation_similarity,
    score_student,
    semantic_similarity,
    teacher_reference,
)
from kdzero.diswot.search import CONFIG_ATTR, StudentResult, StudentSearch
from kdzero.diswot.space import SearchSpace
from kdzero.models.searchable import FAMILIES, StudentArch, create_student

__all__ = [
    "CONFIG_ATTR",
    "DEFAULT_BUDGET_RATIO",
    "FAMILIES",
    "Budget",
    "Cost",
    "DisWOTScore",
    "EvolutionResult",
    "Member",
    "SearchSpace",
    "StudentArch",
    "StudentResult",
    "StudentSearch",
    "TeacherReference",
    "aging_evolution",
    "arch_cost",
    "batch_gram",
    "class_gram",
    "classifier_grad",
    "count_flops",
    "create_student",
    "diswot_score",
    "format_count",
    "model_cost",
    "parse_count",
    "parse_limit",
    "relation_similarity",
    "score_student",
    "semantic_similarity",
    "teacher_reference",
]
