"""The stacked group: G candidates of one student architecture trained as one vmapped model.

Stacking pays on CUDA, where one kernel launch then serves the whole group, and not on CPU
(experiments/bench_batched.py); ``kdzero.proxy.evaluate`` chooses. Each candidate keeps its own loss, gradient
clipping and rejection (``kdzero.proxy.candidate``), so stacked and alone agree to float rounding.
"""
from __future__ import annotations

import copy
import time

import torch

from kdzero.features import Features
from kdzero.proxy.candidate import _autocast, _Candidate, _Rejected, _sgd
from kdzero.proxy.task import ProxyTask


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
