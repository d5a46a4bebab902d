"""A training run's schedule and what it returns: ``TrainConfig``, the CRD protocol's constants, the history.

Everything else in ``kdzero.train`` reads these: the loop trains by a ``TrainConfig`` and returns a
``TrainResult``, a teacher's identity is its config, a replay runs one config per seed.

Schedule: the CRD/RepDistiller protocol by default (240 epochs, batch 64, SGD momentum 0.9, lr 0.05 or 0.01 for
MobileNet/ShuffleNet, weight decay 5e-4, lr x0.1 at epochs 150/180/210). A shorter (or longer) run that gives no
milestones of its own keeps the same shape: milestones at 150/240, 180/240 and 210/240 of its epochs, rounded.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from kdzero.errors import ConfigError

CRD_MILESTONES: tuple[int, ...] = (150, 180, 210)
"""The CRD protocol's lr-decay epochs for its 240-epoch schedule; other lengths scale them (see TrainConfig)."""

CRD_EPOCHS = 240
"""Length of the CRD protocol's schedule, the reference ``CRD_MILESTONES`` are given for."""

SMALL_LR_MODELS: tuple[str, ...] = ("mobilenet", "shufflenet")
"""Model-name fragments that the CRD protocol trains with lr 0.01 instead of 0.05."""

DIGITS_EPOCHS = 30
"""Default epochs on ``digits`` (1,197 8x8 training images): 30 epochs of the CRD schedule (milestones scaled to
19/23/26) take resnet8 to ~99 % test top-1 in about 30 s of training on one busy CPU core."""

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
