"""What every candidate of one proxy evaluation shares, and what goes in and comes out of it.

``ProxyConfig`` is the budget and the rejection thresholds; ``ProxyResult`` what the proxy found out about one
genome (JSON-able, so studies store it). ``ProxyTask`` holds the frozen teacher's cached outputs on V augmented
views of the proxy train split (``TeacherCache``), the resident validation tensors with the teacher's validation
features and sharpness, the student factory, and the CE-only baseline run that rejection compares against. It is
built once per run (and per worker process); the candidates (``kdzero.proxy.candidate``) read it and never
change it.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from kdzero.data import AugmentedViews, DatasetSplits, ImageSplit
from kdzero.errors import ConfigError
from kdzero.features import Features
from kdzero.loss import feature_shapes
from kdzero.scoring import ScoreWeights, evaluate_classifier, sharpness
from kdzero.teacher_cache import TeacherCache


@dataclass
class ProxyConfig:
    """Budget and rejection thresholds of one proxy evaluation."""

    steps: int = 150
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    num_views: int = 4
    train_subset: int | None = None  # images per class in the proxy train split (None: the whole train split)
    warmup_steps: int = 20
    ratio_band: tuple[float, float] = (1e-5, 1e3)
    divergence_margin: float = 1.0
    grad_clip: float = 10.0
    rho: float = 0.05
    sharpness_samples: int = 256
    cka_samples: int = 512
    seed: int = 0
    device: str = "cpu"
    bf16: bool = False  # bf16 autocast of the student's forward (CUDA, or a CPU with native bf16: AMX)
    channels_last: bool = True  # NHWC convolutions: 1.1-1.8x faster steps on CPU (VGG: even), bench_precision
    weights: ScoreWeights = field(default_factory=ScoreWeights)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.num_views < 1:
            raise ConfigError(f"proxy steps, batch_size and num_views must be >= 1, got {self.steps}, "
                              f"{self.batch_size}, {self.num_views}")
        low, high = self.ratio_band
        if not 0 <= low < high:
            raise ConfigError(f"ratio_band must be (low, high) with 0 <= low < high, got {self.ratio_band}")


@dataclass
class ProxyResult:
    """What a proxy evaluation found out about one genome. ``score`` is lower-is-better; +inf if rejected."""

    genome: str
    status: str  # "complete" or "rejected"
    stage: str = ""  # rejection stage: static, first_batch, training
    reason: str = ""
    steps: int = 0
    seconds: float = 0.0
    val_ce: float = math.inf
    val_acc: float = 0.0
    sharpness: float = math.inf
    s_gap: float = math.inf
    cka_gap: float = math.inf
    score: float = math.inf
    loss_ratio: float = math.nan

    @property
    def rejected(self) -> bool:
        """True when the genome was rejected before its score could be computed."""
        return self.status == "rejected"

    def to_dict(self) -> dict:
        """Plain-data form (JSON-able, infinities as None)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> ProxyResult:
        """Inverse of ``to_dict``."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for name in ("val_ce", "sharpness", "s_gap", "cka_gap", "score"):
            if known.get(name) is None:
                known[name] = math.inf
        if known.get("loss_ratio") is None:
            known["loss_ratio"] = math.nan
        return cls(**known)


class ProxyTask:
    """Everything the candidates of one search share; built once per run (and per worker process).

    ``student_factory(num_classes, in_chans)`` builds a fresh student; it is called under a fixed seed so every
    candidate starts from the same weights.
    """

    # ``kdzero.proxy.evaluate.evaluate``, which ``baseline()`` trains the CE-only student with. That module imports
    # this one, so it hands the function over when it loads (ProxyTask._evaluate = ...) instead of this module
    # importing it back, which would be an import cycle. Loading any of kdzero.proxy loads both.
    _evaluate: Callable[..., list[ProxyResult]]

    def __init__(self, teacher: nn.Module, student_factory: Callable[[], nn.Module], data: DatasetSplits,
                 config: ProxyConfig, cache_dir: str | Path, log: Callable[[str], None] = print,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.config = config
        self.device = torch.device(config.device)
        self.data = data
        self.student_factory = student_factory
        self.teacher = _memory_format(teacher.to(self.device), config).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        train = data.train
        if config.train_subset:
            from kdzero.data import proxy_subset

            train = proxy_subset(train, per_class=config.train_subset, seed=config.seed)
        train = train.to(self.device)
        self.views = AugmentedViews(train, config.num_views, seed=config.seed, flip=data.flip_augment)
        self.cache = TeacherCache.build_or_load(self.teacher, self.views, cache_dir, device=self.device, log=log,
                                                progress=progress)
        self.labels = train.labels
        self.val_x, self.val_y = self._resident(data.val)
        with torch.no_grad():
            _, self.teacher_val_acc, teacher_feat = evaluate_classifier(self.teacher, self.val_x, self.val_y)
        self.teacher_val_feat = teacher_feat[: config.cka_samples]
        self.teacher_sharpness = self._sharpness(self.teacher)
        probe = self.new_student()
        with torch.no_grad():
            probe_out = probe.eval()(self.val_x[:2])
            teacher_out = self.teacher(self.val_x[:2])
        self.student_shapes = feature_shapes(probe_out)
        self.teacher_shapes = feature_shapes(teacher_out)
        self._baseline: ProxyResult | None = None
        self._baseline_ce: list[float] | None = None

    def _resident(self, split: ImageSplit) -> tuple[torch.Tensor, torch.Tensor]:
        split = split.to(self.device)
        return split.normalize(split.images), split.labels

    def _sharpness(self, model: nn.Module) -> float:
        n = self.config.sharpness_samples
        return sharpness(model, self.val_x[:n], self.val_y[:n], rho=self.config.rho)

    def new_student(self) -> nn.Module:
        """A fresh student with the run's fixed initialisation, on the task's device, in train mode."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            student = self.student_factory()
        return _memory_format(student.to(self.device), self.config).train()

    def batch(self, view_ids: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Features]:
        """(images, labels, cached teacher outputs) of one step, images in the students' memory format."""
        x = self.views.batch(view_ids, indices)
        if self.config.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.labels[indices], self.cache.get(view_ids, indices)

    def batches(self):
        """The fixed stream of (view_ids, indices) every candidate trains on."""
        generator = torch.Generator().manual_seed(self.config.seed)
        return self.views.batches(self.config.batch_size, self.config.steps, generator)

    def baseline(self) -> ProxyResult:
        """The CE-only student's proxy result (computed once): the reference a distiller must beat."""
        if self._baseline is None:
            self._baseline = self._evaluate(self, [None])[0]
        return self._baseline

    def set_baseline(self, result: ProxyResult, ce_curve: list[float]) -> None:
        """Adopt a CE-only baseline computed elsewhere (another worker of the same study, same settings)."""
        if len(ce_curve) != self.config.steps:
            raise ConfigError(f"baseline curve has {len(ce_curve)} steps, this proxy trains {self.config.steps}")
        self._baseline, self._baseline_ce = result, list(ce_curve)

    def baseline_ce_curve(self) -> list[float]:
        """The CE-only student's training-CE moving average at every step (for the divergence check)."""
        if self._baseline_ce is None:
            self.baseline()
        return self._baseline_ce


def _memory_format(model: nn.Module, config: ProxyConfig) -> nn.Module:
    return model.to(memory_format=torch.channels_last) if config.channels_last else model
