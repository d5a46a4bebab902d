"""The Python API: search and replay distillers for models and data you already hold in Python.

    import kdzero
    result = kdzero.search(teacher, student, (images, labels), name="mine", iterations=20)
    result.leaderboard          # pandas DataFrame, best first
    result.best                 # the best Genome
    result.loss                 # a ready UnifiedLoss for your own training loop (connectors sized)
    table = kdzero.confirm(result.run_dir, teacher=teacher, student=student, train_data=(images, labels))
    trained = kdzero.replay(result.run_dir, teacher=teacher, student=student, train_data=(images, labels))

``teacher`` is any classifier ``nn.Module`` (adapted with ``wrap_model`` when it does not return ``Features``);
it is copied, never changed. ``student`` is a module or a zero-argument factory: every candidate starts from the
same weights (a copy of the module, or the factory called under the run's seed). Data is a ``Dataset``, a
``DataLoader`` or ``(images, labels)`` tensors of unnormalised images (``kdzero.data.user``). A run lives in
``runs_dir/name`` like a CLI run; calling ``search`` again with the same name resumes or extends it, and it is
refused, as on the command line, when the teacher, student, data or scoring budget differ (``fresh=True``
starts it again). ``confirm`` trains the run's top genomes beside CE-only, KD, DKD, KD+LS and DKD+LS over seeds
and returns the confirmed table, as ``kdzero confirm RUN`` does.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from kdzero.errors import ConfigError
from kdzero.genome import Genome
from kdzero.loss import UnifiedLoss

Student = nn.Module | Callable[[], nn.Module]


@dataclass
class SearchResult:
    """What ``kdzero.search`` found: the leaderboard, the best genome with a ready loss, and where it lives."""

    run_dir: Path
    leaderboard: pd.DataFrame
    best: Genome | None
    loss: UnifiedLoss | None
    baseline: dict[str, Any]
    pair: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        best = f"{self.best} (score {self.leaderboard.iloc[0]['score']:.4f})" if self.best else "none yet"
        return f"SearchResult(run_dir={str(self.run_dir)!r}, trials={len(self.leaderboard)}, best={best})"


@dataclass
class Replayed:
    """A replayed genome: the trained student (a ``Features`` model) and its ``TrainResult``."""

    student: nn.Module
    result: Any
    genome: str


def _features_model(module: nn.Module) -> nn.Module:
    from kdzero.models import wrap_model

    if not isinstance(module, nn.Module):
        raise ConfigError(f"expected an nn.Module, got {type(module).__name__}")
    return wrap_model(module)


def _student_factory(student: Student) -> Callable[[], nn.Module]:
    """A factory of fresh students: a copy of a given module (its weights, e.g. pretrained, kept), or the user's
    factory called (the proxy calls it under a fixed seed, so every candidate starts alike)."""
    if isinstance(student, nn.Module):
        template = copy.deepcopy(student).cpu()
        return lambda: _features_model(copy.deepcopy(template))
    if callable(student):
        def build() -> nn.Module:
            made = student()
            if not isinstance(made, nn.Module):
                raise ConfigError(f"the student factory returned {type(made).__name__}, not an nn.Module")
            return _features_model(made)
        return build
    raise ConfigError(f"student must be an nn.Module or a zero-argument factory, got {type(student).__name__}")


def _label(obj: Any) -> str:
    target = obj if isinstance(obj, nn.Module) else getattr(obj, "__wrapped__", obj)
    kind = type(target) if isinstance(target, nn.Module) else target
    return f"python:{getattr(kind, '__module__', '?')}.{getattr(kind, '__qualname__', type(kind).__name__)}"


def _data(train_data: Any, test_data: Any, normalize: str):
    from kdzero.data.user import to_splits
    from kdzero.train import NORMALIZATIONS

    if normalize not in NORMALIZATIONS:
        raise ConfigError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
    data = to_splits(train_data, test_data)
    stats = NORMALIZATIONS[normalize]
    if stats is not None:
        data = replace(data, **{part: replace(getattr(data, part), mean=stats[0], std=stats[1])
                                for part in ("train", "val", "test")})
    return data


def _observer(run_log, log: Callable[[str], None] | None):
    """A search observer writing plain per-trial and per-rung lines into ``search.log`` (and through ``log``)."""
    from kdzero.search.record import trial_line
    from kdzero.search.runner import SearchObserver

    class PlainLines(SearchObserver):
        def log(self, message: str) -> None:
            run_log.write(message)
            if log is not None:
                log(message)

        def trial_finished(self, number, genome, result, duplicate_of) -> None:
            self.log(trial_line(number, str(genome), result.score, result.seconds,
                                stage=result.stage if result.rejected else None, duplicate_of=duplicate_of))

        def rung_result(self, rung, candidate, result) -> None:
            self.log(trial_line(candidate.trial, candidate.genome, result.score, result.seconds,
                                stage=result.stage if result.rejected else None, rung=rung))

    return PlainLines()


def search(teacher: nn.Module, student: Student, train_data: Any, test_data: Any = None, *,
           name: str = "search", runs_dir: str | Path = "runs", population: int = 12, iterations: int = 28,
           steps: int = 120, batch_size: int = 64, num_views: int = 2, train_subset: int | None = None,
           sampler: str = "evolution", space: str = "shrunk", seed: int = 0, device: str = "cpu",
           normalize: str = "dataset", presets: bool = True, fresh: bool = False, eta: int = 3,
           max_steps: int | None = None, log: Callable[[str], None] | None = None,
           **proxy_options: Any) -> SearchResult:
    """Search distillers for ``teacher`` -> ``student`` on the given data; see the module docstring.

    ``population``/``iterations``/``sampler``/``space``/``seed`` mean what they mean for ``kdzero search``;
    ``max_steps`` (with ``eta``) adds rungs of successive halving after the search, as ``--max-steps`` does (None:
    one rung, the proxy's ``steps``);
    ``steps``, ``batch_size``, ``num_views``, ``train_subset`` and ``proxy_options`` (any other ``ProxyConfig``
    field) set the proxy budget. ``log`` receives progress lines (``print`` shows them); every line also goes
    to ``runs_dir/name/search.log``.
    """
    from kdzero.proxy import ProxyConfig, ProxyTask
    from kdzero.search import record, runner
    from kdzero.search.config import SearchConfig
    from kdzero.teacher_cache import _state_digest

    data = _data(train_data, test_data, normalize)
    teacher_model = _features_model(copy.deepcopy(teacher))
    factory = _student_factory(student)
    try:
        proxy = ProxyConfig(steps=steps, batch_size=batch_size, num_views=num_views, train_subset=train_subset,
                            **proxy_options)
    except TypeError as exc:
        raise ConfigError(f"unknown proxy option: {exc}") from None
    config = SearchConfig.from_dict({"name": name, "runs_dir": str(runs_dir), "population": population,
                                     "iterations": iterations, "sampler": sampler, "space": space, "seed": seed,
                                     "device": device, "normalize": normalize, "presets": presets,
                                     "eta": eta, "max_steps": max_steps, "confirm": 0,
                                     "dataset": f"python:{data.name}", "teacher": _label(teacher),
                                     "student": _label(student)}, source="kdzero.search")
    config.proxy = replace(proxy, device=device, weights=config.score, seed=seed)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    if fresh:
        runner.discard_run(config)
    runner.check_run_dir(config, write=False)
    quiet_log = log or (lambda message: None)
    task = ProxyTask(teacher_model, factory, data, config.proxy, config.run_dir / "cache", log=quiet_log)
    run = runner.prepare_run(config, is_valid=runner.validity_checker(task), log=quiet_log)
    pair = record.RunPair(
        teacher=config.teacher, student=config.student, dataset=config.dataset, normalize=normalize,
        num_classes=data.num_classes, in_chans=data.in_chans, image_size=list(data.image_size),
        teacher_weights=_state_digest(task.teacher),
        student_shapes={k: list(v) for k, v in task.student_shapes.items()},
        teacher_shapes={k: list(v) for k, v in task.teacher_shapes.items()},
        proxy={k: getattr(config.proxy, k) for k in ("steps", "batch_size", "num_views", "train_subset", "lr")})
    record.save_pair(config.run_dir, pair)
    observer = _observer(record.RunLog(config.run_dir), log)
    record.start_session(config.run_dir, device)
    try:
        baseline = runner.ensure_baseline(run, task, observer)
        runner.run_worker(run, task, observer)
    finally:
        record.end_session(config.run_dir, _trial_seconds(run.study))
    return _result(config.run_dir, run.study, baseline.to_dict(), pair)


def _trial_seconds(study) -> float:
    return float(sum(t.user_attrs.get("seconds", 0.0) or 0.0 for t in study.get_trials(deepcopy=False)
                     if t.state.is_finished()))


def _result(run_dir: Path, study, baseline: dict, pair) -> SearchResult:
    from kdzero.leaderboard import frame

    board = frame(study)
    best = Genome.parse(board.iloc[0]["genome"]) if not board.empty else None
    loss = None
    if best is not None:
        shapes = {k: tuple(v) for k, v in pair.student_shapes.items()}
        teacher_shapes = {k: tuple(v) for k, v in pair.teacher_shapes.items()}
        loss = UnifiedLoss(best, shapes, teacher_shapes)
    return SearchResult(Path(run_dir), board, best, loss, baseline, pair.to_dict())


def replay(run: str | Path, rank: int = 1, *, teacher: nn.Module | None = None, student: Student | None = None,
           train_data: Any = None, test_data: Any = None, epochs: int | None = None, device: str = "cpu",
           out: str | Path | None = None, seed: int = 0, progress: bool = False, **train_options: Any) -> Replayed:
    """Fully train the student with the genome at ``rank`` of search ``run``, under that run's teacher and data.

    A run made by ``kdzero.search`` needs the same ``teacher``, ``student`` and ``train_data``/``test_data``
    again (a teacher whose weights differ from the searched one is refused). A run made by the command line
    rebuilds its recorded pair when they are omitted. ``epochs`` and ``train_options`` (``TrainConfig`` fields)
    set the schedule (default: the CRD protocol). The result is written to ``out`` (default
    ``RUN/replay-rank<K>``, a new folder each time).
    """
    from kdzero.leaderboard import genome_at
    from kdzero.search.record import run_pair
    from kdzero.train import TrainConfig, build_distiller, load_data, load_teacher, train_model

    run = Path(run)
    pair = run_pair(run)
    genome = genome_at(run, rank)
    if teacher is None and student is None and train_data is None:
        if pair.from_python:
            raise ConfigError(f"run {run} was searched on Python objects: pass teacher=, student= and train_data= "
                              f"(and test_data= if the search had it) again")
        pair.check_teacher()
        data = load_data(pair.dataset, pair.data_root, normalize=pair.normalize)
        teacher_model = load_teacher(pair.teacher, pair.teacher_ckpt, data)
        from kdzero.models import create_model

        factory = lambda: create_model(pair.student, num_classes=data.num_classes, in_chans=data.in_chans)  # noqa: E731
    elif teacher is None or student is None or train_data is None:
        raise ConfigError("pass all of teacher=, student= and train_data=, or none of them (a CLI run's own pair)")
    else:
        data, teacher_model, factory = _same_objects(run, pair, teacher, student, train_data, test_data)
    config = TrainConfig.crd_protocol(pair.student, epochs=epochs, device=device, seed=seed, **train_options)
    torch.manual_seed(seed)
    model = factory()
    loss = build_distiller(model, teacher_model, data, genome=genome)
    out_dir = Path(out) if out is not None else _new_dir(run / f"replay-rank{rank}")
    result = train_model(model, data, config, teacher=teacher_model, distill_loss=loss, run_dir=out_dir,
                         progress=progress)
    return Replayed(student=model, result=result, genome=genome)


def confirm(run: str | Path, *, top: int | None = None, epochs: int | None = None, subset: int | None = None,
            seeds: int | None = None, device: str | None = None, teacher: nn.Module | None = None,
            student: Student | None = None, train_data: Any = None, test_data: Any = None,
            log: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Confirm search ``run``: train its top genomes and the classical references (CE-only, KD, DKD, KD+LS,
    DKD+LS) for real over seeds, as ``kdzero confirm`` does, and return the confirmed table (winner first; see
    ``kdzero.confirm.confirmed_table``). Finished trainings are stored in the run and never repeated.

    A run made by the command line rebuilds its pair; a run made by ``kdzero.search`` needs the same
    ``teacher``, ``student`` and ``train_data``/``test_data`` again (other teacher weights are refused).
    ``top``/``epochs``/``subset``/``seeds``/``device`` default to the run's own settings.
    """
    from kdzero.confirm import ConfirmSettings, Pair, run_config
    from kdzero.confirm import confirm as confirm_run
    from kdzero.data import proxy_subset
    from kdzero.leaderboard import open_study
    from kdzero.search.record import run_pair

    config = run_config(run, {"confirm": top, "confirm_epochs": epochs, "confirm_subset": subset,
                              "confirm_seeds": seeds, "device": device})
    if config.confirm == 0:
        config = config.with_overrides({"confirm": 3})
    settings = ConfirmSettings.from_config(config)
    pair = None
    if teacher is not None or student is not None or train_data is not None:
        if teacher is None or student is None or train_data is None:
            raise ConfigError("pass all of teacher=, student= and train_data=, or none of them (a CLI run's own pair)")
        recorded = run_pair(run)
        data, teacher_model, factory = _same_objects(run, recorded, teacher, student, train_data, test_data)
        if settings.subset is not None:
            data = replace(data, train=proxy_subset(data.train, per_class=settings.subset, seed=config.seed))
        pair = Pair(data=data, teacher=teacher_model, student=recorded.student, device=config.device,
                    factory=factory)
    return confirm_run(open_study(run), config, settings, log=log or (lambda _m: None), pair=pair)


def _same_objects(run, pair, teacher: nn.Module, student: Student, train_data: Any, test_data: Any):
    """The data, teacher and student factory a run searched on Python objects was given again, checked against
    what it recorded: the same data name and the same teacher weights."""
    from kdzero.teacher_cache import _state_digest

    data = _data(train_data, test_data, pair.normalize)
    if pair.dataset.startswith("python:") and pair.dataset != f"python:{data.name}":
        raise ConfigError(f"train_data/test_data differ from the data run {run} was searched on")
    teacher_model = _features_model(copy.deepcopy(teacher))
    if pair.teacher_weights is not None and _state_digest(teacher_model) != pair.teacher_weights:
        raise ConfigError(f"teacher's weights differ from those run {run} was searched with; pass the same teacher")
    return data, teacher_model, _student_factory(student)


def _new_dir(base: Path) -> Path:
    return next(p for p in (base, *(base.with_name(f"{base.name}-{k}") for k in range(2, 10_000)))
                if not p.exists())
