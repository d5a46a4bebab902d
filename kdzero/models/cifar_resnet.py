"""CIFAR ResNets: RepDistiller's "option B" family and akamaster's "option A" family.

Both are three (or, for the x4 variants, three wide) stages of BasicBlocks on a 3x3 stem without max-pool, with
``n = (depth - 2) / 6`` blocks per stage, global average pooling and one linear classifier. They differ in the
shortcut used where a block changes shape:

* option B (``resnet8`` ... ``resnet110``, ``resnet8x4``, ``resnet32x4``): a 1x1 convolution + BN, as in
  RepDistiller/mdistiller, whose state-dict keys (``layerS.i.downsample.0``, ``fc``) these modules reproduce so
  that their checkpoints load;
* option A (``resnet20a`` ... ``resnet110a``): no parameters; subsample by the stride and zero-pad the new
  channels, as in akamaster/pytorch_resnet_cifar10, whose keys (``linear``) these modules reproduce so that the
  pretrained CIFAR-10 teachers load strictly.

Pooling is adaptive, so the same models run on 8x8 inputs (the embedded ``digits`` set, ``in_chans=1``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdzero.models.base import FeatureModel, init_conv_bn
from kdzero.models.registry import register_model


def _conv3x3(in_planes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: keep every ``stride``-th pixel and zero-pad the channels evenly on both sides.

    Parameter-free, so a network using it has exactly the state-dict keys of akamaster's checkpoints. For the
    doubling widths of CIFAR ResNets the padding is ``planes // 4`` on each side.
    """

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        if (planes - in_planes) % 2:
            raise ValueError(f"option-A shortcut needs an even channel increase, got {in_planes} -> {planes}")
        self.stride = stride
        self.pad = (planes - in_planes) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Subsample spatially, then pad the channel dimension with zeros."""
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers with a residual connection; ReLU after the sum.

    ``shortcut`` is ``"B"`` (1x1 conv + BN in ``downsample``, RepDistiller) or ``"A"`` (zero padding in
    ``shortcut``, akamaster); it only matters where the block changes stride or width.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "B") -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        reshapes = stride != 1 or in_planes != planes
        self.downsample: nn.Module | None = None
        self.shortcut: nn.Module = nn.Identity()
        if reshapes and shortcut == "B":
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        elif reshapes:
            self.shortcut = ZeroPadShortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = self.downsample(x) if self.downsample is not None else self.shortcut(x)
        return F.relu(out + residual)


class CifarResNet(FeatureModel):
    """A CIFAR ResNet of ``depth`` layers (6n+2) and stage ``widths`` (stem, stage 1, stage 2, stage 3).

    ``feat`` is the last stage's output (N, widths[3], H/4, W/4); ``emb`` its global average (N, widths[3]).
    ``shortcut="B"`` names the classifier ``fc`` (RepDistiller), ``"A"`` names it ``linear`` (akamaster).
    """

    def __init__(
        self,
        depth: int,
        widths: tuple[int, int, int, int] = (16, 16, 32, 64),
        num_classes: int = 100,
        in_chans: int = 3,
        shortcut: str = "B",
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        n = (depth - 2) // 6
        self.conv1 = _conv3x3(in_chans, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        for stage, (planes, stride) in enumerate(zip(widths[1:], (1, 2, 2)), start=1):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1, shortcut))
                in_planes = planes
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        self.classifier_attr = "fc" if shortcut == "B" else "linear"
        self.add_module(self.classifier_attr, nn.Linear(in_planes, num_classes))
        self.feature_channels = self.embedding_dim = in_planes
        self.num_classes = num_classes
        if shortcut == "B":
            init_conv_bn(self)
        else:  # akamaster initialises convolutions and the classifier with fan-in He init.
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_normal_(m.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, then the three stages; the output of the last (post-ReLU) block."""
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))


def _b(depth: int, widths: tuple[int, int, int, int], num_classes: int, in_chans: int) -> CifarResNet:
    return CifarResNet(depth, widths, num_classes=num_classes, in_chans=in_chans, shortcut="B")


