"""Full training: teachers, CE-only students, and students distilled with a genome or a classical method.

The airbench habit, at full length: the dataset lives as resident uint8 tensors on the training device; every
epoch shuffles indices with a seeded CPU generator, gathers a batch, augments it as one tensor (``augment``:
crop after padding, flips where label-preserving) and normalises it. No DataLoader, no worker processes.

    config = TrainConfig.crd_protocol("resnet20", epochs=240)
    result = train_model(student, data, config, teacher=teacher, distill_loss=UnifiedLoss(genome, s, t),
                         run_dir="runs/replay/kd")
    result.best_acc, result.last_acc          # top-1 (%) on the test split: best epoch and last epoch

The objective is ``CE(student logits, labels) + distill_loss(student=, teacher=, target=)``; the teacher is frozen
in eval mode; the distiller's own parameters (connectors, embedding heads) are optimised with the student. Every
epoch writes ``last.pt`` (everything needed to continue bit-exactly: weights, distiller state, optimiser,
scheduler, RNG states, history) and, on a new best test accuracy, ``best.pt`` (the model's weights only, in the
``{"model": state_dict, ...}`` layout ``load_checkpoint`` reads); ``results.json`` holds the numbers.

Schedule: the CRD/RepDistiller protocol by default (240 epochs, batch 64, SGD momentum 0.9, lr 0.05 or 0.01 for
MobileNet/ShuffleNet, weight decay 5e-4, lr x0.1 at epochs 150/180/210). A shorter (or longer) run that gives no
milestones of its own keeps the same shape: milestones at 150/240, 180/240 and 210/240 of its epochs, rounded.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import re
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple, Self

import torch
import torch.nn.functional as F
from torch import nn

from kdzero.data import DatasetSplits, ImageSplit, augment, load_dataset, proxy_subset
from kdzero.errors import CheckpointError, ConfigError, KdzeroError, suggest
from kdzero.features import Features
from kdzero.loss import UnifiedLoss, feature_shapes
from kdzero.models import create_model, load_checkpoint
from kdzero.models.checkpoint import load_failure
from kdzero.teacher_identity import IDENTITY_FILE, TeacherIdentity, read_record, weak_teacher_warning, write_record

CRD_MILESTONES: tuple[int, ...] = (150, 180, 210)
"""The CRD protocol's lr-decay epochs for its 240-epoch schedule; other lengths scale them (see TrainConfig)."""

CRD_EPOCHS = 240
"""Length of the CRD protocol's schedule, the reference ``CRD_MILESTONES`` are given for."""

SMALL_LR_MODELS: tuple[str, ...] = ("mobilenet", "shufflenet")
"""Model-name fragments that the CRD protocol trains with lr 0.01 instead of 0.05."""

DIGITS_EPOCHS = 30
"""Default epochs on ``digits`` (1,197 8x8 training images): 30 epochs of the CRD schedule (milestones scaled to
19/23/26) take resnet8 to ~99 % test top-1 in about 30 s of training on one busy CPU core."""

NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "dataset": None,
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
"""Input normalisation choices: ``dataset`` keeps the dataset's own statistics; ``imagenet`` uses the ImageNet
mean/std that, e.g., the akamaster CIFAR-10 ResNets (``resnet*a``) were trained with."""

TEACHERS_DIR = Path("runs/teachers")
"""Where ``ensure_teacher`` keeps the teachers it trains, one folder ``<model>-<dataset>-<identity key>`` each."""

Log = Callable[[str], None]


def scaled_milestones(epochs: int) -> tuple[int, ...]:
    """The CRD milestones 150/180/210 of 240 epochs, scaled to ``epochs`` (each at least 1, rounded half up).

    >>> scaled_milestones(240), scaled_milestones(30), scaled_milestones(2)
    ((150, 180, 210), (19, 23, 26), (1, 2, 2))
    """
    return tuple(max(1, int(epochs * m / CRD_EPOCHS + 0.5)) for m in CRD_MILESTONES)


