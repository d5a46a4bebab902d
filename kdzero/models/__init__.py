"""The model zoo: every model is built by name and returns ``Features(feat, emb, logit)``.

>>> from kdzero.models import create_model, list_models, load_checkpoint
>>> model = create_model("resnet20", num_classes=10)
>>> out = model(torch.randn(2, 3, 32, 32))      # out.feat (2, 64, 8, 8), out.emb (2, 64), out.logit (2, 10)
>>> model.feature_channels, model.embedding_dim, model.num_classes
(64, 64, 10)

Families (one module each): CIFAR ResNets with 1x1-conv shortcuts (RepDistiller) and with zero-padding shortcuts
(akamaster, ``*a`` names), Wide ResNets, VGG-BN, MobileNetV2, ShuffleNetV1/V2, and torchvision classifiers
(``tv_*``). ``wrap_model`` gives any other classifier the same interface through forward hooks.
"""
from __future__ import annotations

# isort: off
from kdzero.models import specs  # first pattern: a name with a colon is always a model spec
# isort: on
from kdzero.models import (
    cifar_resnet,
    mobilenetv2,
    searchable,
    shufflenetv1,
    shufflenetv2,
    torchvision_models,
    vgg,
    wrn,
)
from kdzero.models.adapters import HookedFeatureModel, wrap_model
from kdzero.models.base import FeatureModel
from kdzero.models.checkpoint import CheckpointInfo, load_checkpoint, read_checkpoint
from kdzero.models.registry import create_model, list_models, register_model, register_model_pattern

__all__ = [
    "CheckpointInfo",
    "FeatureModel",
    "HookedFeatureModel",
    "create_model",
    "list_models",
    "load_checkpoint",
    "read_checkpoint",
    "register_model",
    "register_model_pattern",
    "wrap_model",
]

# imported to register their models
del cifar_resnet, mobilenetv2, searchable, specs, shufflenetv1, shufflenetv2, torchvision_models, vgg, wrn
