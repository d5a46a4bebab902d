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

One module per concern: ``task`` (``ProxyConfig``, ``ProxyTask``, ``ProxyResult``), ``candidate`` (one genome's
training state, losses and rejection), ``group`` (candidates stacked and stepped as one vmapped model),
``evaluate`` (``evaluate``, ``evaluate_one``, ``auto_group_size``). Every name is importable from
``kdzero.proxy`` as before, the private helpers that tests and experiments reach for included.
"""
from __future__ import annotations

from kdzero.proxy.candidate import EMA_DECAY, _autocast, _Candidate, _Rejected, _sgd
from kdzero.proxy.evaluate import CPU_GROUP, _static_rejection, auto_group_size, evaluate, evaluate_one
from kdzero.proxy.group import _StackedGroup
from kdzero.proxy.task import ProxyConfig, ProxyResult, ProxyTask, _memory_format

__all__ = [
    "CPU_GROUP",
    "EMA_DECAY",
    "ProxyConfig",
    "ProxyResult",
    "ProxyTask",
    "_Candidate",
    "_Rejected",
    "_StackedGroup",
    "_autocast",
    "_memory_format",
    "_sgd",
    "_static_rejection",
    "auto_group_size",
    "evaluate",
    "evaluate_one",
]
