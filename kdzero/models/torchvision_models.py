"""Torchvision classifiers (ImageNet architectures, randomly initialised) as ``Features`` models.

Each is built with ``weights=None`` (nothing is downloaded; load weights with ``load_checkpoint``) and wrapped by
``wrap_model``. ``in_chans`` other than 3 replaces the first convolution by one of the same geometry.
torchvision is imported when a model is built, not when ``kdzero.models`` is imported.
"""
from __future__ import annotations

from torch import nn

from kdzero.models.adapters import HookedFeatureModel
from kdzero.models.registry import register_model


def _replace_stem(module: nn.Module, in_chans: int) -> None:
    name, conv = next((n, m) for n, m in module.named_modules() if isinstance(m, nn.Conv2d))
    if conv.in_channels == in_chans:
        return
    parent_name, _, attr = name.rpartition(".")
    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None)
    setattr(module.get_submodule(parent_name), attr, new)


def _build(arch: str, num_classes: int, in_chans: int) -> HookedFeatureModel:
    import torchvision

    module = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    _replace_stem(module, in_chans)
    return HookedFeatureModel(module)


@register_model
def tv_resnet18(num_classes: int = 100, in_chans: int = 3) -> HookedFeatureModel:
    """torchvision ResNet-18; ``feat`` is ``layer4`` (512 channels at H/32)."""
    return _build("resnet18", num_classes, in_chans)


@register_model
def tv_resnet34(num_classes: int = 100, in_chans: int = 3) -> HookedFeatureModel:
    """torchvision ResNet-34; ``feat`` is ``layer4`` (512 channels at H/32)."""
    return _build("resnet34", num_classes, in_chans)


@register_model
def tv_resnet50(num_classes: int = 100, in_chans: int = 3) -> HookedFeatureModel:
    """torchvision ResNet-50; ``feat`` is ``layer4`` (2048 channels at H/32): the ImageNet teacher."""
    return _build("resnet50", num_classes, in_chans)


@register_model
def tv_mobilenet_v2(num_classes: int = 100, in_chans: int = 3) -> HookedFeatureModel:
    """torchvision MobileNetV2 (width 1.0); ``feat`` is ``features`` (1280 channels at H/32)."""
    return _build("mobilenet_v2", num_classes, in_chans)


@register_model
def tv_mobilenet_v3_small(num_classes: int = 100, in_chans: int = 3) -> HookedFeatureModel:
    """torchvision MobileNetV3-Small; ``feat`` is ``features`` (576 channels), ``emb`` the 1024-d hidden layer."""
    return _build("mobilenet_v3_small", num_classes, in_chans)


@register_model
def tv_efficientnet_b0(num_classes: int = 100, in_chans: int = 3) -> HookedFeatureModel:
    """torchvision EfficientNet-B0; ``feat`` is ``features`` (1280 channels at H/32)."""
    return _build("efficientnet_b0", num_classes, in_chans)
