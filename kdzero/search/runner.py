"""Running a search: the proxy task from a config, the study, and the worker loop.

``prepare_run(config)`` creates or resumes ``runs/<name>/`` and its study; ``build_task(config)`` loads data,
teacher and student into a ``ProxyTask``; ``run_worker`` asks the sampler for groups of trials, proxy-evaluates
them and tells each result to its trial until the study holds the planned number of finished trials. Any number
of workers, in processes or on machines, may run ``run_worker`` on the same study at once.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import optuna
import torch

from kdzero.errors import ConfigError
from kdzero.genome import Genome, SearchSpace
from kdzero.models import create_model, load_checkpoint
from kdzero.presets import PRESETS
from kdzero.proxy import ProxyResult, ProxyTask, auto_group_size, evaluate
from kdzero.search import record
from kdzero.search import study as studies
from kdzero.search.config import SearchConfig
from kdzero.search.evolution import ShapeCheck
from kdzero.search.samplers import create_sampler
from kdzero.search.space import named_space, space_from_choices, suggest_genome
from kdzero.teacher_identity import weak_teacher_warning

Log = Callable[[str], None]


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


def configure_torch(config: SearchConfig) -> None:
    """Intra-op threads for this process: small students gain nothing from more than one per worker on a
    loaded CPU (measured 30-50x slower steps with 2 threads under load); use --workers for parallelism."""
    torch.set_num_threads(config.threads)


def build_task(config: SearchConfig, log: Log = print, progress: Callable[[int, int], None] | None = None,
               device: str | None = None) -> ProxyTask:
    """Data, teacher (loaded, or trained once for digits) and student factory of a run, as a ProxyTask."""
    from kdzero.train import describe_teacher, load_data

    data = load_data(config.dataset, config.data_root, normalize=config.normalize)
    teacher = create_model(config.teacher, num_classes=data.num_classes, in_chans=data.in_chans)
    create_model(config.student, num_classes=data.num_classes, in_chans=data.in_chans)  # fail fast on a bad name
    checkpoint = _teacher_checkpoint(config, data, log)
    load_checkpoint(teacher, checkpoint)
    proxy_config = config.proxy
    proxy_config.device = device or config.device
    proxy_config.weights = config.score
    proxy_config.seed = config.seed
    if proxy_config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {proxy_config.device!r} requested but CUDA is not available; use --device cpu")
    factory = partial(create_model, config.student, num_classes=data.num_classes, in_chans=data.in_chans)
    task = ProxyTask(teacher, factory, data, proxy_config, config.run_dir / "cache", log=log, progress=progress)
    log(describe_teacher(config.teacher, checkpoint, 100 * task.teacher_val_acc, measured_on="proxy validation"))
    return task


def _teacher_checkpoint(config: SearchConfig, data, log: Log):
    """The run's teacher checkpoint: the given file, or on digits the built-in teacher (trained once)."""
    from kdzero.train import ensure_teacher

    if config.teacher_ckpt is not None:
        return config.teacher_ckpt
    if config.dataset != "digits":
        raise ConfigError(f"--teacher-ckpt is required for dataset {config.dataset!r} (train one with "
                          f"'kdzero train-teacher --model {config.teacher} --dataset {config.dataset}')")
    log(f"built-in teacher: {config.teacher} on digits (trained once, kept in {config.run_dir / 'teacher'})")
    return ensure_teacher(config.teacher, data, root=config.run_dir / "teacher", progress=False, log=log)


@dataclass
class Run:
    """An opened run: its config, storage and study."""

    config: SearchConfig
    storage: optuna.storages.RDBStorage
    study: optuna.Study


