"""Running a search: the proxy task from a config, the study, and the worker loop.

``prepare_run(config)`` creates or resumes ``runs/<name>/`` and its study; ``build_task(config)`` loads data,
teacher and student into a ``ProxyTask``. The CE-only baseline (``ensure_baseline``) lives in
``kdzero.search.baseline`` and the worker loop (``run_worker``) in ``kdzero.search.worker``; both stay importable
from here.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path

import optuna
import torch

from kdzero.errors import ConfigError
from kdzero.genome import Genome, SearchSpace
from kdzero.models import create_model, load_checkpoint
from kdzero.presets import PRESETS
from kdzero.proxy import ProxyTask
from kdzero.search import record
from kdzero.search import study as studies
from kdzero.search.baseline import BASELINE_ATTR as BASELINE_ATTR
from kdzero.search.baseline import ensure_baseline
from kdzero.search.config import SearchConfig
from kdzero.search.evolution import ShapeCheck
from kdzero.search.samplers import create_sampler
from kdzero.search.space import named_space, space_from_choices
from kdzero.search.worker import WAIT_POLL as WAIT_POLL
from kdzero.search.worker import Run, SearchObserver, finished_trials, remaining_trials, run_worker
from kdzero.search.worker import _abandon as _abandon
from kdzero.search.worker import _evaluate_group as _evaluate_group
from kdzero.search.worker import _wait_for as _wait_for
from kdzero.search.worker import _without_surplus as _without_surplus

Log = Callable[[str], None]


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
    checkpoint = teacher_checkpoint(config, data, log)
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


def teacher_checkpoint(config: SearchConfig, data, log: Log = print):
    """The run's teacher checkpoint: the configured one, or on digits the built-in teacher (trained once)."""
    from kdzero.train import ensure_teacher

    if config.teacher_ckpt is not None:
        return config.teacher_ckpt
    if config.dataset != "digits":
        raise ConfigError(f"--teacher-ckpt is required for dataset {config.dataset!r} (train one with "
                          f"'kdzero train-teacher --model {config.teacher} --dataset {config.dataset}')")
    log(f"built-in teacher: {config.teacher} on digits (trained once, kept in {config.run_dir / 'teacher'})")
    return ensure_teacher(config.teacher, data, root=config.run_dir / "teacher", progress=False, log=log)


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
    checkpoint = teacher_checkpoint(config, task.data, log=lambda message: None)
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
