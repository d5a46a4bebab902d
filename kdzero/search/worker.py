"""The worker loop of a search: ``run_worker`` asks the sampler for groups of trials, proxy-evaluates them and
tells each result to its trial until the study holds the planned number of finished trials, then works on the
higher rungs. Any number of workers, in processes or on machines, may run ``run_worker`` on the same study at
once. ``SearchObserver`` is the hooks a progress display overrides; ``Run`` an opened run."""
from __future__ import annotations

import time
from dataclasses import dataclass

import optuna

from kdzero.genome import Genome
from kdzero.proxy import ProxyResult, ProxyTask, auto_group_size, evaluate
from kdzero.search import rungs
from kdzero.search import study as studies
from kdzero.search.config import SearchConfig
from kdzero.search.space import suggest_genome


class SearchObserver:
    """Hooks for progress displays; every method is optional to override."""

    def log(self, message: str) -> None:
        """A line of information."""

    def trials_started(self, numbers: list[int], genomes: list[Genome]) -> None:
        """A group of trials is about to be evaluated."""

    def step(self, step: int, total: int) -> None:
        """The group finished training step ``step`` of ``total``."""

    def trial_finished(self, number: int, genome: Genome, result: ProxyResult, duplicate_of: int | None) -> None:
        """A trial was told its result."""

    def rung_started(self, rung: int, steps: int, genomes: int) -> None:
        """Rung ``rung`` begins: ``genomes`` promoted genomes at ``steps`` proxy steps each."""

    def rung_result(self, rung: int, candidate: rungs.Candidate, result: ProxyResult) -> None:
        """This worker finished one promoted genome of rung ``rung``."""


@dataclass
class Run:
    """An opened run: its config, storage and study."""

    config: SearchConfig
    storage: optuna.storages.RDBStorage
    study: optuna.Study


WAIT_POLL = 1.0


def finished_trials(study: optuna.Study) -> int:
    """Trials that count towards the budget: complete or rejected."""
    count = studies.counts(study.get_trials(deepcopy=False))
    return count[optuna.trial.TrialState.COMPLETE] + count[optuna.trial.TrialState.PRUNED]


def remaining_trials(study: optuna.Study, budget: int) -> int:
    """How many more trials may start now: the budget minus finished and running ones."""
    count = studies.counts(study.get_trials(deepcopy=False))
    used = count[optuna.trial.TrialState.COMPLETE] + count[optuna.trial.TrialState.PRUNED] + \
        count[optuna.trial.TrialState.RUNNING]
    return budget - used


def run_worker(run: Run, task: ProxyTask, observer: SearchObserver | None = None,
               group_size: int | str | None = None) -> int:
    """Evaluate trials until the study reaches its planned number of finished trials, then work on the higher
    rungs (``kdzero.search.rungs``) until the top rung is complete; returns how many trainings this worker did.
    Ctrl-C (KeyboardInterrupt) fails and re-enqueues the trials in flight, then re-raises."""
    observer = observer or SearchObserver()
    study, budget = run.study, int(run.study.user_attrs.get(studies.BUDGET_ATTR, run.config.trials))
    group_size = group_size or run.config.group_size
    if group_size == "auto":
        group_size = auto_group_size(task)
        observer.log(f"group size auto: {group_size} candidates per step loop on {task.device}")
    recovered = studies.recover_dead_trials(study)
    if recovered:
        observer.log(f"re-queued trials {', '.join(map(str, recovered))} of a worker that died")
    evaluated = 0
    with studies.Heartbeat(study) as heartbeat:
        while finished_trials(study) < budget:
            room = remaining_trials(study, budget)
            if room <= 0:
                # Other workers hold the last trials; one of them may be dead, so wait and recover rather
                # than leave its trial unfinished.
                time.sleep(WAIT_POLL)
            else:
                trials = _without_surplus(study, [study.ask() for _ in range(min(group_size, room))], budget)
                if not trials:
                    continue
                try:
                    evaluated += _evaluate_group(study, task, trials, heartbeat, observer)
                except BaseException:
                    _abandon(study, trials)
                    raise
            if studies.recover_dead_trials(study):
                observer.log("re-queued the trials of a worker that died")
    evaluated += rungs.run_rungs(study, task, budget, run.config.eta, run.config.max_steps,
                                 group_size=group_size, observer=observer, on_step=observer.step,
                                 log=observer.log)
    return evaluated


