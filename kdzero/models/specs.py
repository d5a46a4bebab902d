"""Model specs: one string names any model a search, a replay or a teacher training can build.

Four forms, each built for a dataset's class and channel count and returned as a ``Features`` model:

* ``resnet20`` - a name of kdzero's zoo (``list_models()``) or a searched architecture text;
* ``torchvision:NAME[?kw=v&kw=v]`` - any name of ``torchvision.models.list_models()``, built by ``get_model``
  with ``weights=None`` (nothing is downloaded: a teacher's weights come from a local checkpoint file);
* ``timm:NAME[?kw=v]`` - a timm model, ``pretrained=False`` (optional extra ``kdzero[timm]``);
* ``package.module:function[?kw=v]`` - the user's own factory; it is given ``num_classes`` and ``in_chans`` when
  its signature takes them, plus the ``kw`` options, and must return an ``nn.Module``.

Models that do not return ``Features`` themselves are wrapped by ``wrap_model`` (forward hooks), so a plain
classifier works unchanged. Every bad spec raises one ``ConfigError`` naming the spec and what would be right.
"""
from __future__ import annotations

import ast
import importlib
import inspect
from dataclasses import dataclass
from typing import Any

from torch import nn

from kdzero.errors import ConfigError, suggest
from kdzero.models.adapters import wrap_model
from kdzero.models.registry import create_model, register_model_pattern

SPEC_FORMS: tuple[tuple[str, str], ...] = (
    ("NAME", "a kdzero zoo model (listed above), e.g. resnet20"),
    ("torchvision:NAME[?kw=v]", "any torchvision.models name, e.g. torchvision:resnet18 or "
                                "torchvision:mobilenet_v3_small?width_mult=0.5 (weights from --teacher-ckpt)"),
    ("timm:NAME[?kw=v]", "a timm model, e.g. timm:resnet10t (pip install 'kdzero[timm]')"),
    ("package.module:function[?kw=v]", "your own factory returning an nn.Module; it receives num_classes and "
                                       "in_chans when it takes them"),
)
"""The accepted model-spec forms with a one-line description each (``kdzero models`` prints them)."""


@dataclass(frozen=True)
class ModelSpec:
    """A parsed spec: ``kind`` is zoo, torchvision, timm or factory; ``options`` the ``?kw=v`` values."""

    kind: str
    target: str
    options: tuple[tuple[str, Any], ...] = ()

    def __str__(self) -> str:
        if self.kind == "zoo":
            return self.target
        query = "&".join(f"{k}={v}" for k, v in self.options)
        prefix = "" if self.kind == "factory" else f"{self.kind}:"
        return f"{prefix}{self.target}" + (f"?{query}" if query else "")


def is_spec(text: str) -> bool:
    """Whether ``text`` is one of the prefixed forms (anything but a zoo name)."""
    return ":" in text


def parse_spec(text: str) -> ModelSpec:
    """Parse a model spec string (see the module docstring); raises ``ConfigError`` on a malformed one."""
    text = str(text).strip()
    if not is_spec(text):
        return ModelSpec("zoo", text)
    head, _, rest = text.partition(":")
    target, _, query = rest.partition("?")
    options = _parse_options(text, query)
    if not target:
        raise ConfigError(f"model spec {text!r} names no model after the colon; e.g. torchvision:resnet18")
    if head == "python":
        raise ConfigError(f"model {text!r} was given to kdzero.search as a Python object; the command line cannot "
                          f"rebuild it: pass the object to kdzero.search or kdzero.replay again")
    if head in ("torchvision", "timm"):
        return ModelSpec(head, target, options)
    if not all(part.isidentifier() for part in head.split(".")) or not target.isidentifier():
        raise ConfigError(f"model spec {text!r} is not NAME, torchvision:NAME, timm:NAME or "
                          f"package.module:function")
    return ModelSpec("factory", f"{head}:{target}", options)


