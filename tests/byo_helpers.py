"""Tiny real models and datasets that tests name by spec (``tests.byo_helpers:tiny_cnn``), as a user would."""
from __future__ import annotations

import torch
from torch import nn


class TinyCNN(nn.Module):
    """Two 3x3 convolutions, global pooling and a linear classifier: a plain classifier (returns logits)."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.BatchNorm2d(2 * width),
                                  nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.body(x)).flatten(1))


def tiny_cnn(num_classes: int = 10, in_chans: int = 3, width: int = 8) -> nn.Module:
    """A fresh TinyCNN (a factory, as ``--student tests.byo_helpers:tiny_cnn`` calls it)."""
    return TinyCNN(num_classes, in_chans, width)


def broken_factory(num_classes: int = 10) -> nn.Module:
    """A factory that fails, for the error-message tests."""
    raise RuntimeError("no GPU in this factory")


def not_a_module() -> str:
    """A factory returning something that is not a model."""
    return "resnet"


def tiny_dataset() -> tuple:
    """(train, test) as (images, labels) tensors: 4 classes of 8x8 RGB images told apart by mean colour."""
    generator = torch.Generator().manual_seed(0)

    def part(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % 4
        base = torch.rand(n, 3, 8, 8, generator=generator) * 0.5
        base[torch.arange(n), labels % 3] += 0.25 + 0.25 * (labels >= 3).float().unsqueeze(-1).unsqueeze(-1)
        return base.clamp(0, 1), labels

    return part(120), part(40)
