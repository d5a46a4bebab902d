"""Model registry: factory functions registered by name and built with ``create_model``.

A factory is ``fn(num_classes: int = 100, in_chans: int = 3, **options) -> nn.Module`` whose module returns
``Features`` from ``forward``. Registration happens at import of the family modules (``kdzero.models``
imports them all), so ``list_models()`` is complete as soon as the package is imported.

Besides fixed names, a family may register a *pattern*: a recogniser for a family of model texts (the student
search's ``resnet[3,3,3]x[16,32,64]``) and the builder for them. This keeps the registry at the bottom of
``kdzero.models``: every family module imports it, and it imports no family back.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from kdzero.errors import ConfigError, suggest

ModelFactory = TypeVar("ModelFactory", bound=Callable[..., nn.Module])

_MODELS: dict[str, Callable[..., nn.Module]] = {}


@dataclass(frozen=True)
class _Pattern:
    """A family of model texts: ``matches(text)`` recognises one, ``build(text, num_classes, in_chans, **options)``
    builds it (and says itself which options it refuses), ``example`` shows one in the unknown-model message."""

    matches: Callable[[str], bool]
    build: Callable[..., nn.Module]
    example: str


_PATTERNS: list[_Pattern] = []


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


def register_model_pattern(matches: Callable[[str], bool], build: Callable[..., nn.Module], example: str = "") -> None:
    """Let ``create_model`` accept every name ``matches`` recognises, built by
    ``build(name, num_classes, in_chans, **options)``.

    Fixed names win over patterns, and earlier patterns over later ones. A non-empty ``example`` (e.g.
    ``"resnet[3,3,3]x[16,32,64]"``) is quoted when a name is unknown.
    """
    _PATTERNS.append(_Pattern(matches, build, example))


def create_model(name: str, num_classes: int = 100, in_chans: int = 3, **kw: Any) -> nn.Module:
    """Build registered model ``name`` (case and ``-``/``_`` insensitive) with fresh weights, or a name that a
    registered pattern recognises: a model spec with a colon (``torchvision:NAME``, ``timm:NAME``,
    ``package.module:function``; ``kdzero.models.specs``) or a searched architecture text
    (``kdzero.models.searchable``).

    Raises ``ConfigError`` with close names for an unknown model, a non-positive class or channel count, or an
    option the factory does not take.
    """
    key = _normalise(str(name))
    pattern = None if key in _MODELS else next((p for p in _PATTERNS if p.matches(str(name))), None)
    if pattern is not None:
        return pattern.build(str(name), num_classes, in_chans, **kw)
    if key not in _MODELS:
        examples = " or ".join(p.example for p in _PATTERNS if p.example)
        hint = f" (or a searched architecture text such as {examples})" if examples else ""
        raise ConfigError(f"unknown model {name!r}; {suggest(key, list_models())}{hint}")
    for label, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"model {key}: {label} must be a positive integer, got {value!r}")
    factory = _MODELS[key]
    try:
        inspect.signature(factory).bind(num_classes=num_classes, in_chans=in_chans, **kw)
    except TypeError as err:
        raise ConfigError(f"model {key}: {err}") from None
    return factory(num_classes=num_classes, in_chans=in_chans, **kw)
