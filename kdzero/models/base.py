"""The base class every zoo model derives from: one forward pass, three views (``Features``).

Zoo models split their forward pass timm-style into ``forward_features`` (input -> last stage's feature map,
post-activation, before pooling) and ``forward_head`` (feature map -> pooled embedding and logits). ``forward``
composes the two and returns ``Features(feat, emb, logit)``, so a distiller never needs to know the architecture.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdzero.features import Features


class FeatureModel(nn.Module):
    """A classifier whose ``forward`` returns ``Features(feat, emb, logit)``.

    Subclasses set ``feature_channels`` (C of ``feat``), ``embedding_dim`` (D of ``emb``) and ``num_classes``
    (K of ``logit``) in ``__init__``, implement ``forward_features`` and name their final ``nn.Linear`` in
    ``classifier_attr``; the default head is global average pooling followed by that classifier, which is what
    every CIFAR family here does.
    """

    classifier_attr: str = "fc"
    feature_channels: int
    embedding_dim: int
    num_classes: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map (N, C, H, W), after its activation and before pooling."""
        raise NotImplementedError

    def get_classifier(self) -> nn.Module:
        """The module mapping ``emb`` to ``logit`` (a linear layer, or a container ending in one)."""
        return getattr(self, self.classifier_attr)

    def forward_head(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool the feature map to the embedding (N, D) and classify it to logits (N, K)."""
        emb = torch.flatten(F.adaptive_avg_pool2d(feat, 1), 1)
        return emb, self.get_classifier()(emb)

    def forward(self, x: torch.Tensor) -> Features:
        """Run the network once and return all three knowledge inputs."""
        feat = self.forward_features(x)
        emb, logit = self.forward_head(feat)
        return Features(feat=feat, emb=emb, logit=logit)

    def feature_info(self) -> dict[str, int]:
        """Channel counts of the three outputs, for sizing connectors before any forward pass."""
        return {
            "feature_channels": self.feature_channels,
            "embedding_dim": self.embedding_dim,
            "num_classes": self.num_classes,
        }


def init_conv_bn(model: nn.Module) -> None:
    """He (fan-out) initialisation for convolutions, unit scale and zero shift for batch norms.

    The initialisation RepDistiller's CIFAR families use; shared here so each family states only its deviations.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
