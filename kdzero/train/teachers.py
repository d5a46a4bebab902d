"""The teachers kdzero trains and loads: their folders and identity, ``train_teacher``, ``ensure_teacher``.

A teacher trained here is kept in ``TEACHERS_DIR/<model>-<dataset>-<identity key>`` with a ``teacher.json``
beside its ``best.pt`` saying what it was trained on (``kdzero.teacher_identity``), so that a teacher trained on
other data, normalisation, schedule or seed is never taken for another. ``load_teacher`` loads any teacher
checkpoint strictly into a zoo model; ``describe_teacher`` is the line that says which teacher a run uses.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from kdzero.data import DatasetSplits
from kdzero.errors import CheckpointError, ConfigError
from kdzero.models import create_model, load_checkpoint
from kdzero.teacher_identity import IDENTITY_FILE, TeacherIdentity, read_record, write_record
from kdzero.train.checkpoint import _RESUME_FREE, _plain, _slug, _write_json
from kdzero.train.config import Log, TrainConfig, TrainResult
from kdzero.train.datasets import load_data
from kdzero.train.loop import train_model

TEACHERS_DIR = Path("runs/teachers")
"""Where ``ensure_teacher`` keeps the teachers it trains, one folder ``<model>-<dataset>-<identity key>`` each."""


def teacher_identity(model_name: str, data: DatasetSplits, config: TrainConfig) -> TeacherIdentity:
    """What a teacher ``model_name`` trained on ``data.train`` with ``config`` is: data, normalisation, schedule
    and seed; the fields that only change speed (``device``, ``amp``, ...) are left out."""
    schedule = {k: _plain(v) for k, v in asdict(config).items() if k not in (*_RESUME_FREE, "seed")}
    return TeacherIdentity.of(model_name, data, schedule, config.seed)


def teacher_dir(model_name: str, data: DatasetSplits, config: TrainConfig | None = None,
                root: str | os.PathLike = TEACHERS_DIR) -> Path:
    """The folder of teacher ``model_name`` trained on ``data`` with ``config`` (default
    ``TrainConfig.for_dataset``): ``root/<model>-<dataset>-<identity key>``, one folder per distinct teacher, so
    that a teacher trained on a subset, with other normalisation or another schedule is never taken for another.
    """
    config = config or TrainConfig.for_dataset(model_name, data.name)
    return Path(root) / f"{_slug(model_name)}-{_slug(data.name)}-{teacher_identity(model_name, data, config).key}"


def train_teacher(
    model_name: str,
    dataset: str | DatasetSplits,
    *,
    config: TrainConfig | None = None,
    out: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Log | None = None,
) -> TrainResult:
    """Train zoo model ``model_name`` from scratch on ``dataset`` (a name or loaded splits) and save it to ``out``.

    ``config`` defaults to ``TrainConfig.for_dataset`` (the CRD protocol; ``DIGITS_EPOCHS`` on digits); ``out``
    defaults to ``teacher_dir(model_name, data, config)``. The teacher to distil from is ``out/best.pt``; beside it
    ``teacher.json`` records what it was trained on and its test top-1 (``kdzero.teacher_identity``). ``resume``
    refuses a folder whose record names other data, normalisation, schedule or seed.
    """
    data = dataset if isinstance(dataset, DatasetSplits) else load_data(dataset, data_root)
    config = config or TrainConfig.for_dataset(model_name, data.name)
    out_dir = Path(out) if out is not None else teacher_dir(model_name, data, config)
    identity = teacher_identity(model_name, data, config)
    existing = read_record(out_dir)
    if resume and existing is not None and existing.identity != identity:
        raise ConfigError(f"cannot resume {out_dir}: it holds a teacher trained on "
                          f"{existing.identity.describe()}, this run differs in "
                          f"{'; '.join(existing.identity.differences(identity))}; use another --out or drop --resume")
    write_record(out_dir, identity, finished=False)
    torch.manual_seed(config.seed)
    model = create_model(model_name, num_classes=data.num_classes, in_chans=data.in_chans)
    result = train_model(model, data, config, run_dir=out_dir, resume=resume, progress=progress, log=log)
    result.extra.update(model=model_name, dataset=data.name, role="teacher", trained_on=identity.describe())
    _write_json(result.to_dict(), out_dir / "results.json")
    write_record(out_dir, identity, finished=True, test_acc=result.best_acc, best_epoch=result.best_epoch)
    return result


def ensure_teacher(
    model_name: str,
    data: DatasetSplits,
    *,
    root: str | os.PathLike = TEACHERS_DIR,
    progress: bool = True,
    log: Log | None = None,
) -> Path:
    """The ``best.pt`` of a teacher ``model_name`` trained on exactly ``data.train`` (same images, normalisation)
    with the default schedule, training it first (or finishing an interrupted run) unless
    ``teacher_dir(model_name, data, root=root)`` already holds a finished one.

    This is how the digits default works without any download: the first replay or search trains the teacher
    (well under two minutes for resnet8 on two CPU cores) and every later one on the same data reuses it. A run
    on other data (a ``--train-subset``, other normalisation) gets its own folder and its own teacher.
    """
    config = TrainConfig.for_dataset(model_name, data.name)
    out = teacher_dir(model_name, data, config, root)
    record = read_record(out)
    if record is not None and record.identity != teacher_identity(model_name, data, config):
        raise ConfigError(f"{out} holds a teacher trained on {record.identity.describe()}, not the one its name "
                          f"stands for; remove that folder to train the right one")
    if record is not None and record.finished and (out / "best.pt").is_file():
        return out / "best.pt"
    if log is not None:
        log(f"training teacher {model_name} on {data.name} into {out} (once; reused by runs on the same data)")
    train_teacher(model_name, data, config=config, out=out, resume=True, progress=progress, log=log)
    return out / "best.pt"


def describe_teacher(model_name: str, checkpoint: str | os.PathLike, test_acc: float | None = None,
                     measured_on: str = "test") -> str:
    """One line saying which teacher is used: its checkpoint, what it was trained on (from the ``teacher.json``
    beside it, when kdzero trained it) and its top-1 (``test_acc``, measured now on the ``measured_on`` split,
    or else the recorded test top-1)."""
    record = read_record(Path(checkpoint).parent)
    if record is None:
        trained_on = f"trained on: unknown (no {IDENTITY_FILE} beside the checkpoint)"
    else:
        trained_on = f"trained on {record.identity.describe()}"
    if test_acc is not None:
        accuracy = f"{measured_on} top-1 {test_acc:.2f}%"
    elif record is not None and record.test_acc is not None:
        accuracy = f"test top-1 {record.test_acc:.2f}% (recorded)"
    else:
        accuracy = "top-1 unknown"
    return f"teacher {model_name} from {checkpoint}: {trained_on}; {accuracy}"


def load_teacher(model_name: str, checkpoint: str | os.PathLike, data: DatasetSplits) -> nn.Module:
    """Build zoo model ``model_name`` for ``data``'s classes and channels and load ``checkpoint`` strictly.

    A checkpoint of another class count is reported as "teacher predicts K classes but dataset D has N".
    """
    path = Path(checkpoint)
    if path.is_dir():
        raise CheckpointError(f"teacher checkpoint {path} is a directory, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"teacher checkpoint {path} does not exist")
    from kdzero.models import read_checkpoint

    state, _ = read_checkpoint(path)
    heads = [v for k, v in state.items() if k.endswith(".weight") and v.dim() == 2]
    if heads and heads[-1].shape[0] != data.num_classes:
        raise ConfigError(f"teacher predicts {heads[-1].shape[0]} classes but dataset {data.name} has "
                          f"{data.num_classes}")
    model = create_model(model_name, num_classes=data.num_classes, in_chans=data.in_chans)
    load_checkpoint(model, path, strict=True)
    return model
