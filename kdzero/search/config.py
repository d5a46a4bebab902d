"""The configuration of a search run: defaults, TOML files, command-line overrides, strict checking.

A config file is flat TOML with two optional tables, ``[proxy]`` (``ProxyConfig`` fields) and ``[score]`` (the
combined score's weights)::

    name = "c100-res56-res20"
    dataset = "cifar100"
    data_root = "data"
    teacher = "resnet56"
    teacher_ckpt = "teachers/resnet56_cifar100.pth"
    student = "resnet20"
    population = 20
    iterations = 100
    device = "cuda"
    [proxy]
    steps = 400
    batch_size = 128

Unknown keys and wrong types are errors that name the key and the expected type. The resolved config is saved in
the run directory and in the study, so a resumed run or a remote worker uses exactly the same settings.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdzero.errors import ConfigError, suggest
from kdzero.proxy import ProxyConfig
from kdzero.scoring import ScoreWeights

# Settings a run may change when it is resumed. Everything else (pair, data, space, sampler, seed, proxy budget,
# score weights) defines what a score means: changing it would mix two kinds of score in one leaderboard.
# The confirmation's budget does not change what a proxy score means, and its results are stored per budget
# (kdzero.confirm's tag ``e<epochs>-n<subset>``), so a run may be confirmed again at another budget.
CONFIRM_FIELDS = ("confirm", "confirm_epochs", "confirm_subset", "confirm_seeds")
FREE_FIELDS = ("name", "data_root", "device", "devices", "threads", "workers", "group_size", "storage", "study",
               "runs_dir", "proxy.device", "proxy.channels_last", *CONFIRM_FIELDS)
# Settings that only extend a finished run: more iterations, a larger population.
EXTENDING_FIELDS = ("iterations", "population")


@dataclass
class SearchConfig:
    """Everything a search run needs. Defaults: the embedded digits data, a built-in teacher, a few minutes on
    two CPU cores."""

    name: str = "digits"
    dataset: str = "digits"
    data_root: str | None = None
    normalize: str = "dataset"  # "dataset" statistics, or "imagenet" (what the akamaster teachers expect)
    teacher: str = "resnet20"
    teacher_ckpt: str | None = None
    student: str = "resnet8"
    population: int = 12
    iterations: int = 18
    sampler: str = "evolution"
    space: str = "shrunk"
    adaptive_shrink: bool = True
    guided: bool = True
    presets: bool = True
    seed: int = 0
    device: str = "cpu"
    devices: list[str] = field(default_factory=list)
    threads: int = 1
    workers: int = 1
    group_size: int | str = 1  # candidates trained together, or "auto" (the most that fit on CUDA; 4 on CPU)
    storage: str | None = None
    study: str | None = None
    runs_dir: str = "runs"
    # The digits demo is label-poor: 30 labelled images per class (300) under a teacher trained on all of them,
    # where distillation has room to help (issue #20: CE-only 97.1 +- 0.5, KD 98.3 +- 0.9 over 3 seeds).
    proxy: ProxyConfig = field(default_factory=lambda: ProxyConfig(steps=120, num_views=2, train_subset=30))
    score: ScoreWeights = field(default_factory=ScoreWeights)
    # Multi-fidelity and confirmation (kdzero.search.rungs, kdzero.confirm).
    eta: int = 3  # each rung keeps the best 1/eta of the one below and trains them eta times longer
    max_steps: int | None = 360  # proxy steps of the top rung (None or <= proxy.steps: a single rung)
    confirm: int = 3  # top-K genomes of the highest rung confirmed by full trainings after the search (0: none)
    confirm_epochs: int | None = None  # None: the dataset's replay default (30 on digits, 240 otherwise)
    confirm_subset: int | None = None  # labelled images per class in confirmation (None: the proxy's subset)
    confirm_seeds: int = 2

    @property
    def trials(self) -> int:
        """The planned number of finished trials: the initial population plus one child per iteration."""
        return self.population + self.iterations

    @property
    def run_dir(self) -> Path:
        """``runs/<name>``: the study database, resolved config, caches, the built-in teacher, logs."""
        return Path(self.runs_dir) / self.name

    @property
    def storage_url(self) -> str:
        """The study storage: the given URL, or an SQLite file in the run directory."""
        return self.storage or f"sqlite:///{(self.run_dir / 'study.db').as_posix()}"

    @property
    def study_name(self) -> str:
        """The study's name inside the storage (defaults to the run name)."""
        return self.study or self.name

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, as saved in the run directory and the study."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """JSON of ``to_dict``."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> SearchConfig:
        """Build from plain data, checking every key and type (``[proxy]`` and ``[score]`` as nested dicts)."""
        return _build(cls, data, source)

    def with_overrides(self, overrides: dict[str, Any], source: str = "command line") -> SearchConfig:
        """A copy with ``overrides`` applied (dotted keys like ``proxy.steps`` reach the nested tables)."""
        data = self.to_dict()
        for key, value in overrides.items():
            if value is None:
                continue
            target = data
            *parents, leaf = key.split(".")
            for parent in parents:
                target = target[parent]
            target[leaf] = value
        return _build(SearchConfig, data, source)

    def check_resumable(self, saved: dict[str, Any]) -> list[str]:
        """Compare with the ``saved`` config of an existing run: refuse any change of what a score means (one
        line that says to pass ``--name NEW`` or ``--fresh``); return the changes that only extend the run
        (``iterations``, a larger ``population``) as lines to tell the user. Free settings (device, workers,
        threads, storage, ...) are neither."""
        now = _flatten(json.loads(json.dumps(self.to_dict())))
        before = _flatten(json.loads(json.dumps(saved)))
        refused, extended = [], []
        for key in sorted(before):
            if key in FREE_FIELDS or key not in now or before[key] == now[key]:
                continue
            change = f"{key} {before[key]!r} -> {now[key]!r}"
            growing = key in EXTENDING_FIELDS and (key == "iterations" or now[key] > before[key])
            (extended if growing else refused).append(change)
        if refused:
            raise ConfigError(f"run {self.name!r} was scored with other settings ({'; '.join(refused)}); a change "
                              f"would mix two kinds of score in one leaderboard: pass --name NEW for a new run, "
                              f"or --fresh to discard this one and start again (in Python: name=, fresh=True)")
        return extended


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"proxy": {"steps": 3}}`` -> ``{"proxy.steps": 3}``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_config(path: str | Path) -> SearchConfig:
    """Read a TOML config file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    data.setdefault("name", path.stem)
    return SearchConfig.from_dict(data, source=str(path))


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if typing.get_origin(tp) is tuple:
        return "pair of numbers"
    return {type(None): "none", str: "string", int: "integer", float: "number", bool: "true/false"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        for option in typing.get_args(tp):
            if option is type(None) and value is None:
                return None
            if option is not type(None):
                try:
                    return _coerce(value, option, where)
                except ConfigError:
                    continue
        raise ConfigError(f"{where} must be {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a {_type_name(tp)}, got {value!r}")
        return [_coerce(v, typing.get_args(tp)[0], where) for v in value]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ConfigError(f"{where} must be a pair of numbers like [1e-5, 1000], got {value!r}")
        return tuple(_coerce(v, float, where) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{where} must be {_type_name(tp)}, got {value!r}")


def _build(cls: type, data: dict[str, Any], source: str, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'} must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'; {suggest(key, fields)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, source, prefix=f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, f"{source}: {prefix}{key}")
    try:
        built = cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if cls is SearchConfig:
        _check_values(built, source)
    return built


def _check_values(config: SearchConfig, source: str) -> None:
    if isinstance(config.group_size, str) and config.group_size != "auto":
        raise ConfigError(f"{source}: group_size must be a positive integer or 'auto', got {config.group_size!r}")
    for name in ("population", "threads", "workers") + (("group_size",) if isinstance(config.group_size, int) else ()):
        if getattr(config, name) < 1:
            raise ConfigError(f"{source}: {name} must be >= 1, got {getattr(config, name)}")
    if config.eta < 2:
        raise ConfigError(f"{source}: eta must be >= 2, got {config.eta}")
    if config.max_steps is not None and config.max_steps < 1:
        raise ConfigError(f"{source}: max_steps must be >= 1, got {config.max_steps}")
    if config.confirm < 0 or config.confirm_seeds < 1:
        raise ConfigError(f"{source}: confirm must be >= 0 and confirm_seeds >= 1, got {config.confirm} and "
                          f"{config.confirm_seeds}")
    for name in ("confirm_epochs", "confirm_subset"):
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise ConfigError(f"{source}: {name} must be >= 1, got {getattr(config, name)}")
    if config.population < 2:
        raise ConfigError(f"{source}: population must be >= 2, got {config.population}")
    if config.iterations < 0:
        raise ConfigError(f"{source}: iterations must be >= 0, got {config.iterations}")
    if config.normalize not in ("dataset", "imagenet"):
        raise ConfigError(f"{source}: normalize must be 'dataset' or 'imagenet', got {config.normalize!r}")
    if not config.name or "/" in config.name or config.name.startswith("."):
        raise ConfigError(f"{source}: name {config.name!r} must be a plain folder name")
