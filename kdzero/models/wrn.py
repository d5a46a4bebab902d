"""Wide ResNets for CIFAR (Zagoruyko & Komodakis), in RepDistiller's layout.

Pre-activation blocks (BN-ReLU-conv), ``n = (depth - 4) / 6`` blocks per stage, widths ``16k, 32k, 64k`` for
widening factor ``k``, a final BN-ReLU before pooling. Key names (``blockS.layer.i.convShortcut``, ``bn1``,
``fc``) follow RepDistiller/mdistiller so that their WRN checkpoints load.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdzero.models.base import FeatureModel, init_conv_bn
from kdzero.models.registry import register_model


class WideBasicBlock(nn.Module):
    """Pre-activation residual block; a 1x1 convolution shortcut where the width changes."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == planes
        self.convShortcut = (
            None if self.equal_in_out else nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """conv2(relu(bn2(conv1(relu(bn1(x)))))) plus x, or plus the 1x1 projection of relu(bn1(x))."""
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return out + (x if self.convShortcut is None else self.convShortcut(pre))


class _NetworkBlock(nn.Module):
    """One stage; a wrapper only so that state-dict keys read ``blockS.layer.i`` as in RepDistiller."""

    def __init__(self, n: int, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(WideBasicBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1) for i in range(n))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(FeatureModel):
    """WRN-``depth``-``widen``; ``feat`` is relu(bn1(last stage)), (N, 64*widen, H/4, W/4)."""

    def __init__(self, depth: int, widen: int, num_classes: int = 100, in_chans: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_chans, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = _NetworkBlock(n, widths[0], widths[1], 1)
        self.block2 = _NetworkBlock(n, widths[1], widths[2], 2)
        self.block3 = _NetworkBlock(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        self.feature_channels = self.embedding_dim = widths[3]
        self.num_classes = num_classes
        init_conv_bn(self)
        nn.init.zeros_(self.fc.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, three stages, and the final BN-ReLU."""
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return F.relu(self.bn1(x))


@register_model
def wrn_16_1(num_classes: int = 100, in_chans: int = 3) -> WideResNet:
    """WRN-16-1: two blocks per stage, widths 16-32-64."""
    return WideResNet(16, 1, num_classes, in_chans)


@register_model
def wrn_16_2(num_classes: int = 100, in_chans: int = 3) -> WideResNet:
    """WRN-16-2 (0.70M parameters at 100 classes): the student paired with wrn_40_2."""
    return WideResNet(16, 2, num_classes, in_chans)


@register_model
def wrn_40_1(num_classes: int = 100, in_chans: int = 3) -> WideResNet:
    """WRN-40-1 (0.57M parameters at 100 classes): a student paired with wrn_40_2."""
    return WideResNet(40, 1, num_classes, in_chans)


@register_model
def wrn_40_2(num_classes: int = 100, in_chans: int = 3) -> WideResNet:
    """WRN-40-2 (2.26M parameters at 100 classes): a standard CIFAR-100 teacher."""
    return WideResNet(40, 2, num_classes, in_chans)


@register_model
def wrn_28_4(num_classes: int = 100, in_chans: int = 3) -> WideResNet:
    """WRN-28-4: four blocks per stage, widths 64-128-256."""
    return WideResNet(28, 4, num_classes, in_chans)
