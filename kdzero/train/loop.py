"""The training loop: ``train_model`` trains one model (CE, or CE plus a distiller) and evaluates it every epoch.

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
``{"model": state_dict, ...}`` layout ``load_checkpoint`` reads); ``results.json`` holds the numbers
(``kdzero.train.checkpoint`` writes them). Here too: ``evaluate`` (top-1 on a split), the class and shape probes
run before training, and the progress display.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Self

import torch
import torch.nn.functional as F
from torch import nn

from kdzero.data import DatasetSplits, ImageSplit, augment
from kdzero.errors import CheckpointError, ConfigError, KdzeroError
from kdzero.features import Features
from kdzero.loss import feature_shapes
from kdzero.train.checkpoint import _check_resumable, _load_last, _save, _write_json
from kdzero.train.config import EpochRecord, Log, TrainConfig, TrainResult


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
    heartbeat: Callable[[], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``data.train`` with ``config``; evaluate top-1 on ``data.test``; checkpoint to ``run_dir``.

    With ``distill_loss`` (a UnifiedLoss or a classical method) the objective is CE plus its value on
    (student=, teacher=, target=); ``index=`` (the batch's training-split positions) is passed when its
    ``forward`` accepts one (CRD), ``set_epoch(epoch)`` is called at every epoch start when it exists (DKD's
    warm-up). ``resume`` continues from ``run_dir/last.pt`` when present, exactly as if never interrupted.
    ``log`` receives one line per epoch. ``heartbeat`` is called after every optimiser step and evaluation: a
    worker that claimed this training in a shared study keeps its claim alive with it (kdzero.search.claims
    takes over claims whose beat is older than its grace period). Raises KdzeroError on a class-count mismatch,
    a non-finite loss (naming epoch and step) or an unreadable ``last.pt``.
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
                if heartbeat is not None:
                    heartbeat()
            scheduler.step()
            test_acc = None
            if epoch % config.eval_every == 0 or epoch == config.epochs:
                test_acc = evaluate(model, test, amp=config.amp)
                if heartbeat is not None:
                    heartbeat()
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


def _result(history: list[EpochRecord], config: TrainConfig, best_acc: float, best_epoch: int, seconds: float,
            run_dir: Path | None) -> TrainResult:
    evaluated = [r.test_acc for r in history if r.test_acc is not None]
    return TrainResult(best_acc=max(best_acc, 0.0), best_epoch=best_epoch,
                       last_acc=evaluated[-1] if evaluated else 0.0, history=history, config=config,
                       seconds=seconds, run_dir=run_dir)
