"""The contract every classical distiller shares: the ``Distiller`` base, the name registry, ``create_method``.

Family modules (``logit``, ``feature``, ``relation``, ``contrastive``) register their classes with ``@register``;
``kdzero.methods`` imports them all, so the registry is complete once the package is imported. ``list_methods``
keeps the families in that order, whatever order Python imported them in.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar, TypeVar

from torch import nn

from kdzero.errors import ConfigError, suggest

Shapes = Mapping[str, Sequence[int]]
"""Per-sample shapes of one side's ``Features``: ``{"feat": (C, H, W), "emb": (D,), "logit": (K,)}``."""

FAMILIES: tuple[str, ...] = ("logit", "feature", "relation", "contrastive")
"""The family modules of ``kdzero.methods``, in the order ``list_methods`` shows them (by knowledge input)."""


class Distiller(nn.Module):
    """Base of every classical distiller: the shared call contract and the two hooks a trainer may need.

    ``forward(student, teacher, target)`` returns the weighted distillation term (a scalar). A trainer passes
    ``index=`` (the samples' dataset indices) only to methods with ``needs_index`` set, and calls ``set_epoch``
    at the start of every epoch for all methods; only scheduled methods act on it.
    """

    name: ClassVar[str] = ""
    needs_index: ClassVar[bool] = False

    def set_epoch(self, epoch: int) -> None:
        """Tell the method that epoch ``epoch`` (counted from 1) starts; methods with a schedule override this."""


_REGISTRY: dict[str, type[Distiller]] = {}
_D = TypeVar("_D", bound=type[Distiller])


def register(name: str) -> Callable[[_D], _D]:
    """Class decorator: make the distiller buildable as ``create_method(name)``."""

    def add(cls: _D) -> _D:
        if name in _REGISTRY:
            raise ValueError(f"distillation method {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


def _family_rank(cls: type[Distiller]) -> int:
    """Position of the class's family module in ``FAMILIES``; classes defined elsewhere come last."""
    family = cls.__module__.rsplit(".", 1)[-1]
    return FAMILIES.index(family) if family in FAMILIES else len(FAMILIES)


def list_methods() -> list[str]:
    """Names of all classical distillers, grouped by knowledge input: logits, feature maps, embeddings.

    Within a family, the order is the order of definition in its module.
    """
    return sorted(_REGISTRY, key=lambda name: _family_rank(_REGISTRY[name]))


def create_method(
    name: str,
    student_shapes: Shapes | None = None,
    teacher_shapes: Shapes | None = None,
    **overrides: object,
) -> Distiller:
    """Build the classical distiller ``name`` with its paper's defaults, changed by ``overrides``.

    ``student_shapes``/``teacher_shapes`` are per-sample shapes (see ``feature_shapes``); methods with learned
    connectors need them. ``overrides`` are the method's keyword options (e.g. ``T=8``, ``weight=0.5``,
    ``dataset_size=50000`` for crd). Unknown names and options raise ``ConfigError`` with the closest valid ones.
    """
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ConfigError(f"unknown distillation method {name!r}; {suggest(name, list_methods())}")
    options = [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    for key in overrides:
        if key not in options:
            raise ConfigError(f"method {name!r} has no option {key!r}; {suggest(key, options)}")
    return cls(student_shapes, teacher_shapes, **overrides)


