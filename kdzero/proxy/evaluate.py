"""Proxy evaluation: train a group of genomes side by side over one batch stream and score each.

``evaluate(task, genomes)`` rejects statically invalid genomes (``static``: invalid for the teacher/student
shapes, or not finite on random inputs; 0 steps), trains a fresh, identically initialised student per remaining
genome for ``steps`` SGD steps on CE + UnifiedLoss, alone or stacked (``kdzero.proxy.group``), and scores it
(``kdzero.scoring``). ``auto_group_size`` says how many candidates to evaluate together on this device.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from kdzero.errors import GenomeError
from kdzero.genome import Genome
from kdzero.loss import check_runs
from kdzero.proxy.candidate import _Candidate
from kdzero.proxy.group import _StackedGroup
from kdzero.proxy.task import ProxyResult, ProxyTask

CPU_GROUP = 4  # looped group size that pays on CPU (see auto_group_size)


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


ProxyTask._evaluate = staticmethod(evaluate)  # ProxyTask.baseline() trains the CE-only student with it