def _parse_options(text: str, query: str) -> tuple[tuple[str, Any], ...]:
    options = []
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if not eq or not key.isidentifier():
            raise ConfigError(f"model spec {text!r}: option {item!r} must be key=value")
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        options.append((key, parsed))
    return tuple(options)


def build_model(text: str, num_classes: int, in_chans: int = 3) -> nn.Module:
    """The model of spec ``text`` for ``num_classes`` classes and ``in_chans`` input channels, with fresh
    weights, as a ``Features`` model."""
    spec = parse_spec(text)
    if spec.kind == "zoo":
        return create_model(spec.target, num_classes=num_classes, in_chans=in_chans)
    builder = {"torchvision": _torchvision, "timm": _timm, "factory": _factory}[spec.kind]
    module = builder(spec, text, num_classes, in_chans)
    if not isinstance(module, nn.Module):
        raise ConfigError(f"model spec {text!r} returned {type(module).__name__}, not an nn.Module")
    return wrap_model(module)


def _torchvision(spec: ModelSpec, text: str, num_classes: int, in_chans: int) -> nn.Module:
    import torchvision

    from kdzero.models.torchvision_models import _replace_stem

    options = dict(spec.options)
    if "weights" in options:
        raise ConfigError(f"model spec {text!r}: kdzero downloads no weights; load a local file with "
                          f"--teacher-ckpt (or load_checkpoint) instead of ?weights=")
    names = torchvision.models.list_models()
    if spec.target not in names:
        raise ConfigError(f"unknown torchvision model {spec.target!r}; {suggest(spec.target, names)}")
    module = _call(text, torchvision.models.get_model, spec.target, weights=None, num_classes=num_classes,
                   **options)
    _replace_stem(module, in_chans)
    return module


def _timm(spec: ModelSpec, text: str, num_classes: int, in_chans: int) -> nn.Module:
    try:
        import timm
    except ModuleNotFoundError:
        raise ConfigError(f"model spec {text!r} needs timm, which is not installed: "
                          f"pip install 'kdzero[timm]'") from None
    if not timm.is_model(spec.target):
        raise ConfigError(f"unknown timm model {spec.target!r}; {suggest(spec.target, timm.list_models())}")
    return _call(text, timm.create_model, spec.target, pretrained=False, num_classes=num_classes,
                 in_chans=in_chans, **dict(spec.options))


def _factory(spec: ModelSpec, text: str, num_classes: int, in_chans: int) -> nn.Module:
    module_name, function_name = spec.target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"model spec {text!r}: cannot import module {module_name!r} ({exc}); is its folder on "
                          f"PYTHONPATH or the package installed?") from None
    except Exception as exc:
        raise ConfigError(f"model spec {text!r}: importing {module_name!r} raised "
                          f"{type(exc).__name__}: {exc}") from None
    factory = getattr(module, function_name, None)
    if not callable(factory):
        public = [n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise ConfigError(f"model spec {text!r}: module {module_name!r} has no function {function_name!r}; "
                          f"{suggest(function_name, public)}")
    kwargs = dict(spec.options)
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        parameters = {}
    takes_any = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    for name, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if takes_any or name in parameters:
            kwargs.setdefault(name, value)
    return _call(text, factory, **kwargs)


def _call(text: str, fn, *args: Any, **kwargs: Any) -> Any:
    """Call a model builder, turning whatever it raises into one line naming the spec."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(f"model spec {text!r}: building it raised {type(exc).__name__}"
                          f"{': ' + message if message else ''}") from None


def _build_spec(text: str, num_classes: int, in_chans: int, **options: object) -> nn.Module:
    """``build_model`` as a registry pattern's builder: a spec carries its options after ``?``."""
    if options:
        raise ConfigError(f"model {text!r}: give options in the spec (NAME?kw=v), got {', '.join(options)}")
    return build_model(text, num_classes, in_chans)


register_model_pattern(is_spec, _build_spec)
