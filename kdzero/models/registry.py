"""Model registry: factory functions registered by name and built with ``create_model``.

A factory is ``fn(num_classes: int = 100, in_chans: int = 3, **options) -> nn.Module`` whose module returns
``Features`` from ``forward``. Registration happens at import of the family modules (``kdzero.models``
imports them all), so ``list_models()`` is complete as soon as the package is imported.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from kdzero.errors import ConfigError, suggest

ModelFactory = TypeVar("ModelFactory", bound=Callable[..., nn.Module])

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register_model(fn: ModelFactory) -> ModelFactory:
    """Decorator adding factory ``fn`` to the registry under its function name (lower-case)."""
    name = _normalise(fn.__name__)
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    """The names ``create_model`` accepts, sorted."""
    return sorted(_MODELS)


def _is_architecture_text(name: str) -> bool:
    """A student-search architecture text (``resnet[...]x[...]``, ``wrn_dD_wW``) rather than a zoo name."""
    compact = name.replace(" ", "").lower()
    return compact.startswith("resnet[") or compact.startswith("wrn_d")


def create_model(name: str, num_classes: int = 100, in_chans: int = 3, **kw: Any) -> nn.Module:
    """Build registered model ``name`` (case and ``-``/``_`` insensitive) with fresh weights; a name with a colon
    is a model spec (``torchvision:NAME``, ``timm:NAME``, ``package.module:function``; ``kdzero.models.specs``).

    Raises ``ConfigError`` with close names for an unknown model, a non-positive class or channel count, or an
    option the factory does not take.
    """
    if ":" in str(name):  # torchvision:NAME, timm:NAME, package.module:function (kdzero.models.specs)
        from kdzero.models.specs import build_model

        if kw:
            raise ConfigError(f"model {name!r}: give options in the spec (NAME?kw=v), got {', '.join(kw)}")
        return build_model(str(name), num_classes=num_classes, in_chans=in_chans)
    key = _normalise(str(name))
    if key not in _MODELS and _is_architecture_text(str(name)):
        from kdzero.models.searchable import create_student

        if kw:
            raise ConfigError(f"model {name!r}: architecture texts take no options, got {', '.join(kw)}")
        return create_student(str(name), num_classes=num_classes, in_chans=in_chans)
    if key not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; {suggest(key, list_models())} (or a searched architecture "
                          f"text such as resnet[3,3,3]x[16,32,64] or wrn_d16_w2)")
    for label, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"model {key}: {label} must be a positive integer, got {value!r}")
    factory = _MODELS[key]
    try:
        inspect.signature(factory).bind(num_classes=num_classes, in_chans=in_chans, **kw)
    except TypeError as err:
        raise ConfigError(f"model {key}: {err}") from None
    return factory(num_classes=num_classes, in_chans=in_chans, **kw)
