"""Short proxy training of genomes, with loss rejection, returning one ``ProxyResult`` per genome.

A ``ProxyTask`` holds what every candidate shares: the frozen teacher's cached outputs on V augmented views of
the proxy train split (``TeacherCache``), the resident validation tensors with the teacher's validation
features and sharpness, the student factory, and the CE-only baseline run that rejection compares against.
``evaluate(task, genomes)`` trains a fresh, identically initialised student per genome for ``steps`` SGD steps
on CE + UnifiedLoss and scores it (``kdzero.scoring``).

Candidates are independent state (student, loss, optimiser, RNG, status) stepped side by side over one stream
of batches: a group shares each batch's data and teacher lookup, and a rejected candidate simply stops
stepping, leaving the others untouched. Results therefore do not depend on group composition.

Rejection, each recorded with its stage, reason and the steps it cost:
* ``static``: the genome is invalid for the teacher/student shapes, or not finite on random inputs (0 steps);
* ``first_batch``: the distillation loss is not finite, or its ratio to CE is outside ``ratio_band``;
* ``training``: a non-finite loss or gradient, or training CE above the CE-only student's by
  ``divergence_margin`` (exponential moving averages) after ``warmup_steps``.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kdzero.data import AugmentedViews, DatasetSplits, ImageSplit
from kdzero.errors import ConfigError, GenomeError
from kdzero.features import Features
from kdzero.genome import Genome
from kdzero.loss import UnifiedLoss, check_runs, feature_shapes
from kdzero.scoring import ScoreWeights, evaluate_classifier, linear_cka, sharpness
from kdzero.teacher_cache import TeacherCache

EMA_DECAY = 0.9
CPU_GROUP = 4  # looped group size that pays on CPU (see auto_group_size)


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


class _Rejected(Exception):
    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.stage, self.reason = stage, reason


class ProxyTask:
    """Everything the candidates of one search share; built once per run (and per worker process).

    ``student_factory(num_classes, in_chans)`` builds a fresh student; it is called under a fixed seed so every
    candidate starts from the same weights.
    """

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
            self._baseline = evaluate(self, [None])[0]
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


class _Candidate:
    """One genome's private training state; nothing here is shared with another candidate.

    A candidate trains alone (``step``), or as one slice of a ``_StackedGroup`` that owns the stacked student
    weights while training; either way it computes its own losses and keeps its own rejection state.
    """

    def __init__(self, task: ProxyTask, genome: Genome | None) -> None:
        cfg = task.config
        self.genome = genome
        self.is_baseline = genome is None
        self.result = ProxyResult(genome=str(genome) if genome is not None else "ce-only", status="running")
        self.alive = True
        self.seconds = 0.0
        start = time.perf_counter()
        self.student = task.new_student()
        self.loss_fn: UnifiedLoss | None = None
        if genome is not None:
            generator = torch.Generator(device=task.device).manual_seed(cfg.seed)
            with torch.random.fork_rng(devices=[]):  # a connector's initial weights, like the student's, are seeded
                torch.manual_seed(cfg.seed)
                self.loss_fn = UnifiedLoss(genome, task.student_shapes, task.teacher_shapes, generator=generator)
            self.loss_fn.to(task.device)
        self.trained = list(self.student.parameters()) + self.loss_parameters()
        self.optimizer = _sgd(self.trained, cfg)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cfg.steps)
        self.ce_ema: float | None = None
        self.ce_curve: list[float] = []
        self.seconds += time.perf_counter() - start

    def loss_parameters(self) -> list[torch.nn.Parameter]:
        """The distillation loss's own parameters (a connector), trained with the student."""
        return list(self.loss_fn.parameters()) if self.loss_fn is not None else []

    def reject(self, stage: str, reason: str) -> None:
        self.alive = False
        self.result.status, self.result.stage, self.result.reason = "rejected", stage, reason

    def losses(self, task: ProxyTask, step: int, out: Features, y: torch.Tensor,
               teacher: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """(total, ce) for this step's student output; raises _Rejected on a first-batch or non-finite loss."""
        cfg = task.config
        ce = F.cross_entropy(out.logit.float(), y)
        kd = self.loss_fn(student=out, teacher=teacher, target=y) if self.loss_fn is not None else None
        total = ce if kd is None else ce + kd.float()
        if step == 0 and kd is not None:
            self._check_first_batch(float(kd.detach()), float(ce.detach()), cfg)
        if not torch.isfinite(total.detach()):
            raise _Rejected("training", f"non-finite loss at step {step + 1}")
        return total, ce

    def after_step(self, task: ProxyTask, step: int, ce: torch.Tensor) -> None:
        """Bookkeeping after an optimiser step: CE moving average and the divergence check."""
        cfg = task.config
        ce_value = float(ce.detach())
        self.ce_ema = ce_value if self.ce_ema is None else EMA_DECAY * self.ce_ema + (1 - EMA_DECAY) * ce_value
        self.ce_curve.append(self.ce_ema)
        self.result.steps = step + 1
        if not self.is_baseline and step + 1 >= cfg.warmup_steps:
            reference = task.baseline_ce_curve()[step]
            if self.ce_ema > reference + cfg.divergence_margin:
                raise _Rejected("training", f"training CE {self.ce_ema:.3f} exceeds the CE-only student's "
                                            f"{reference:.3f} by more than {cfg.divergence_margin:g} at step "
                                            f"{step + 1}")

    def step(self, task: ProxyTask, step: int, x: torch.Tensor, y: torch.Tensor, teacher: Features) -> None:
        """One training step of this candidate alone."""
        cfg = task.config
        start = time.perf_counter()
        try:
            with _autocast(task):
                out = self.student(x)
            total, ce = self.losses(task, step, out.for_loss(), y, teacher)
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.trained, cfg.grad_clip)
            if not torch.isfinite(grad_norm):
                raise _Rejected("training", f"non-finite gradient at step {step + 1}")
            self.optimizer.step()
            self.scheduler.step()
            self.after_step(task, step, ce)
        except _Rejected as rejection:
            self.result.steps = step + 1
            self.reject(rejection.stage, rejection.reason)
        finally:
            self.seconds += time.perf_counter() - start

    def _check_first_batch(self, kd: float, ce: float, cfg: ProxyConfig) -> None:
        if not math.isfinite(kd):
            raise _Rejected("first_batch", "distillation loss is not finite on the first batch")
        ratio = abs(kd) / max(ce, 1e-12)
        self.result.loss_ratio = ratio
        low, high = cfg.ratio_band
        if ratio > high:
            raise _Rejected("first_batch", f"distillation loss {kd:.3g} swamps CE {ce:.3g} (ratio {ratio:.3g} > "
                                           f"{high:g})")
        if ratio < low:
            raise _Rejected("first_batch", f"distillation loss {kd:.3g} vanishes next to CE {ce:.3g} (ratio "
                                           f"{ratio:.3g} < {low:g})")

    def finish(self, task: ProxyTask) -> None:
        start = time.perf_counter()
        cfg = task.config
        val_ce, val_acc, feat = evaluate_classifier(self.student, task.val_x, task.val_y)
        s = task._sharpness(self.student)
        cka = linear_cka(feat[: cfg.cka_samples], task.teacher_val_feat)
        r = self.result
        r.status = "complete"
        r.val_ce, r.val_acc, r.sharpness = val_ce, val_acc, s
        r.s_gap = abs(s - task.teacher_sharpness)
        r.cka_gap = 1.0 - cka
        r.score = cfg.weights.combine(r.val_ce, r.s_gap, r.cka_gap)
        self.seconds += time.perf_counter() - start


