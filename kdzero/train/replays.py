"""A student trained with a distiller over seeds: ``build_distiller``, ``replay``, ``ReplayResult``.

``replay`` is what ``kdzero replay`` runs: one full training per seed of a student distilled with a genome, a
classical method, or CE alone, from a teacher loaded (or, on digits, trained once) by ``kdzero.train.teachers``,
each seed in its own folder and the mean and std over seeds in ``results.json``. ``build_distiller`` turns a
genome or a method name into the loss for one student/teacher pair; the confirmation and the API use it too.
"""
from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdzero.data import DatasetSplits
from kdzero.errors import ConfigError, suggest
from kdzero.loss import UnifiedLoss
from kdzero.models import create_model
from kdzero.teacher_identity import weak_teacher_warning
from kdzero.train.checkpoint import _slug, _write_json
from kdzero.train.config import Log, TrainConfig, TrainResult
from kdzero.train.datasets import load_data
from kdzero.train.loop import evaluate, probe_shapes, train_model
from kdzero.train.teachers import describe_teacher, ensure_teacher, load_teacher


def replay_dir(student: str, dataset: str, label: str) -> Path:
    """The default folder of a replay: ``runs/replay/<student>-<dataset>-<distiller>``."""
    return Path("runs/replay") / f"{_slug(student)}-{_slug(dataset)}-{_slug(label)}"


def build_distiller(
    student: nn.Module,
    teacher: nn.Module,
    data: DatasetSplits,
    *,
    genome: str | None = None,
    method: str | None = None,
) -> nn.Module:
    """The distillation loss for a student/teacher pair on ``data``: a ``UnifiedLoss`` of ``genome`` or the
    classical ``method`` (``kdzero.methods``), with connectors sized from one probe forward pass of each model.

    Random transforms draw from the global torch RNG, whose state ``last.pt`` saves, so resumed runs match.
    """
    if (genome is None) == (method is None):
        raise ConfigError("give exactly one of a genome and a method")
    s_shapes, t_shapes = probe_shapes(student, data.test), probe_shapes(teacher, data.test)
    if genome is not None:
        return UnifiedLoss(genome, s_shapes, t_shapes)
    from kdzero.methods import create_method, teacher_margin

    options: dict[str, Any] = {}
    if method == "crd":  # CRD's memory bank spans the train set
        options["dataset_size"] = len(data.train)
    elif method == "ofd":  # OFD's margin comes from the teacher's batch norm before its last ReLU
        options["margin"] = teacher_margin(teacher)
    return create_method(method, s_shapes, t_shapes, **options)


@dataclass
class ReplayResult:
    """A replay over one or more seeds: each seed's TrainResult and the mean/std of best and last top-1 (%)."""

    runs: list[TrainResult]
    label: str
    student: str
    teacher: str | None
    dataset: str
    teacher_acc: float | None = None
    teacher_ckpt: str | None = None

    @property
    def best_accs(self) -> list[float]:
        """Best-epoch test top-1 of every seed."""
        return [r.best_acc for r in self.runs]

    @property
    def last_accs(self) -> list[float]:
        """Last-epoch test top-1 of every seed."""
        return [r.last_acc for r in self.runs]

    @staticmethod
    def mean_std(values: Sequence[float]) -> tuple[float, float]:
        """Mean and sample standard deviation (0 for a single value)."""
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    def weak_teacher_warning(self) -> str | None:
        """A warning when the teacher's test top-1 is below the mean best-epoch top-1 of the students it taught,
        measured on the same test split: a sign that it was trained on the wrong data or too briefly."""
        if self.teacher_acc is None:
            return None
        student = f"the {self.student} it distilled with {self.label}"
        return weak_teacher_warning(self.teacher_acc, self.mean_std(self.best_accs)[0], student)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary with every seed's result."""
        best_mean, best_std = self.mean_std(self.best_accs)
        last_mean, last_std = self.mean_std(self.last_accs)
        return {"distiller": self.label, "student": self.student, "teacher": self.teacher, "dataset": self.dataset,
                "teacher_ckpt": self.teacher_ckpt, "teacher_test_acc": self.teacher_acc,
                "seeds": [r.config.seed for r in self.runs], "best_acc_mean": best_mean, "best_acc_std": best_std,
                "last_acc_mean": last_mean, "last_acc_std": last_std, "runs": [r.to_dict() for r in self.runs]}


