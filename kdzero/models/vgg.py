"""VGG with batch norm for CIFAR, in RepDistiller's layout.

Five blocks of 3x3 conv-BN-ReLU separated by 2x2 max-pools (the one before the last block only on inputs of 64
pixels or more, as RepDistiller does for Tiny-ImageNet), global average pooling and a single linear classifier.
Each block's final ReLU is applied in ``forward`` (so ``blockS`` ends with BN); key names (``block0`` ...
``block4``, ``classifier``) follow RepDistiller/mdistiller so that their VGG checkpoints load.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdzero.models.base import FeatureModel, init_conv_bn
from kdzero.models.registry import register_model

_CFGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


def _block(widths: tuple[int, ...], in_chans: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(in_chans, w, kernel_size=3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        in_chans = w
    return nn.Sequential(*layers[:-1])


class VGG(FeatureModel):
    """VGG-BN; ``feat`` is relu(block4), 512 channels at H/8 (4x4 on CIFAR; H/16 on inputs of 64 pixels or more)."""

    classifier_attr = "classifier"

    def __init__(self, cfg: tuple[tuple[int, ...], ...], num_classes: int = 100, in_chans: int = 3) -> None:
        super().__init__()
        for i, widths in enumerate(cfg):
            self.add_module(f"block{i}", _block(widths, in_chans))
            in_chans = widths[-1]
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.classifier = nn.Linear(in_chans, num_classes)
        self.feature_channels = self.embedding_dim = in_chans
        self.num_classes = num_classes
        init_conv_bn(self)
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Five conv blocks with max-pools between the first four (and the fifth on inputs >= 64 pixels)."""
        size = x.shape[-2]
        x = F.relu(self.block0(x))
        x = F.relu(self.block1(self.pool(x)))
        x = F.relu(self.block2(self.pool(x)))
        x = F.relu(self.block3(self.pool(x)))
        if size >= 64:
            x = self.pool(x)
        return F.relu(self.block4(x))


@register_model
def vgg8(num_classes: int = 100, in_chans: int = 3) -> VGG:
    """VGG-8-BN (one conv per block): the student paired with vgg13."""
    return VGG(_CFGS["vgg8"], num_classes, in_chans)


@register_model
def vgg11(num_classes: int = 100, in_chans: int = 3) -> VGG:
    """VGG-11-BN."""
    return VGG(_CFGS["vgg11"], num_classes, in_chans)


@register_model
def vgg13(num_classes: int = 100, in_chans: int = 3) -> VGG:
    """VGG-13-BN (9.46M parameters at 100 classes): a standard CIFAR-100 teacher."""
    return VGG(_CFGS["vgg13"], num_classes, in_chans)


@register_model
def vgg16(num_classes: int = 100, in_chans: int = 3) -> VGG:
    """VGG-16-BN."""
    return VGG(_CFGS["vgg16"], num_classes, in_chans)


@register_model
def vgg19(num_classes: int = 100, in_chans: int = 3) -> VGG:
    """VGG-19-BN."""
    return VGG(_CFGS["vgg19"], num_classes, in_chans)