def _a(depth: int, num_classes: int, in_chans: int) -> CifarResNet:
    return CifarResNet(depth, (16, 16, 32, 64), num_classes=num_classes, in_chans=in_chans, shortcut="A")


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


@register_model
def resnet8(num_classes: int = 100, in_chans: int = 3) -> CifarResNet:
    """ResNet-8 (option B, widths 16-16-32-64): the smallest student; also the default for 8x8 ``digits``."""
    return _b(8, _NARROW, num_classes, in_chans)


@register_model
def resnet14(num_classes: int = 100, in_chans: int = 3) -> CifarResNet:
    """ResNet-14 (option B, widths 16-16-32-64)."""
    return _b(14, _NARROW, num_classes, in_chans)


@register_model
def resnet20(num_classes: int = 100, in_chans: int = 3) -> CifarResNet:
    """ResNet-20 (option B, 0.28M parameters at 100 classes): KD-Zero's reference student."""
    return _b(20, _NARROW, num_classes, in_chans)


@register_model
def resnet32(num_classes: int = 100, in_chans: int = 3) -> CifarResNet:
    """ResNet-32 (option B, widths 16-16-32-64)."""
    return _b(32, _NARROW, num_classes, in_chans)


@register_model
def resnet44(num_classes: int = 100, in_chans: int = 3) -> CifarResNet:
    """ResNet-44 (option B, widths 16-16-32-64)."""
    return _b(44, _NARROW, num_classes, in_chans)


@register_model
def resnet56(num_classes: int = 100, in_chans: int = 3) -> CifarResNet:
    """ResNet-56 (option B, 0.86M parameters at 100 classes): a standard CIFAR-100 teacher."""
    return _b(56, _NARROW, num_classes, in_chans)


@register_model
def resnet110(num_classes: int = 100, in_chans: int = 3) -> CifarResNet:
    """ResNet-110 (option B, 1.73M parameters at 100 classes): a standard CIFAR-100 teacher."""
    return _b(110, _NARROW, num_classes, in_chans)


@register_model
def resnet8x4(num_classes: int = 100, in_chans: int = 3) -> CifarResNet:
    """ResNet-8x4 (option B, widths 32-64-128-256): the student paired with resnet32x4."""
    return _b(8, _WIDE, num_classes, in_chans)


@register_model
def resnet32x4(num_classes: int = 100, in_chans: int = 3) -> CifarResNet:
    """ResNet-32x4 (option B, widths 32-64-128-256, 7.43M parameters at 100 classes): a standard teacher."""
    return _b(32, _WIDE, num_classes, in_chans)


@register_model
def resnet20a(num_classes: int = 100, in_chans: int = 3) -> CifarResNet:
    """ResNet-20 with option-A shortcuts: loads akamaster's ``resnet20-12fca82f.th`` (num_classes=10)."""
    return _a(20, num_classes, in_chans)


@register_model
def resnet32a(num_classes: int = 100, in_chans: int = 3) -> CifarResNet:
    """ResNet-32 with option-A shortcuts: loads akamaster's ``resnet32-d509ac18.th`` (num_classes=10)."""
    return _a(32, num_classes, in_chans)


@register_model
def resnet44a(num_classes: int = 100, in_chans: int = 3) -> CifarResNet:
    """ResNet-44 with option-A shortcuts: loads akamaster's ``resnet44-014dd654.th`` (num_classes=10)."""
    return _a(44, num_classes, in_chans)


@register_model
def resnet56a(num_classes: int = 100, in_chans: int = 3) -> CifarResNet:
    """ResNet-56 with option-A shortcuts: loads akamaster's ``resnet56-4bfd9763.th`` (num_classes=10)."""
    return _a(56, num_classes, in_chans)


@register_model
def resnet110a(num_classes: int = 100, in_chans: int = 3) -> CifarResNet:
    """ResNet-110 with option-A shortcuts, in akamaster's layout (no pretrained file is shipped for it)."""
    return _a(110, num_classes, in_chans)
