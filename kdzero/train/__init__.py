"""Full training: teachers, CE-only students, and students distilled with a genome or a classical method.

    config = TrainConfig.crd_protocol("resnet20", epochs=240)
    result = train_model(student, data, config, teacher=teacher, distill_loss=UnifiedLoss(genome, s, t),
                         run_dir="runs/replay/kd")
    result.best_acc, result.last_acc          # top-1 (%) on the test split: best epoch and last epoch

One module per concern; every name is importable from ``kdzero.train``:

- ``config``: the schedule (``TrainConfig``, the CRD protocol's constants, ``scaled_milestones``) and what a run
  returns (``EpochRecord``, ``TrainResult``);
- ``datasets``: ``load_data``, a dataset with a normalisation choice (``NORMALIZATIONS``) and an optional subset;
- ``loop``: ``train_model``, ``evaluate``, the class and shape probes, the progress display;
- ``checkpoint``: atomic writes of checkpoints and ``results.json``, reading ``last.pt`` back, the resume checks;
- ``teachers``: the teachers kdzero trains and loads (``train_teacher``, ``ensure_teacher``, ``load_teacher``);
- ``replays``: a student distilled over seeds (``build_distiller``, ``replay``, ``ReplayResult``).

The submodules import each other, never this package (that would be an import cycle). A test that patches a
constant patches the module that reads it (``kdzero.train.config.DIGITS_EPOCHS``), not this re-export. Private
helpers (``_save``, ``_slug``, ...) live in their modules only.
"""
from __future__ import annotations

from kdzero.train.config import (
    CRD_EPOCHS,
    CRD_MILESTONES,
    DIGITS_EPOCHS,
    SMALL_LR_MODELS,
    EpochRecord,
    Log,
    TrainConfig,
    TrainResult,
    scaled_milestones,
)
from kdzero.train.datasets import NORMALIZATIONS, load_data
from kdzero.train.loop import check_classes, evaluate, output_classes, probe_shapes, train_model
from kdzero.train.replays import DEFAULT_DIGITS_TEACHER, ReplayResult, build_distiller, replay, replay_dir
from kdzero.train.teachers import (
    TEACHERS_DIR,
    describe_teacher,
    ensure_teacher,
    load_teacher,
    teacher_dir,
    teacher_identity,
    train_teacher,
)

__all__ = [
    "CRD_EPOCHS",
    "CRD_MILESTONES",
    "DEFAULT_DIGITS_TEACHER",
    "DIGITS_EPOCHS",
    "NORMALIZATIONS",
    "SMALL_LR_MODELS",
    "TEACHERS_DIR",
    "EpochRecord",
    "Log",
    "ReplayResult",
    "TrainConfig",
    "TrainResult",
    "build_distiller",
    "check_classes",
    "describe_teacher",
    "ensure_teacher",
    "evaluate",
    "load_data",
    "load_teacher",
    "output_classes",
    "probe_shapes",
    "replay",
    "replay_dir",
    "scaled_milestones",
    "teacher_dir",
    "teacher_identity",
    "train_model",
    "train_teacher",
]