@dataclass
class TrainConfig:
    """Hyper-parameters of one full training run (defaults: the CRD/RepDistiller CIFAR-100 protocol).

    ``milestones`` None (the default) means the CRD milestones scaled to ``epochs`` (``scaled_milestones``), so
    ``TrainConfig(epochs=30)`` decays at 19/23/26 and ``TrainConfig()`` at 150/180/210; give a tuple to fix them.
    ``amp`` runs forward passes under bf16 autocast (CUDA, or a CPU with native bf16 such as AMX, where dense
    CNNs step 2-3.5x faster and depthwise ones slower: experiments/results/bench_precision.txt); losses stay fp32.
    ``channels_last`` runs convolutions in NHWC: 1.1-1.8x faster there (VGG even). ``augment`` toggles crop (and
    flip, where the dataset allows it). The test split is evaluated every ``eval_every`` epochs and after the last.
    """

    epochs: int = CRD_EPOCHS
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] | None = None
    gamma: float = 0.1
    nesterov: bool = False
    seed: int = 0
    device: str = "cpu"
    amp: bool = False
    channels_last: bool = True
    augment: bool = True
    eval_every: int = 1

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr!r}")
        if self.milestones is None:
            self.milestones = scaled_milestones(self.epochs)
        self.milestones = tuple(int(m) for m in self.milestones)
        if any(m < 1 for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            raise ConfigError(f"milestones must be increasing positive epochs, got {self.milestones}")
        device = torch.device(self.device)
        if device.type not in ("cpu", "cuda"):
            raise ConfigError(f"device must be cpu or cuda, got {self.device!r}")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device cuda asked for but no CUDA GPU is available; use --device cpu")

    @classmethod
    def crd_protocol(cls, model_name: str, **overrides: Any) -> TrainConfig:
        """The CRD protocol for student ``model_name``: lr 0.01 for MobileNet/ShuffleNet, 0.05 otherwise.

        ``overrides`` set any field; a None value keeps the protocol's (so CLI options pass straight through).
        """
        lr = 0.01 if any(part in model_name.lower() for part in SMALL_LR_MODELS) else 0.05
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(**{"lr": lr, **given})

    @classmethod
    def for_dataset(cls, model_name: str, dataset: str, **overrides: Any) -> TrainConfig:
        """``crd_protocol``, shortened to ``DIGITS_EPOCHS`` on ``digits`` unless epochs are given."""
        if dataset == "digits" and overrides.get("epochs") is None:
            overrides = {**overrides, "epochs": DIGITS_EPOCHS}
        return cls.crd_protocol(model_name, **overrides)


class EpochRecord(NamedTuple):
    """One epoch of history: mean training loss, training and test top-1 (%) and wall seconds.

    ``test_acc`` is None on epochs skipped by ``eval_every``.
    """

    epoch: int
    train_loss: float
    train_acc: float
    test_acc: float | None
    seconds: float


@dataclass
class TrainResult:
    """What a training run achieved: best-epoch and last-epoch test top-1 (%), the history, where it lives.

    Papers' tables mix the two numbers (RepDistiller reports the best epoch), so both are kept.
    """

    best_acc: float
    best_epoch: int
    last_acc: float
    history: list[EpochRecord]
    config: TrainConfig
    seconds: float
    run_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the content of ``results.json``)."""
        return {"best_acc": self.best_acc, "best_epoch": self.best_epoch, "last_acc": self.last_acc,
                "epochs_done": len(self.history), "seconds": round(self.seconds, 3),
                "run_dir": str(self.run_dir) if self.run_dir else None, "config": asdict(self.config),
                **self.extra, "history": [r._asdict() for r in self.history]}


# ------------------------------------------------------------------------------------------------ the engine


def output_classes(model: nn.Module, split: ImageSplit) -> int:
    """The number of classes ``model`` predicts (its ``num_classes``, or the logit width on two images)."""
    classes = getattr(model, "num_classes", None)
    if isinstance(classes, int):
        return classes
    return probe_shapes(model, split)["logit"][0]


def probe_shapes(model: nn.Module, split: ImageSplit) -> dict[str, tuple[int, ...]]:
    """Per-sample shapes of ``model``'s Features on two images of ``split`` (eval mode, no gradient).

    Distillers with learned connectors are built from these before the optimiser is created.
    """
    device = next(iter(model.parameters()), torch.empty(0)).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(split.normalize(split.images[:2].to(device)))
    model.train(was_training)
    if not isinstance(out, Features):
        raise ConfigError(f"{type(model).__name__} must return Features(feat, emb, logit); wrap it with "
                          "kdzero.models.wrap_model")
    return feature_shapes(out)


def check_classes(model: nn.Module, data: DatasetSplits, role: str) -> None:
    """Raise ConfigError when ``model`` predicts another number of classes than ``data`` has."""
    classes = output_classes(model, data.test)
    if classes != data.num_classes:
        raise ConfigError(f"{role} predicts {classes} classes but dataset {data.name} has {data.num_classes}")


@torch.no_grad()
def evaluate(model: nn.Module, split: ImageSplit, batch_size: int = 500, amp: bool = False) -> float:
    """Top-1 accuracy (%) of ``model`` on ``split`` in eval mode (un-augmented, normalised images)."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(split), batch_size):
        x = split.normalize(split.images[start:start + batch_size])
        with _autocast(split.device, amp):
            logit = model(x).logit
        correct += int((logit.argmax(1) == split.labels[start:start + batch_size]).sum())
    model.train(was_training)
    return 100.0 * correct / max(1, len(split))


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """One epoch of shuffled index batches; a final batch of a single image is dropped (BatchNorm needs two)."""
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        if idx.numel() > 1:
            yield idx