def check_run_dir(config: SearchConfig, write: bool = True) -> None:
    """Refuse, before any work, to resume ``runs/<name>/`` with changed identity settings; then record the
    resolved config there (``write=False``: only check, so that a start that fails on bad input, e.g. a
    checkpoint that does not fit, leaves no config behind to refuse the corrected command later)."""
    saved_path = config.run_dir / "config.json"
    if saved_path.is_file():
        try:
            saved = json.loads(saved_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ConfigError(f"{saved_path} is corrupt; remove it to start the run afresh") from None
        config.check_resumable(saved)
    if not write:
        return
    config.run_dir.mkdir(parents=True, exist_ok=True)
    saved_path.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True))


def prepare_run(config: SearchConfig, is_valid: Callable[[Genome], bool] | None = None,
                log: Log = print) -> Run:
    """Create ``runs/<name>/`` and its study, or resume them (refusing changed identity settings)."""
    check_run_dir(config, write=False)
    storage = studies.make_storage(config.storage_url)
    presets = [g for g in PRESETS.values() if is_valid is None or is_valid(g)] if config.presets else []
    if config.sampler == "grid":
        presets = []  # the grid is the whole plan
    space = run_space(config, presets)
    sampler = create_sampler(config.sampler, space, seed=config.seed, population_size=config.population,
                             guided=config.guided, adaptive_shrink=config.adaptive_shrink, is_valid=is_valid,
                             log=log)
    study = studies.create_or_load_study(storage, config.study_name, sampler)
    saved_config = study.user_attrs.get(studies.CONFIG_ATTR)
    extended = config.check_resumable(saved_config) if saved_config is not None else []
    check_run_dir(config)  # only now: a refused run leaves the recorded config as it was
    studies.initialise(study, config.to_dict(), space, config.trials, presets)
    if saved_config is not None and extended:
        _extend(study, config, extended, log)
    elif saved_config is not None:
        log(f"resuming run {config.name}: {finished_trials(study)} of "
            f"{study.user_attrs.get(studies.BUDGET_ATTR, config.trials)} planned trials finished")
    return Run(config, storage, study)


def _extend(study: optuna.Study, config: SearchConfig, changes: list[str], log: Log) -> None:
    """Continue a run with more iterations or a larger population: record the new budget and config."""
    before = int(study.user_attrs.get(studies.BUDGET_ATTR, config.trials))
    study.set_user_attr(studies.BUDGET_ATTR, config.trials)
    study.set_user_attr(studies.CONFIG_ATTR, json.loads(json.dumps(config.to_dict())))
    done = finished_trials(study)
    log(f"continuing run {config.name} ({'; '.join(changes)}): {before} -> {config.trials} planned trials, "
        f"{done} finished")


def discard_run(config: SearchConfig) -> None:
    """``--fresh``: delete the run's study and its recorded config, pair and log so that it starts again.
    The teacher-output cache and a built-in teacher stay: they are keyed by content and still valid."""
    from kdzero.search import record

    storage_path = studies._sqlite_path(config.storage_url)
    if storage_path is not None and config.storage is None:
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(f"{storage_path}{suffix}").unlink(missing_ok=True)
    else:
        storage = studies.make_storage(config.storage_url, create=False)
        names = [s.study_name for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False)]
        if config.study_name in names:
            optuna.delete_study(study_name=config.study_name, storage=storage)
    for name in ("config.json", record.PAIR_FILE, record.META_FILE, record.LOG_FILE):
        (config.run_dir / name).unlink(missing_ok=True)


def run_pair(config: SearchConfig, task: ProxyTask) -> record.RunPair:
    """The resolved pair of a CLI run (what ``pair.json`` stores), from its config and loaded task."""
    checkpoint = _teacher_checkpoint(config, task.data, log=lambda message: None)
    path = Path(checkpoint).resolve()
    proxy = {k: getattr(task.config, k) for k in ("steps", "batch_size", "num_views", "train_subset", "lr")}
    return record.RunPair(
        teacher=config.teacher, student=config.student, dataset=config.dataset, normalize=config.normalize,
        num_classes=task.data.num_classes, in_chans=task.data.in_chans, image_size=list(task.data.image_size),
        data_root=str(Path(config.data_root).resolve()) if config.data_root else None,
        teacher_ckpt=str(path), teacher_sha256=record.file_sha256(path),
        student_shapes={k: list(v) for k, v in task.student_shapes.items()},
        teacher_shapes={k: list(v) for k, v in task.teacher_shapes.items()}, proxy=proxy)