def _sgd(params: list[torch.Tensor], cfg: ProxyConfig) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _autocast(task: ProxyTask):
    """bf16 autocast of the student's forward when the config asks for it, on CUDA and CPU alike. Losses run
    outside it, on ``Features.for_loss()``, so a genome's exp/pow4/Gram matrices stay in full precision."""
    return torch.autocast(task.device.type, dtype=torch.bfloat16, enabled=task.config.bf16)


def _memory_format(model: nn.Module, config: ProxyConfig) -> nn.Module:
    return model.to(memory_format=torch.channels_last) if config.channels_last else model


class _StackedGroup:
    """G students of one architecture trained as one: their weights stacked along a new leading axis
    (``torch.func.stack_module_state``) and run with ``vmap``, so one kernel launch serves the whole group.

    Each candidate keeps its own loss (genomes differ), its own gradient clipping (per-slice norms), its own
    connector optimiser and its own rejection: a rejected candidate's slice gets zero gradient from then on, so
    the others are not disturbed. SGD is elementwise, so one optimiser over the stacked weights is G independent
    optimisers. ``unstack`` writes the trained weights back into each candidate's student for scoring.
    """

    def __init__(self, task: ProxyTask, candidates: list[_Candidate]) -> None:
        from torch.func import functional_call, stack_module_state, vmap

        cfg = task.config
        self.candidates = candidates
        for c in candidates:  # vmap over NHWC weights falls back to slow per-slice kernels
            c.student.to(memory_format=torch.contiguous_format)
        self.params, self.buffers = stack_module_state([c.student for c in candidates])
        skeleton = copy.deepcopy(candidates[0].student).to("meta")
        self.forward = vmap(lambda p, b, x: functional_call(skeleton, (p, b), (x,)), in_dims=(0, 0, None),
                            randomness="different")
        self.optimizer = _sgd(list(self.params.values()), cfg)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cfg.steps)
        self.loss_optimizers = [_sgd(c.loss_parameters(), cfg) if c.loss_parameters() else None for c in candidates]
        self.loss_schedulers = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=cfg.steps) if o else None
                                for o in self.loss_optimizers]

    def step(self, task: ProxyTask, step: int, x: torch.Tensor, y: torch.Tensor, teacher: Features) -> None:
        """One step of every live candidate of the group."""
        cfg = task.config
        start = time.perf_counter()
        live = [i for i, c in enumerate(self.candidates) if c.alive]
        with _autocast(task):
            out = self.forward(self.params, self.buffers, x.contiguous())  # stacked weights are NCHW
        totals, ces = [], {}
        for i in live:
            candidate = self.candidates[i]
            try:
                total, ce = candidate.losses(task, step, Features(out.feat[i], out.emb[i], out.logit[i]).for_loss(),
                                             y, teacher)
                totals.append(total)
                ces[i] = ce
            except _Rejected as rejection:
                candidate.result.steps = step + 1
                candidate.reject(rejection.stage, rejection.reason)
        for p in self.params.values():
            p.grad = None
        for o in self.loss_optimizers:
            if o is not None:
                o.zero_grad(set_to_none=True)
        if totals:
            torch.stack(totals).sum().backward()
        for i in live:
            candidate = self.candidates[i]
            if not candidate.alive:
                continue
            slices = [p.grad[i] for p in self.params.values() if p.grad is not None]
            own = [p.grad for p in candidate.loss_parameters() if p.grad is not None]
            norm = torch.sqrt(sum(g.float().pow(2).sum() for g in slices + own))
            if not torch.isfinite(norm):
                candidate.result.steps = step + 1
                candidate.reject("training", f"non-finite gradient at step {step + 1}")
                continue
            scale = min(1.0, cfg.grad_clip / (float(norm) + 1e-6))
            if scale < 1.0:
                for g in slices + own:
                    g.mul_(scale)
        dead = [i for i, c in enumerate(self.candidates) if not c.alive]
        for p in self.params.values():
            if p.grad is not None and dead:
                p.grad[dead] = 0.0
        self.optimizer.step()
        self.scheduler.step()
        for i in live:
            if self.loss_optimizers[i] is not None and self.candidates[i].alive:
                self.loss_optimizers[i].step()
                self.loss_schedulers[i].step()
        for i in live:
            candidate = self.candidates[i]
            if candidate.alive:
                try:
                    candidate.after_step(task, step, ces[i])
                except _Rejected as rejection:
                    candidate.reject(rejection.stage, rejection.reason)
        share = (time.perf_counter() - start) / max(1, len(live))
        for i in live:
            self.candidates[i].seconds += share

    def unstack(self) -> None:
        """Copy each candidate's slice of the trained weights and BN statistics back into its student."""
        with torch.no_grad():
            for i, candidate in enumerate(self.candidates):
                for name, tensor in candidate.student.named_parameters():
                    tensor.copy_(self.params[name][i])
                for name, tensor in candidate.student.named_buffers():
                    tensor.copy_(self.buffers[name][i])