def _num_batches(n: int, batch_size: int) -> int:
    return n // batch_size + (1 if n % batch_size > 1 else 0)


def _save(obj: Any, path: Path) -> None:
    """torch.save through a temporary file, so an interrupted write never leaves a truncated checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _load_last(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load fails on a damaged file in many ways: see load_failure
        raise CheckpointError(f"cannot resume from {path}: {load_failure(err)}; delete it to start afresh") from None
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise CheckpointError(f"cannot resume from {path}: not a kdzero training checkpoint")
    return state


class _Progress:
    """A rich progress display with an epoch bar and a batch bar (on stderr), or nothing at all."""

    def __init__(self, enabled: bool, epochs: int, done: int, batches: int) -> None:
        self._bar = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                             console=Console(stderr=True), transient=True)
        self._epochs = self._bar.add_task("epochs", total=epochs, completed=done, info="")
        self._steps = self._bar.add_task("batches", total=batches, info="")

    def __enter__(self) -> Self:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def step(self, info: str) -> None:
        if self._bar is not None:
            self._bar.update(self._steps, advance=1, info=info)

    def epoch(self, info: str) -> None:
        if self._bar is not None:
            self._bar.update(self._epochs, advance=1, info=info)
            self._bar.reset(self._steps, info="")


def train_model(
    model: nn.Module,
    data: DatasetSplits,
    config: TrainConfig,
    *,
    teacher: nn.Module | None = None,
    distill_loss: nn.Module | None = None,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Log | None = None,
) -> TrainResult:
    """Train ``model`` on ``data.train`` with ``config``; evaluate top-1 on ``data.test``; checkpoint to ``run_dir``.

    With ``distill_loss`` (a UnifiedLoss or a classical method) the objective is CE plus its value on
    (student=, teacher=, target=); ``index=`` (the batch's training-split positions) is passed when its
    ``forward`` accepts one (CRD), ``set_epoch(epoch)`` is called at every epoch start when it exists (DKD's
    warm-up). ``resume`` continues from ``run_dir/last.pt`` when present, exactly as if never interrupted.
    ``log`` receives one line per epoch. Raises KdzeroError on a class-count mismatch, a non-finite loss (naming
    epoch and step) or an unreadable ``last.pt``.
    """
    if distill_loss is not None and teacher is None:
        raise ConfigError("a distillation loss needs a teacher")
    device = torch.device(config.device)
    check_classes(model, data, "student")
    if teacher is not None:
        check_classes(teacher, data, "teacher")
        teacher.to(device).eval().requires_grad_(False)
    train, test = data.train.to(device), data.test.to(device)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher.to(memory_format=torch.channels_last)
    params = list(model.parameters())
    if distill_loss is not None:
        distill_loss.to(device)
        params += [p for p in distill_loss.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                                nesterov=config.nesterov)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(config.milestones),
                                                     gamma=config.gamma)
    wants_index = distill_loss is not None and "index" in inspect.signature(distill_loss.forward).parameters
    set_epoch = getattr(distill_loss, "set_epoch", None)
    generator = torch.Generator().manual_seed(config.seed)
    out_dir = Path(run_dir) if run_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    say = log or (lambda _line: None)

    history: list[EpochRecord] = []
    best_acc, best_epoch, start, spent = -1.0, 0, 1, 0.0
    last_path = out_dir / "last.pt" if out_dir is not None else None
    if resume and last_path is not None and last_path.is_file():
        state = _load_last(last_path)
        _check_resumable(state, config, last_path)
        try:
            model.load_state_dict(state["model"])
            if distill_loss is not None:
                distill_loss.load_state_dict(state["loss"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise CheckpointError(f"{last_path} does not fit this model or distiller ({str(err).splitlines()[0]}); "
                                  "use another --out or drop --resume") from None
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        history = [EpochRecord(**r) for r in state["history"]]
        best_acc, best_epoch, spent = state["best_acc"], state["best_epoch"], state["seconds"]
        start = state["epoch"] + 1
        say(f"resumed from {last_path} after epoch {state['epoch']}")
    else:
        torch.manual_seed(config.seed)

    per_epoch = _num_batches(len(train), config.batch_size)
    with _Progress(progress, config.epochs, start - 1, per_epoch) as bar:
        for epoch in range(start, config.epochs + 1):
            began = time.perf_counter()
            model.train()
            if distill_loss is not None:
                distill_loss.train()
            if set_epoch is not None:
                set_epoch(epoch)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), dtype=torch.long, device=device)
            seen = 0
            for step, idx in enumerate(_batches(len(train), config.batch_size, generator), 1):
                dev_idx = idx.to(device)
                images = train.images[dev_idx]
                if config.augment:
                    images = augment(images, generator, flip=data.flip_augment)
                x, y = train.normalize(images), train.labels[dev_idx]
                if config.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with _autocast(device, config.amp):
                    out = model(x)
                    if distill_loss is not None:
                        with torch.no_grad():
                            t_out = teacher(x)
                out = out.for_loss()
                loss = F.cross_entropy(out.logit, y)
                if distill_loss is not None:
                    extra = {"index": dev_idx} if wants_index else {}
                    loss = loss + distill_loss(student=out, teacher=t_out.for_loss(), target=y, **extra).float()
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise KdzeroError(f"training stopped: the loss became {value} at epoch {epoch}, step {step} "
                                      f"(lr {optimizer.param_groups[0]['lr']:g}); lower the learning rate or the "
                                      f"distiller's magnitude; last.pt keeps the previous epoch")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach() * len(idx)
                correct += (out.logit.detach().argmax(1) == y).sum()
                seen += len(idx)
                bar.step(f"loss {value:.3f}")
            scheduler.step()
            test_acc = None
            if epoch % config.eval_every == 0 or epoch == config.epochs:
                test_acc = evaluate(model, test, amp=config.amp)
            record = EpochRecord(epoch, float(loss_sum) / max(seen, 1), 100.0 * float(correct) / max(seen, 1),
                                 test_acc, time.perf_counter() - began)
            history.append(record)
            spent += record.seconds
            if test_acc is not None and test_acc > best_acc:
                best_acc, best_epoch = test_acc, epoch
                if out_dir is not None:
                    _save({"model": model.state_dict(), "epoch": epoch, "best_acc": best_acc}, out_dir / "best.pt")
            shown = f"test {test_acc:.2f}%" if test_acc is not None else "test -"
            best = f"best {best_acc:.2f}% (epoch {best_epoch})" if best_epoch else "best -"
            line = (f"epoch {epoch}/{config.epochs}  loss {record.train_loss:.4f}  train {record.train_acc:.2f}%  "
                    f"{shown}  {best}  {record.seconds:.1f}s")
            bar.epoch(shown)
            if out_dir is not None:
                _save({"model": model.state_dict(),
                       "loss": distill_loss.state_dict() if distill_loss is not None else {},
                       "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                       "epoch": epoch, "best_acc": best_acc, "best_epoch": best_epoch, "seconds": spent,
                       "config": asdict(config), "history": [r._asdict() for r in history],
                       "rng": {"generator": generator.get_state(), "torch": torch.get_rng_state(),
                               "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}},
                      last_path)
                _write_json(_result(history, config, best_acc, best_epoch, spent, out_dir).to_dict(),
                            out_dir / "results.json")
            say(line)
    return _result(history, config, best_acc, best_epoch, spent, out_dir)


_RESUME_FREE = ("device", "eval_every", "amp", "channels_last")


def _check_resumable(state: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """Refuse to resume a run whose schedule or data order would differ from the saved one."""
    saved = state.get("config", {})
    now = asdict(config)
    differ = [k for k in now if k not in _RESUME_FREE and k in saved and _plain(saved[k]) != _plain(now[k])]
    if differ:
        shown = ", ".join(f"{k} {saved[k]!r} -> {now[k]!r}" for k in differ)
        raise ConfigError(f"cannot resume {path}: the run was started with other settings ({shown}); use the "
                          "same settings, another --out, or drop --resume")
    if state["epoch"] > config.epochs:
        raise ConfigError(f"cannot resume {path}: it has already trained {state['epoch']} epochs, more than "
                          f"{config.epochs}")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _result(history: list[EpochRecord], config: TrainConfig, best_acc: float, best_epoch: int, seconds: float,
            run_dir: Path | None) -> TrainResult:
    evaluated = [r.test_acc for r in history if r.test_acc is not None]
    return TrainResult(best_acc=max(best_acc, 0.0), best_epoch=best_epoch,
                       last_acc=evaluated[-1] if evaluated else 0.0, history=history, config=config,
                       seconds=seconds, run_dir=run_dir)


# ------------------------------------------------------------------------------------ data, teachers, replay


def load_data(
    dataset: str,
    data_root: str | os.PathLike | None = None,
    *,
    normalize: str = "dataset",
    train_subset: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> DatasetSplits:
    """``load_dataset`` with a normalisation choice (``NORMALIZATIONS``) and an optional class-balanced,
    seeded training subset of ``train_subset`` images (for short experiments).

    ImageFolder datasets keep their decoded tensors in ``cache_dir`` (default ``~/.cache/kdzero/imagefolder``)
    so that the next run skips JPEG decoding.
    """
    if normalize not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalisation {normalize!r}; {suggest(normalize, NORMALIZATIONS)}")
    stats = NORMALIZATIONS[normalize]
    if cache_dir is None and dataset.startswith("imagefolder:"):
        cache_dir = Path("~/.cache/kdzero/imagefolder").expanduser()
    data = load_dataset(dataset, root=data_root, mean=stats[0] if stats else None,
                        std=stats[1] if stats else None, cache_dir=cache_dir)
    if train_subset is not None:
        if train_subset < 2 * data.num_classes:
            raise ConfigError(f"train subset must hold at least 2 images per class ({2 * data.num_classes}), "
                              f"got {train_subset}")
        data = replace(data, train=proxy_subset(data.train, per_class=train_subset // data.num_classes))
    return data


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace("imagefolder:", "")).strip("_") or "data"


def replay_dir(student: str, dataset: str, label: str) -> Path:
    """The default folder of a replay: ``runs/replay/<student>-<dataset>-<distiller>``."""
    return Path("runs/replay") / f"{_slug(student)}-{_slug(dataset)}-{_slug(label)}"


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