def run_space(config: SearchConfig, presets: list[Genome]) -> SearchSpace:
    """The run's fixed parameter choices: the named space plus the gene values of the enqueued presets."""
    return named_space(config.space).including(presets)


def open_worker_run(storage_url: str, study_name: str, overrides: dict | None = None,
                    is_valid: Callable[[Genome], bool] | None = None, log: Log = print) -> Run:
    """Join an existing study (``kdzero worker``): its config comes from the study itself."""
    storage = studies.make_storage(storage_url, create=False)
    probe = studies.load_study(storage, study_name)
    saved = probe.user_attrs.get(studies.CONFIG_ATTR)
    if saved is None:
        raise ConfigError(f"study {study_name!r} was not created by kdzero search")
    config = SearchConfig.from_dict(saved, source=f"study {study_name}").with_overrides(overrides or {})
    space = space_from_choices(probe.user_attrs[studies.SPACE_ATTR])
    sampler = create_sampler(config.sampler, space, seed=config.seed,
                             population_size=config.population, guided=config.guided,
                             adaptive_shrink=config.adaptive_shrink, is_valid=is_valid, log=log)
    return Run(config, storage, studies.load_study(storage, study_name, sampler))


BASELINE_ATTR = "kdzero_baseline"


def ensure_baseline(run: Run, task: ProxyTask, observer: SearchObserver | None = None) -> ProxyResult:
    """The CE-only student's proxy result and CE curve: read from the study, or computed once and stored there
    so that every worker's divergence check uses the same reference."""
    stored = run.study.user_attrs.get(BASELINE_ATTR)
    if stored is not None and len(stored.get("ce_curve", [])) == task.config.steps:
        task.set_baseline(ProxyResult.from_dict(stored["result"]), stored["ce_curve"])
    else:
        if observer is not None:
            observer.log("training the CE-only student once: the reference every distiller must beat")
        result = evaluate(task, [None], on_step=observer.step if observer else None)[0]
        run.study.set_user_attr(BASELINE_ATTR, {"result": result.to_dict(), "ce_curve": task.baseline_ce_curve()})
    warning = weak_teacher_warning(100 * task.teacher_val_acc, 100 * task.baseline().val_acc,
                                   "the CE-only student after the proxy's steps, on the proxy validation split")
    if warning is not None and observer is not None:
        observer.log(warning)
    return task.baseline()


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
    """Evaluate trials until the study reaches its planned number of finished trials; returns how many this
    worker evaluated. Ctrl-C (KeyboardInterrupt) fails and re-enqueues the trials in flight, then re-raises."""
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


def validity_checker(task: ProxyTask) -> Callable[[Genome], bool]:
    """Static validity against the task's teacher/student shapes, for samplers that can use it."""
    return ShapeCheck(task.student_shapes, task.teacher_shapes)


def check_device_list(config: SearchConfig) -> list[str]:
    """One device per worker: ``devices`` cycled over ``workers``, or ``device`` for all."""
    devices = config.devices or [config.device]
    for device in devices:
        if device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
            raise ConfigError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
        index = torch.device(device).index
        if index is not None and torch.cuda.is_available() and index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} "
                              f"CUDA device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return [devices[i % len(devices)] for i in range(config.workers)]


__all__ = ["Run", "SearchObserver", "build_task", "check_device_list", "check_run_dir", "configure_torch",
           "discard_run", "ensure_baseline", "open_worker_run", "prepare_run", "remaining_trials", "run_pair",
           "run_worker", "validity_checker"]
