"""Registries of the ops a genome is built from: each entry knows its formula and where it applies.

An op carries metadata that lets validation reason about a genome without running it: the tensor ranks it
accepts, the shape it returns, whether it is a no-op on some ranks, whether applying it twice equals applying it
once. The canonical genome key and the static validation both read this metadata, so adding an op is one
decorated function.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from kdzero.errors import GenomeError, suggest

Shape = tuple[int, ...]


class OpContext:
    """Per-call state shared by the student and teacher branches of one loss evaluation.

    Randomised transforms (``mask``, ``drop``) ask the context for their random tensor; the first branch draws
    it, the second gets the same one, so both sides are masked identically. Before each transform slot the
    caller names the slot and the two sides' shapes (``share``): two random ops in one genome then draw
    independent masks, and where the sides differ along an axis (a student and teacher of different widths
    that need no connector) there is no entry-to-entry correspondence along it, so the draw is made once
    with size 1 there and broadcast: both sides drop the same samples and positions.
    """

    def __init__(self, training: bool = True, generator: torch.Generator | None = None) -> None:
        self.training = training
        self.generator = generator
        self.slot = 0
        self._sides: tuple[Shape, ...] = ()
        self._draws: dict[tuple, torch.Tensor] = {}

    def share(self, slot: int, student_shape: Shape, teacher_shape: Shape) -> None:
        """Start transform slot ``slot``, whose inputs have these shapes on the student and teacher side."""
        self.slot = slot
        self._sides = (tuple(student_shape), tuple(teacher_shape))

    def draw_shape(self, shape: Shape) -> Shape:
        """The shape actually drawn for a request of ``shape``: size 1 on every axis where the two sides of the
        current slot differ, so that one draw fits both."""
        shape = tuple(shape)
        if len(self._sides) != 2 or not all(len(side) == len(shape) for side in self._sides):
            return shape
        student, teacher = self._sides
        return tuple(1 if a != b else size for size, a, b in zip(shape, student, teacher))

    def bernoulli(self, shape: Shape, keep_prob: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """A 0/1 tensor broadcastable to ``shape`` with P(1) = keep_prob, drawn once per slot and reused by
        the other side (its shape is ``draw_shape(shape)``)."""
        shape = self.draw_shape(shape)
        key = (self.slot, shape)
        if key not in self._draws:
            draw_device = self.generator.device if self.generator is not None else device
            uniform = torch.rand(shape, generator=self.generator, device=draw_device)
            self._draws[key] = (uniform < keep_prob).to(device=device)
        return self._draws[key].to(dtype)


@dataclass(frozen=True)
class Op:
    """One registered op.

    ranks:          input ranks (2 = (N, K), 3 = (N, C, L), 4 = (N, C, H, W)) the op is defined for.
    out_shape:      the output shape for an input shape (batch axis included); None means "same shape".
    identity_ranks: ranks on which the op returns its input unchanged (the canonical key drops it there).
    idempotent:     op(op(x)) == op(x), so consecutive repeats collapse in the canonical key.
    random:         draws randomness per call (shared between branches, off in eval mode).
    min_compare_len: distances only: the compared axis must have at least this many entries to mean anything.
    degenerate:     shape -> a reason (non-empty text) where the op is defined but its output carries no
                    information (constant, or the input's signs at most: a softmax or normalisation over an
                    axis of length 1), "" elsewhere; validation rejects such a genome instead of paying for a
                    loss that cannot train the student.
    bound:          (b, shape) -> a bound on |output| when every |input| entry is at most b, for an input of
                    ``shape`` (distances: a bound on the per-sample value); None means the op never enlarges
                    magnitudes (|output| <= max(b, 1)). Validation chains these to reject a genome that could
                    overflow float32 (``kdzero.ops.checks.overflow_reason``).
    squares:        the op squares its input internally (a norm, a variance, a Gram), so its input must stay
                    below the square root of float32's range even when its output is small.
    """

    name: str
    kind: str
    fn: Callable
    formula: str
    ranks: frozenset[int] = frozenset({2, 3, 4})
    out_shape: Callable[[Shape], Shape] | None = None
    identity_ranks: frozenset[int] = frozenset()
    idempotent: bool = False
    random: bool = False
    min_compare_len: int = 1
    degenerate: Callable[[Shape], str] | None = None
    bound: Callable[[float, Shape], float] | None = None
    squares: bool = False
    doc: str = field(default="", compare=False)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def output_shape(self, shape: Shape) -> Shape:
        """Shape after this op for an input of ``shape``; raises GenomeError where the op is undefined."""
        if len(shape) not in self.ranks:
            raise GenomeError(
                f"{self.kind} {self.name!r} is not defined for {len(shape)}-D input {tuple(shape)}; "
                f"it takes {', '.join(f'{r}-D' for r in sorted(self.ranks))}"
            )
        reason = self.degenerate(tuple(shape)) if self.degenerate is not None else ""
        if reason:
            raise GenomeError(f"{self.kind} {self.name!r} carries no information for input {tuple(shape)}: "
                              f"{reason}, so the loss could not train the student")
        return tuple(self.out_shape(tuple(shape))) if self.out_shape is not None else tuple(shape)


class Registry:
    """Name -> Op for one kind (transform, distance or weight), in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._ops: dict[str, Op] = {}
        self._aliases: dict[str, str] = {}

    def alias(self, old: str, name: str) -> None:
        """Accept ``old``, the former name of op ``name``, wherever a name is looked up, so that genome texts and
        studies written before a rename still load and compute the same loss. ``names``, iteration and ``len``
        list current names only, so no search space samples the old one."""
        if name not in self._ops or old in self._ops:
            raise ValueError(f"cannot alias {self.kind} {old!r} to {name!r}")
        self._aliases[old] = name

    def canonical(self, name: str) -> str:
        """The current name of ``name`` (itself unless it is a former name kept by ``alias``)."""
        return self._aliases.get(name, name)

    def register(self, name: str | None = None, **meta) -> Callable[[Callable], Callable]:
        """Decorator: register ``fn`` under ``name`` (default: the function's name); its docstring's first
        paragraph is the op's description and ``meta['formula']`` its formula."""

        def decorate(fn: Callable) -> Callable:
            op_name = name or fn.__name__
            if op_name in self._ops:
                raise ValueError(f"{self.kind} {op_name!r} registered twice")
            doc = (fn.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
            self._ops[op_name] = Op(name=op_name, kind=self.kind, fn=fn, doc=doc, **meta)
            return fn

        return decorate

    def __getitem__(self, name: str) -> Op:
        try:
            return self._ops[self._aliases.get(name, name)]
        except (KeyError, TypeError):  # TypeError: an unhashable name, e.g. a list read from genome JSON
            raise GenomeError(f"unknown {self.kind} {name!r}; {suggest(str(name), self._ops)}") from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._ops or name in self._aliases)

    def __iter__(self) -> Iterator[str]:
        return iter(self._ops)

    def __len__(self) -> int:
        return len(self._ops)

    def names(self) -> tuple[str, ...]:
        """All registered names, in registration order."""
        return tuple(self._ops)

    def values(self) -> tuple[Op, ...]:
        """All registered ops, in registration order."""
        return tuple(self._ops.values())


TRANSFORMS = Registry("transform")
DISTANCES = Registry("distance")
WEIGHTS = Registry("weight")