def auto_group_size(task: ProxyTask, limit: int = 32) -> int:
    """The group size that pays on this device.

    On CPU, stacking is slower than stepping the students one after another, but a looped group still shares
    each batch and teacher lookup: measured 1.30x candidates/hour at G = 4 and 1.31x at G = 8 for resnet56 ->
    resnet20 (experiments/bench_batched.py), so ``CPU_GROUP``. On CUDA one stacked step of two candidates measures
    the memory per candidate, and the group fills 80% of the free memory.
    """
    if task.device.type != "cuda":
        return CPU_GROUP
    torch.cuda.synchronize(task.device)
    torch.cuda.reset_peak_memory_stats(task.device)
    before = torch.cuda.memory_allocated(task.device)
    probe = [_Candidate(task, None) for _ in range(2)]
    group = _StackedGroup(task, probe)
    view_ids, indices = next(iter(task.batches()))
    group.step(task, 0, *task.batch(view_ids, indices))
    per_candidate = max(1, (torch.cuda.max_memory_allocated(task.device) - before) // 2)
    del group, probe
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(task.device)
    return max(1, min(limit, int(0.8 * free // per_candidate)))


def evaluate(task: ProxyTask, genomes: Sequence[Genome | None],
             on_step: Callable[[int, int], None] | None = None, stacked: bool | None = None) -> list[ProxyResult]:
    """Proxy-train and score ``genomes`` side by side; ``None`` stands for the CE-only student.

    ``stacked`` trains the group's students as one vmapped model (``_StackedGroup``); otherwise each steps on
    its own over the shared batch stream (bit-identical to evaluating it alone). The default stacks on CUDA,
    where it pays, and not on CPU, where it does not (experiments/bench_batched.py). Stacked and alone agree to
    float rounding (about 1e-7 per step); over long budgets a ReLU gate flipped by that rounding can grow the
    difference, as between any two kernel implementations.
    ``on_step(step, total)`` is called after every training step (progress display).
    """
    if stacked is None:
        stacked = task.device.type == "cuda"
    candidates: list[_Candidate] = []
    for genome in genomes:
        if genome is not None:
            try:
                genome.validate(task.student_shapes, task.teacher_shapes)
                check_runs(genome, task.student_shapes, task.teacher_shapes)
            except GenomeError as exc:
                result = ProxyResult(genome=str(genome), status="rejected", stage="static", reason=str(exc))
                candidates.append(_static_rejection(result))
                continue
        candidates.append(_Candidate(task, genome))
    if any(c.genome is not None and c.alive for c in candidates) and task._baseline_ce is None \
            and not any(c.is_baseline for c in candidates):
        task.baseline()
    cfg = task.config
    trainable = [c for c in candidates if c.alive]
    group = _StackedGroup(task, trainable) if stacked and len(trainable) > 1 else None
    for step, (view_ids, indices) in enumerate(task.batches()):
        alive = [c for c in candidates if c.alive]
        if not alive:
            break
        x, y, teacher = task.batch(view_ids, indices)
        if group is not None:
            group.step(task, step, x, y, teacher)
        else:
            for candidate in alive:
                candidate.step(task, step, x, y, teacher)
        if on_step is not None:
            on_step(step + 1, cfg.steps)
    if group is not None:
        group.unstack()
    for candidate in candidates:
        if candidate.alive:
            candidate.finish(task)
            if candidate.is_baseline:
                task._baseline_ce = candidate.ce_curve
                task._baseline = candidate.result
        candidate.result.seconds = candidate.seconds
    return [c.result for c in candidates]


def _static_rejection(result: ProxyResult) -> _Candidate:
    candidate = _Candidate.__new__(_Candidate)
    candidate.genome, candidate.is_baseline, candidate.result = None, False, result
    candidate.alive, candidate.seconds = False, 0.0
    return candidate


def evaluate_one(task: ProxyTask, genome: Genome) -> ProxyResult:
    """``evaluate`` for a single genome."""
    return evaluate(task, [genome])[0]
