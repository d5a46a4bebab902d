"""What a student costs: parameters and FLOPs, the count texts (``1.2M``, ``40%``) that bound them, the ``Budget``."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from kdzero.errors import ConfigError
from kdzero.models.searchable import StudentArch


class Cost(NamedTuple):
    """Parameter count and FLOPs (multiply-accumulates of convolutions and linear layers, one image)."""

    params: int
    flops: int


def count_flops(model: nn.Module, in_chans: int, image_size: tuple[int, int]) -> int:
    """Multiply-accumulates of every Conv2d and Linear for one image of ``image_size``, counted by forward hooks.

    The CIFAR papers' convention ("FLOPs" = MACs, BN/ReLU/additions ignored): resnet20 at 32x32 is ~41M.
    """
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        total += output[0].numel() * per_output

    def linear_hook(module: nn.Linear, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += module.in_features * module.out_features

    handles = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
               for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters(), torch.empty(0)).device  # a teacher already moved to the GPU
            model(torch.zeros(1, in_chans, *image_size, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total


def model_cost(model: nn.Module, in_chans: int, image_size: tuple[int, int]) -> Cost:
    """Parameters and FLOPs of any model."""
    return Cost(sum(p.numel() for p in model.parameters()), count_flops(model, in_chans, image_size))


def arch_cost(arch: StudentArch, num_classes: int, in_chans: int, image_size: tuple[int, int]) -> Cost:
    """Parameters and FLOPs of a student architecture in closed form, without building it.

    The budget filter runs on every random draw and every candidate mutation, where building the network would
    cost more than scoring it; ``model_cost(arch.build(...))`` gives the same numbers (a test checks it).
    """
    height, width = image_size
    params = flops = 0

    def conv(c_in: int, c_out: int, kernel: int, stride: int, bn: bool) -> None:
        nonlocal params, flops, height, width
        height, width = -(-height // stride), -(-width // stride)  # ceil: padding keeps "same" at stride 1
        params += c_in * c_out * kernel * kernel + (2 * c_out if bn else 0)
        flops += height * width * c_out * c_in * kernel * kernel

    if arch.family == "resnet":
        half = len(arch.genes) // 2
        depths, widths = arch.genes[:half], arch.genes[half:]
        conv(in_chans, widths[0], 3, 1, bn=True)
        planes = widths[0]
        for stage, (blocks, out) in enumerate(zip(depths, widths)):
            for i in range(blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                if stride != 1 or planes != out:  # the 1x1 conv + BN shortcut, at the block's output size
                    conv(planes, out, 1, stride, bn=True)
                    stride = 1
                conv(planes, out, 3, stride, bn=True)
                conv(out, out, 3, 1, bn=True)
                planes = out
    else:
        depth, widen = arch.genes
        conv(in_chans, 16, 3, 1, bn=False)
        planes = 16
        for stage, out in enumerate((16 * widen, 32 * widen, 64 * widen)):
            for i in range((depth - 4) // 6):
                stride = 2 if stage > 0 and i == 0 else 1
                params += 2 * planes  # the pre-activation BN
                if planes != out:
                    conv(planes, out, 1, stride, bn=False)
                    stride = 1
                conv(planes, out, 3, stride, bn=True)
                conv(out, out, 3, 1, bn=False)
                planes = out
        params += 2 * planes  # the final BN
    return Cost(params + planes * num_classes + num_classes, flops + planes * num_classes)


_SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


def parse_count(text: str | float | int, what: str = "count") -> int:
    """``0.3M`` -> 300000, ``40M``, ``250k``, ``1.2G`` or a plain number; ConfigError otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmg]?)\s*", str(text).lower())
    if not match or float(match[1]) <= 0:
        raise ConfigError(f"{what} must be a positive number like 0.3M, 40M or 250k, got {text!r}")
    return round(float(match[1]) * _SUFFIXES[match[2]])


DEFAULT_BUDGET_RATIO = 0.5
"""A student is bounded by this fraction of its teacher's parameters AND FLOPs unless the user says otherwise:
a student worth distilling into is at least twice smaller and twice cheaper than its teacher."""


def parse_limit(text: str | float | int, reference: int, what: str = "budget") -> int:
    """An upper bound: ``0.3M``/``40M``/``250k`` absolute, or ``0.5x`` as a fraction of ``reference`` (the
    teacher's own count); ConfigError otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*x\s*", str(text).lower())
    if match:
        ratio = float(match[1])
        if ratio <= 0:
            raise ConfigError(f"{what} must be a positive fraction of the teacher like 0.5x, got {text!r}")
        return max(1, math.floor(ratio * reference))
    try:
        return parse_count(text, what)
    except ConfigError:
        raise ConfigError(f"{what} must be a count like 0.3M, 40M or 250k, or a fraction of the teacher like "
                          f"0.5x, got {text!r}") from None


def format_count(value: int) -> str:
    """300000 -> ``0.30M``, 40800000 -> ``40.80M``, 2500 -> ``2.5k``."""
    if value >= 10**6:
        return f"{value / 10**6:.2f}M"
    return f"{value / 10**3:.1f}k" if value >= 10**3 else str(value)


@dataclass(frozen=True)
class Budget:
    """Upper bounds on a student's parameters and FLOPs (None: unbounded)."""

    params: int | None = None
    flops: int | None = None

    def fits(self, cost: Cost) -> bool:
        """Whether ``cost`` is within both bounds."""
        return (self.params is None or cost.params <= self.params) and (self.flops is None or cost.flops <= self.flops)

    def __str__(self) -> str:
        parts = [f"params <= {format_count(self.params)}" if self.params is not None else "",
                 f"FLOPs <= {format_count(self.flops)}" if self.flops is not None else ""]
        return ", ".join(p for p in parts if p) or "unbounded"

    def relative_to(self, teacher: Cost) -> str:
        """The bounds with their fraction of the teacher's cost: ``params <= 0.14M (0.50x teacher), ...``."""
        parts = [f"{name} <= {format_count(bound)} ({bound / of:.2f}x teacher)"
                 for name, bound, of in (("params", self.params, teacher.params), ("FLOPs", self.flops, teacher.flops))
                 if bound is not None and of > 0]
        return ", ".join(parts) or "unbounded"