def _evaluate_group(study: optuna.Study, task: ProxyTask, trials: list[optuna.Trial],
                    heartbeat: studies.Heartbeat, observer: SearchObserver) -> int:
    worker = studies.worker_id()
    genomes: list[Genome] = []
    for trial in trials:
        trial.set_user_attr("worker", worker)
        heartbeat.trial_ids.add(trial._trial_id)
        genome = suggest_genome(trial)
        trial.set_user_attr("key", genome.key)
        genomes.append(genome)
    heartbeat.beat()
    all_trials = study.get_trials(deepcopy=False)
    known = studies.finished_by_key(all_trials)
    mine = {t.number for t in trials}
    elsewhere = {studies.trial_key(t): t.number for t in sorted(all_trials, key=lambda t: -t.number)
                 if t.state == optuna.trial.TrialState.RUNNING and t.number not in mine}
    fresh: dict[str, Genome] = {}
    for trial, genome in zip(trials, genomes):
        if genome.key in known:
            continue
        if genome.key in elsewhere and elsewhere[genome.key] < trial.number:
            source = _wait_for(study, elsewhere[genome.key], heartbeat)
            if source is not None:
                known[genome.key] = source
                continue
        fresh.setdefault(genome.key, genome)
    observer.trials_started([t.number for t in trials], genomes)
    start = time.perf_counter()
    results = dict(zip(fresh, evaluate(task, list(fresh.values()), on_step=observer.step)))
    wall = time.perf_counter() - start
    first_trial_of_key: dict[str, int] = {}
    for trial, genome in zip(trials, genomes):
        if genome.key in known:
            studies.copy_result(study, trial, known[genome.key])
            observer.trial_finished(trial.number, genome, ProxyResult.from_dict(known[genome.key].user_attrs),
                                    known[genome.key].number)
        elif genome.key in first_trial_of_key:
            source = study.get_trials(deepcopy=False)[first_trial_of_key[genome.key]]
            studies.copy_result(study, trial, source)
            observer.trial_finished(trial.number, genome, results[genome.key], source.number)
        else:
            first_trial_of_key[genome.key] = trial.number
            result = results[genome.key]
            studies.tell_result(study, trial, genome.key, result,
                                {"genome": str(genome), "group_size": len(fresh), "group_wall": wall})
            observer.trial_finished(trial.number, genome, result, None)
        heartbeat.trial_ids.discard(trial._trial_id)
    return len(fresh)


def _without_surplus(study: optuna.Study, trials: list[optuna.Trial], budget: int) -> list[optuna.Trial]:
    """Drop trials asked beyond the budget: two workers that both saw one free slot ask two trials, and the
    later-numbered one is failed (marked ``surplus``) before it costs anything. Nothing planned is lost: the
    budget is already full, and a running trial whose worker dies is re-queued on its own."""
    trial_states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
    kept = []
    for trial in trials:
        ahead = sum(1 for number, state in trial_states.items() if number < trial.number and state in counted)
        if ahead < budget:
            kept.append(trial)
            continue
        trial.set_user_attr("surplus", True)
        studies._fail(study._storage, trial._trial_id)
    return kept


def _wait_for(study: optuna.Study, number: int, heartbeat: studies.Heartbeat,
              poll: float = 0.5) -> optuna.trial.FrozenTrial | None:
    """Wait for another worker's trial ``number`` (same canonical genome) to finish; its result is reused.
    Returns None if it failed instead (its worker died), in which case the caller evaluates the genome."""
    while True:
        trial = study._storage.get_trial(study._storage.get_trial_id_from_study_id_trial_number(
            study._study_id, number))
        if trial.state in studies.FINISHED:
            return trial
        if trial.state == optuna.trial.TrialState.FAIL:
            return None
        heartbeat.beat()
        studies.recover_dead_trials(study)
        time.sleep(poll)


def _abandon(study: optuna.Study, trials: list[optuna.Trial]) -> None:
    """Interrupted mid-group: fail the unfinished trials and enqueue their genomes again."""
    for trial in trials:
        frozen = study._storage.get_trial(trial._trial_id)
        if frozen.state == optuna.trial.TrialState.RUNNING and studies._fail(study._storage, trial._trial_id):
            study.enqueue_trial(frozen.params, user_attrs={"retry_of": frozen.number})