DEFAULT_DIGITS_TEACHER = "resnet20"
"""The teacher ``replay`` trains (once) when the dataset is digits and no teacher is named."""


def replay(
    student: str,
    dataset: str | DatasetSplits,
    *,
    genome: str | None = None,
    method: str | None = None,
    teacher: str | None = None,
    teacher_ckpt: str | os.PathLike | None = None,
    config: TrainConfig | None = None,
    seeds: int | Sequence[int] = 1,
    out: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Log | None = None,
) -> ReplayResult:
    """Train student ``student`` on ``dataset`` with a distiller: ``genome`` (text), a classical ``method``, or
    ``method="ce"`` (no teacher: the cross-entropy baseline). One run per seed (``seeds=3`` -> 0, 1, 2), each in
    ``out/seed<k>``, plus ``out/results.json`` with mean and std.

    The teacher is ``teacher`` loaded strictly from ``teacher_ckpt``; on digits without a checkpoint it is trained
    once by ``ensure_teacher`` (``DEFAULT_DIGITS_TEACHER`` when unnamed). ``config`` defaults to
    ``TrainConfig.for_dataset(student, dataset)``; its seed is replaced by each run's.
    """
    if method == "ce" and genome is None:
        method = None
        label = "ce"
    elif (genome is None) == (method is None):
        raise ConfigError("give exactly one of --genome, --method or a run with --rank")
    else:
        label = genome if genome is not None else method
    if genome is not None:
        from kdzero.genome import Genome

        genome = str(Genome.parse(genome))
        label = genome
    elif method is not None:
        from kdzero.methods import list_methods

        if method not in list_methods():
            raise ConfigError(f"unknown method {method!r}; {suggest(method, ['ce', *list_methods()])}")
    data = dataset if isinstance(dataset, DatasetSplits) else load_data(dataset, data_root)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise ConfigError("seeds must be at least 1")
    config = config or TrainConfig.for_dataset(student, data.name)
    for name in (student, teacher):  # fail on a bad model name before any training
        if name is not None:
            create_model(name, num_classes=data.num_classes, in_chans=data.in_chans)
    teacher_model, teacher_acc = None, None
    if label != "ce":
        if teacher_ckpt is None:
            if data.name != "digits":
                raise ConfigError(f"distilling on {data.name} needs --teacher MODEL --teacher-ckpt PATH (only "
                                  "digits trains its own teacher)")
            teacher = teacher or DEFAULT_DIGITS_TEACHER
            teacher_ckpt = ensure_teacher(teacher, data, progress=progress, log=log)
        elif teacher is None:
            raise ConfigError("--teacher-ckpt needs --teacher MODEL (the architecture to load it into)")
        teacher_model = load_teacher(teacher, teacher_ckpt, data)
        teacher_acc = evaluate(teacher_model.to(config.device), data.test.to(config.device))
        if log is not None:
            log(describe_teacher(teacher, teacher_ckpt, teacher_acc))
    out_dir = Path(out) if out is not None else replay_dir(student, data.name, label)
    runs = []
    for seed in seed_list:
        run_config = replace(config, seed=seed)
        torch.manual_seed(seed)
        model = create_model(student, num_classes=data.num_classes, in_chans=data.in_chans)
        loss = None
        if teacher_model is not None:
            loss = build_distiller(model, teacher_model, data, genome=genome, method=method)
        if log is not None and len(seed_list) > 1:
            log(f"seed {seed}")
        result = train_model(model, data, run_config, teacher=teacher_model, distill_loss=loss,
                             run_dir=out_dir / f"seed{seed}", resume=resume, progress=progress, log=log)
        result.extra.update(student=student, teacher=teacher if teacher_model is not None else None,
                            distiller=label, dataset=data.name)
        _write_json(result.to_dict(), out_dir / f"seed{seed}" / "results.json")
        runs.append(result)
    summary = ReplayResult(runs=runs, label=label, student=student, teacher=teacher if teacher_model else None,
                           dataset=data.name, teacher_acc=teacher_acc,
                           teacher_ckpt=str(teacher_ckpt) if teacher_model is not None else None)
    warning = summary.weak_teacher_warning()
    if warning is not None and log is not None:
        log(warning)
    _write_json(summary.to_dict(), out_dir / "results.json")
    return summary
