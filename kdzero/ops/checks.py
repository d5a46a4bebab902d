"""Checks on a whole chain of ops that no single op's metadata can make: does the compared result depend on the
student's input at all?

``Op.degenerate`` catches one op over an axis of length 1 (a softmax over one channel). A chain can also be
constant through the interplay of its ops, which a per-op rule cannot see: relu after a log-softmax (never
positive), pooling a local-contrast map onto the grid its cells tile (zero means), a pyramid pool of a 1x1 map
compared as a distribution over its identical cells. Validation therefore differentiates the distance once on
small random inputs and rejects the chain when the student's gradient vanishes.
"""
from __future__ import annotations

import functools
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
