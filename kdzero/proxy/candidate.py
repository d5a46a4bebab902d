"""One candidate's proxy training: its private state, its losses, its rejection checks and its score.

A ``_Candidate`` holds everything one genome trains with (a student with the run's fixed initialisation, its
``UnifiedLoss`` and connector, optimiser, schedule, CE moving average, rejection status) and shares nothing with
another candidate, so a rejected one simply stops stepping and results do not depend on the group it trained in.
It steps alone (``step``) or as one slice of a stacked group (``kdzero.proxy.group``), which calls its ``losses``
and ``after_step``. Rejection, each recorded with its stage, reason and the steps it cost:

* ``first_batch``: the distillation loss is not finite, or its ratio to CE is outside ``ratio_band``;
* ``training``: a non-finite loss or gradient, or training CE above the CE-only student's by
  ``divergence_margin`` (exponential moving averages) after ``warmup_steps``.

(``static`` rejections, before any step, are ``kdzero.proxy.evaluate``'s.)
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from kdzero.features import Features
from kdzero.genome import Genome
from kdzero.loss import UnifiedLoss
from kdzero.proxy.task import ProxyConfig, ProxyResult, ProxyTask
from kdzero.scoring import evaluate_classifier, linear_cka

EMA_DECAY = 0.9


class _Rejected(Exception):
    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.stage, self.reason = stage, reason


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
