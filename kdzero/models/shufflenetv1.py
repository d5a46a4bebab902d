"""ShuffleNetV1 for CIFAR (Zhang et al.), as RepDistiller's ``ShuffleV1`` (groups 3, 0.95M parameters at 100 classes).

A 1x1 stem to 24 channels, three stages of grouped bottlenecks with channel shuffle (widths 240/480/960, 4/8/4
blocks); each stage opens with a stride-2 block that concatenates an average-pooled shortcut. Key names
(``conv1``, ``bn1``, ``layerS.i``, ``linear``) follow RepDistiller/mdistiller.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdzero.models.base import FeatureModel
from kdzero.models.registry import register_model


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` groups so that the next grouped convolution mixes them."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleV1Bottleneck(nn.Module):
    """Grouped 1x1, shuffle, depthwise 3x3, grouped 1x1; add (stride 1) or concatenate (stride 2) the shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        mid = out_planes // 4
        self.first_groups = 1 if in_planes == 24 else groups  # the 24-channel stem is too narrow to split
        self.stride = stride
        self.conv1 = nn.Conv2d(in_planes, mid, kernel_size=1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """relu(branch + x) at stride 1, relu(cat(branch, avgpool(x))) at stride 2."""
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        return F.relu(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleNetV1(FeatureModel):
    """CIFAR ShuffleNetV1; ``feat`` is the last stage's output, ``widths[-1]`` channels at H/8 (4x4 on CIFAR)."""

    classifier_attr = "linear"

    def __init__(
        self,
        num_classes: int = 100,
        in_chans: int = 3,
        widths: tuple[int, int, int] = (240, 480, 960),
        blocks: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_planes = 24
        for stage, (width, n) in enumerate(zip(widths, blocks), start=1):
            layers = []
            for i in range(n):
                # the stride-2 opener concatenates its input, so its branch makes only the missing channels
                layers.append(ShuffleV1Bottleneck(in_planes, width - in_planes if i == 0 else width, 2 if i == 0 else 1,
                                                  groups))
                in_planes = width
            self.add_module(f"layer{stage}", nn.Sequential(*layers))
        self.linear = nn.Linear(in_planes, num_classes)
        self.feature_channels = self.embedding_dim = in_planes
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and the three shuffle stages."""
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))


@register_model
def shufflenetv1(num_classes: int = 100, in_chans: int = 3) -> ShuffleNetV1:
    """ShuffleNetV1 (groups 3): the student for resnet32x4, wrn_40_2 and vgg13 in the CRD tables."""
    return ShuffleNetV1(num_classes, in_chans)
