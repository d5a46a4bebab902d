"""Checks on a whole chain of ops that no single op's metadata can make: does the compared result depend on the
student's input at all, and can it overflow float32?

``Op.degenerate`` catches one op over an axis of length 1 (a softmax over one channel). A chain can also be
constant through the interplay of its ops, which a per-op rule cannot see: relu after a log-softmax (never
positive), pooling a local-contrast map onto the grid its cells tile (zero means), a pyramid pool of a 1x1 map
compared as a distribution over its identical cells. Validation therefore differentiates the distance once on
small random inputs and rejects the chain when the student's gradient vanishes.

Every op keeps finite input finite on its own (exp and the powers clamp their input), but a chain can still
compound magnitudes past float32's range: ``pow4`` makes 1e4 into 1e16, a Gram product squares that to 1e32 and
``l2`` squares it again. ``overflow_reason`` chains the ops' declared magnitude bounds (``Op.bound``) from
activations of at most ``ACTIVATION_BOUND`` and names the first step that could leave ``FLOAT32_SAFE``, so
validation rejects such a genome before training instead of letting it produce inf.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

from kdzero.ops._registry import DISTANCES, TRANSFORMS, OpContext, Shape

# The probe narrows the channel (feature) axis: whether a chain is constant depends on axes of length 1 and on
# exact spatial sizes, not on how many channels there are beyond a few, and a narrow probe keeps validation cheap.
PROBE_WIDTH = 6
PROBE_SEEDS = (0, 1)
# The probe differentiates n * distance (n = entries of the probe input, undoing the distances' averaging) in
# float64 on unit-scale inputs. Over 3,000 sampled genomes on 1x1, 7x7, 8x8 and 32x32 maps, chains that depend on
# their input gave 2.7e-9 and more (the smallest: a channel softmax of a Gram of normalised maps compared by
# correlation), constant ones exactly zero or rounding noise up to 6e-13.
GRADIENT_FLOOR = 1e-10


def probe_shape(shape: Shape) -> Shape:
    """The (batch-included) shape the probe runs on for a compared shape: the channel axis capped at
    ``PROBE_WIDTH``, every other axis unchanged."""
    return (shape[0], min(shape[1], PROBE_WIDTH), *shape[2:])


@functools.lru_cache(maxsize=8192)
def _vanishes(transforms: tuple[str, ...], distance: str, shape: Shape) -> bool:
    with torch.enable_grad():
        for seed in PROBE_SEEDS:
            gen = torch.Generator().manual_seed(seed)
            student = torch.randn(shape, generator=gen, dtype=torch.float64).requires_grad_(True)
            teacher = torch.randn(shape, generator=gen, dtype=torch.float64)
            ctx = OpContext(training=False)
            s, t = student, teacher
            for name in transforms:
                s, t = TRANSFORMS[name](s, ctx), TRANSFORMS[name](t, ctx)
            value = DISTANCES[distance](s, t).sum() * student.numel()
            if not value.requires_grad:
                continue
            (gradient,) = torch.autograd.grad(value, student, allow_unused=True)
            if gradient is not None and gradient.abs().max().item() > GRADIENT_FLOOR:
                return False
    return True


def student_gradient_vanishes(transforms: Sequence[str], distance: str, shape: Shape) -> bool:
    """Whether ``distance(chain(s), chain(t))`` has no gradient with respect to ``s`` on random inputs of
    ``shape`` (batch axis included; the channel axis is probed at ``PROBE_WIDTH``), i.e. the loss is constant
    in the student by construction. The temperature is left out (dividing both sides by it cannot make a loss
    constant); random transforms run in evaluation mode (identity): a mask cannot make a chain informative.
    Cached per chain and shape."""
    return _vanishes(tuple(transforms), distance, probe_shape(tuple(shape)))


# Activations up to this magnitude are guaranteed a finite loss (randn x 1e4 stays below it).
ACTIVATION_BOUND = 1e5
# Largest magnitude allowed anywhere in a loss's forward pass: float32 reaches 3.4e38, and the backward pass
# multiplies such values by local slopes, so two orders of magnitude are kept free.
FLOAT32_SAFE = 1e36


def overflow_reason(transforms: Sequence[str], distance: str, temperature: float, magnitude: float,
                    shape: Shape) -> str:
    """Why ``magnitude * T^2 * distance(chain(s) / T, chain(t) / T)`` could overflow float32 for inputs of
    ``shape`` (batch axis included) whose entries are at most ``ACTIVATION_BOUND`` in magnitude, or "" when it
    cannot. Worst-case bounds: the real values are usually far smaller, but a loss that is finite only on
    typical activations would turn inf on the first unusual batch."""
    bound = ACTIVATION_BOUND
    shape = tuple(shape)
    for slot, name in enumerate(transforms, start=1):
        op = TRANSFORMS[name]
        if op.squares and bound > math.sqrt(FLOAT32_SAFE):
            return (f"transform{slot} {name!r} squares values that can reach {bound:.1e} "
                    f"(square above {FLOAT32_SAFE:.0e})")
        bound = op.bound(bound, shape) if op.bound is not None else max(bound, 1.0)
        shape = op.output_shape(shape)
        if bound > FLOAT32_SAFE:
            return f"after transform{slot} {name!r} values can reach {bound:.1e} (above {FLOAT32_SAFE:.0e})"
    op = DISTANCES[distance]
    bound /= temperature
    if op.squares and bound > math.sqrt(FLOAT32_SAFE):
        return f"distance {distance!r} squares values that can reach {bound:.1e} (square above {FLOAT32_SAFE:.0e})"
    loss = (op.bound(bound, shape) if op.bound is not None else bound) * magnitude * temperature ** 2
    if loss > FLOAT32_SAFE:
        return f"the loss can reach {loss:.1e} (above {FLOAT32_SAFE:.0e})"
    return ""
