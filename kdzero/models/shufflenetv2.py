"""ShuffleNetV2 for CIFAR (Ma et al.), as RepDistiller's ``ShuffleV2`` (1x, 1.35M parameters at 100 classes).

A 1x1 stem to 24 channels, three stages (116/232/464 channels, 3/7/3 basic blocks after a stride-2 down block),
a 1x1 conv to 1024 channels, global average pooling and one linear layer. Key names (``conv1``, ``bn1``,
``layerS.i``, ``conv2``, ``bn2``, ``linear``) follow RepDistiller/mdistiller.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdzero.models.base import FeatureModel
from kdzero.models.registry import register_model
from kdzero.models.shufflenetv1 import channel_shuffle


class ShuffleV2Block(nn.Module):
    """Split the channels in half, transform one half (1x1, depthwise 3x3, 1x1), concatenate and shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, kernel_size=3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """shuffle(cat(x1, branch(x2))) where x1, x2 are the two channel halves of ``x``."""
        x1, x2 = x.chunk(2, dim=1)
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([x1, out], 1), 2)


class ShuffleV2DownBlock(nn.Module):
    """Stride-2 block: two branches over the whole input, each producing half the output channels."""

    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__()
        mid = out_chans // 2
        self.conv1 = nn.Conv2d(in_chans, in_chans, kernel_size=3, stride=2, padding=1, groups=in_chans, bias=False)
        self.bn1 = nn.BatchNorm2d(in_chans)
        self.conv2 = nn.Conv2d(in_chans, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_chans, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """shuffle(cat(left(x), right(x))), both branches halving the resolution."""
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(FeatureModel):
    """CIFAR ShuffleNetV2; ``feat`` is relu(bn2(conv2)), ``widths[-1]`` channels at H/8 (4x4 on CIFAR)."""

    classifier_attr = "linear"

    def __init__(
        self,
        num_classes: int = 100,
        in_chans: int = 3,
        widths: tuple[int, int, int, int] = (116, 232, 464, 1024),
        blocks: tuple[int, int, int] = (3, 7, 3),
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        channels = 24
        for stage, (width, n) in enumerate(zip(widths[:3], blocks), start=1):
            layers = [ShuffleV2DownBlock(channels, width), *(ShuffleV2Block(width) for _ in range(n))]
            self.add_module(f"layer{stage}", nn.Sequential(*layers))
            channels = width
        self.conv2 = nn.Conv2d(channels, widths[3], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.linear = nn.Linear(widths[3], num_classes)
        self.feature_channels = self.embedding_dim = widths[3]
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, the three stages, and the 1x1 conv to ``feature_channels``."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return F.relu(self.bn2(self.conv2(x)))


@register_model
def shufflenetv2(num_classes: int = 100, in_chans: int = 3) -> ShuffleNetV2:
    """ShuffleNetV2 1x: the student for resnet32x4 and vgg13 in the CRD tables."""
    return ShuffleNetV2(num_classes, in_chans)
