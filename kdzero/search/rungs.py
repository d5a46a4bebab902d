"""Rungs: synchronous successive halving on top of the search, so the genomes that matter get longer looks.

Rung 0 is the search itself: every trial's proxy score at ``proxy.steps``. When rung 0 is finished, the best
``ceil(n / eta)`` distinct complete genomes are promoted to rung 1 and proxy-trained for ``eta`` times more
steps; the best ``ceil(n_1 / eta)`` of rung 1 go on to rung 2, and so on up to ``max_steps`` (the top rung).
Promotion is by the rung's own score (ties by trial number), so it is a pure function of the finished lower
rung: every worker computes the same list, and a resumed search continues where the killed one stopped.

A promoted genome is trained again from the run's fixed initialisation at the longer budget, not continued
from its lower-rung state. Continuing would save at most ``1/eta`` of each higher rung (the steps already
done), but the proxy's cosine schedule has annealed to zero at the end of every rung, so a continuation is not
the longer training the rung claims to measure; a restarted rung score is exactly the proxy at that budget,
comparable between genomes, and needs no student/optimiser checkpoints shared between machines.

Each (rung, genome) is one claim in the study storage (``kdzero.search.claims``): several workers on one study
split a rung between them without training any (rung, genome) twice, and a killed worker's claim is taken
over. The CE-only student is trained once per rung too (the reference of the divergence check and of the
rung's leaderboard row). Results live in the study as user attributes ``kdzero_rung:<r>:<key>``.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from kdzero.genome import Genome
from kdzero.proxy import ProxyResult, ProxyTask, evaluate
from kdzero.search import claims
from kdzero.search import study as studies

PREFIX = "kdzero_rung:"
BASELINE_KEY = "ce-only"
POLL = 1.0


def rung_steps(base: int, eta: int, max_steps: int | None) -> list[int]:
    """Proxy steps of every rung: ``base``, ``base * eta``, ... capped at ``max_steps`` (the top rung).

    >>> rung_steps(120, 3, 1080), rung_steps(120, 3, 500), rung_steps(120, 3, None)
    ([120, 360, 1080], [120, 360, 500], [120])
    """
    steps = [base]
    while max_steps is not None and steps[-1] < max_steps:
        steps.append(min(steps[-1] * eta, max_steps))
    return steps


def unit_name(rung: int, key: str) -> str:
    """The storage name of (rung, genome key)."""
    return f"{PREFIX}{rung}:{key}"


def rung_entries(study: optuna.Study, rung: int) -> dict[str, dict]:
    """The claims and results of one rung, by genome key (``ce-only`` for the CE-only student)."""
    prefix = f"{PREFIX}{rung}:"
    return {name[len(prefix):]: entry for name, entry in claims.entries(study, prefix).items()}


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A genome in a rung: its rung-0 trial number, canonical key and text."""

    trial: int
    key: str
    genome: str


def rung0_finished(study: optuna.Study, budget: int) -> bool:
    """The search's own trials are all finished: the budget is reached and none is running."""
    trials = study.get_trials(deepcopy=False)
    count = studies.counts(trials)
    return count[TrialState.COMPLETE] + count[TrialState.PRUNED] >= budget and count[TrialState.RUNNING] == 0


def ranked_rung0(study: optuna.Study) -> list[tuple[Candidate, float]]:
    """Rung 0's complete genomes, one per canonical key, best score first (ties: lower trial number)."""
    first = studies.finished_by_key(study.get_trials(deepcopy=False))
    rows = [(Candidate(t.number, key, str(t.user_attrs.get("genome", ""))), float(t.value))
            for key, t in first.items() if t.state == TrialState.COMPLETE and t.value is not None]
    return sorted(rows, key=lambda row: (row[1], row[0].trial))


def ranked(study: optuna.Study, rung: int, entries: dict[str, dict] | None = None) -> list[tuple[Candidate, float]]:
    """A rung's complete genomes, best score first (ties: lower rung-0 trial number)."""
    if rung == 0:
        return ranked_rung0(study)
    entries = rung_entries(study, rung) if entries is None else entries
    rows = [(Candidate(e["trial"], key, e["genome"]), float(e["score"])) for key, e in entries.items()
            if key != BASELINE_KEY and e.get("state") == claims.DONE and e.get("status") == "complete"
            and e.get("score") is not None]
    return sorted(rows, key=lambda row: (row[1], row[0].trial))


def promoted(study: optuna.Study, rung: int, eta: int) -> list[Candidate]:
    """The genomes of ``rung`` (>= 1): the best ``ceil(n / eta)`` of the complete genomes of ``rung - 1``."""
    below = ranked(study, rung - 1)
    return [candidate for candidate, _ in below[:math.ceil(len(below) / eta)]]


