"""MobileNetV2 for CIFAR, as RepDistiller's ``MobileNetV2`` (its ``mobile_half``: width 0.5, expansion 6).

A stride-2 stem, the seven inverted-residual stages of Sandler et al. with strides (1, 1, 2, 2, 1, 2, 1), a
1x1 conv to 1280 channels, global average pooling and one linear layer (0.81M parameters at 100 classes).
Key names (``conv1``, ``blocks.S.i.conv.k``, ``conv2``, ``classifier.0``) follow RepDistiller/mdistiller.
"""
from __future__ import annotations

import torch
from torch import nn

from kdzero.models.base import FeatureModel
from kdzero.models.registry import register_model

# (expansion, output channels at width 1, blocks, first stride); None means the model's expansion ratio.
_STAGES: tuple[tuple[int | None, int, int, int], ...] = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)


def _conv_bn_relu(in_chans: int, out_chans: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chans, out_chans, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out_chans),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, linear 1x1 projection; identity residual where the shape is kept."""

    def __init__(self, in_chans: int, out_chans: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_chans * expansion
        self.use_residual = stride == 1 and in_chans == out_chans
        self.conv = nn.Sequential(
            nn.Conv2d(in_chans, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_chans, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's transform, plus ``x`` when input and output shapes agree."""
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(FeatureModel):
    """CIFAR MobileNetV2; ``feat`` is relu(bn(conv2)), 1280 channels at H/16 (2x2 on CIFAR)."""

    classifier_attr = "classifier"

    def __init__(
        self, num_classes: int = 100, in_chans: int = 3, width_mult: float = 0.5, expansion: int = 6
    ) -> None:
        super().__init__()
        channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(in_chans, channels, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in _STAGES:
            out = int(c * width_mult)
            layers = []
            for i in range(n):
                layers.append(InvertedResidual(channels, out, s if i == 0 else 1, expansion if t is None else t))
                channels = out
            self.blocks.append(nn.Sequential(*layers))
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(channels, last, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        self.feature_channels = self.embedding_dim = last
        self.num_classes = num_classes
        for m in self.modules():  # RepDistiller's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, (2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, the seven inverted-residual stages, and the 1x1 conv to ``feature_channels``."""
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        return self.conv2(x)


@register_model
def mobilenetv2(num_classes: int = 100, in_chans: int = 3) -> MobileNetV2:
    """MobileNetV2 at width 0.5 (RepDistiller's ``MobileNetV2``): the student for vgg13 and ResNet-50."""
    return MobileNetV2(num_classes, in_chans)