def rung_complete(study: optuna.Study, rung: int, eta: int) -> bool:
    """Every genome promoted to ``rung`` (and its CE-only student) has its result."""
    entries = rung_entries(study, rung)
    wanted = [c.key for c in promoted(study, rung, eta)] + [BASELINE_KEY]
    return all(entries.get(key, {}).get("state") == claims.DONE for key in wanted)


def top_rung(study: optuna.Study) -> int:
    """The highest rung holding at least one finished complete genome (0 when none was promoted)."""
    rung = 0
    while ranked(study, rung + 1):
        rung += 1
    return rung


def task_at(task: ProxyTask, steps: int) -> ProxyTask:
    """``task`` with a budget of ``steps`` (data, teacher cache and validation tensors shared)."""
    longer = copy.copy(task)
    longer.config = dataclasses.replace(task.config, steps=steps)
    longer._baseline, longer._baseline_ce = None, None
    return longer


def run_rungs(study: optuna.Study, task: ProxyTask, budget: int, eta: int, max_steps: int | None,
              group_size: int = 1, observer=None,
              on_step: Callable[[int, int], None] | None = None, log: Callable[[str], None] | None = None) -> int:
    """Work on the rungs above 0 until the top rung is complete; returns how many (rung, genome) this worker
    trained. ``observer`` (a ``runner.SearchObserver``) hears ``rung_started`` and ``rung_result``. Waits
    (polling the storage) for rung 0 and for other workers' claims of a lower rung to finish."""
    plan = rung_steps(task.config.steps, eta, max_steps)
    trained = 0
    if len(plan) == 1:
        return 0
    while not rung0_finished(study, budget):
        time.sleep(POLL)
        if studies.recover_dead_trials(study) and log:
            log("re-queued the trials of a worker that died")
    beater = claims.Beater(study)

    def stepped(step: int, total: int) -> None:
        beater.tick()
        if on_step is not None:
            on_step(step, total)

    for rung in range(1, len(plan)):
        candidates = promoted(study, rung, eta)
        if not candidates:
            break
        if observer is not None:
            observer.rung_started(rung, plan[rung], len(candidates))
        rung_task = task_at(task, plan[rung])
        trained += _baseline_at(study, rung, rung_task, beater, stepped)
        while True:
            done = rung_entries(study, rung)
            todo = [c for c in candidates if done.get(c.key, {}).get("state") != claims.DONE]
            if not todo:
                break
            mine: list[Candidate] = []
            for candidate in todo:
                if len(mine) >= group_size:
                    break
                if claims.claim(study, unit_name(rung, candidate.key)):
                    mine.append(candidate)
            if not mine:
                time.sleep(POLL)  # the rest is held by live workers (or their claims are about to go stale)
                continue
            names = [unit_name(rung, c.key) for c in mine]
            beater.names.update(names)
            try:
                started = time.perf_counter()
                results = evaluate(rung_task, [Genome.parse(c.genome) for c in mine], on_step=stepped)
                wall = time.perf_counter() - started
            except BaseException:
                claims.release(study, names)
                raise
            for candidate, result in zip(mine, results):
                claims.finish(study, unit_name(rung, candidate.key),
                              {**result.to_dict(), "trial": candidate.trial, "key": candidate.key,
                               "rung": rung, "proxy_steps": plan[rung], "group_wall": wall})
                if observer is not None:
                    observer.rung_result(rung, candidate, result)
            beater.names.difference_update(names)
            trained += len(mine)
    return trained


def _baseline_at(study: optuna.Study, rung: int, task: ProxyTask, beater: claims.Beater,
                 on_step: Callable[[int, int], None]) -> int:
    """Give ``task`` the CE-only student at this rung's budget: trained once by whoever claims it, read by the
    others. Returns 1 if this worker trained it."""
    name = unit_name(rung, BASELINE_KEY)
    while True:
        entry = rung_entries(study, rung).get(BASELINE_KEY)
        if entry is not None and entry.get("state") == claims.DONE:
            task.set_baseline(ProxyResult.from_dict(entry), entry["ce_curve"])
            return 0
        if claims.claim(study, name):
            beater.names.add(name)
            try:
                result = evaluate(task, [None], on_step=on_step)[0]
            except BaseException:
                claims.release(study, [name])
                raise
            claims.finish(study, name, {**result.to_dict(), "ce_curve": task.baseline_ce_curve(), "rung": rung,
                                        "proxy_steps": task.config.steps, "key": BASELINE_KEY})
            beater.names.discard(name)
            return 1
        time.sleep(POLL)
