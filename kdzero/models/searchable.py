"""Configurable CIFAR ResNets for student architecture search: any blocks and width per stage.

The zoo's ``CifarResNet`` has one block count ``n`` for all three stages and fixed widths; a student search
(``kdzero.diswot``) needs every stage free. ``StageResNet`` builds the same network family from the zoo's own
``BasicBlock`` (option-B shortcuts, RepDistiller's init) with per-stage depths and widths, so
``StageResNet((3, 3, 3), (16, 32, 64))`` is ResNet-20 layer for layer. Nothing here is registered: students
are built from their architecture text by ``kdzero.diswot.create_student``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdzero.models.base import FeatureModel, init_conv_bn
from kdzero.models.cifar_resnet import BasicBlock


class StageResNet(FeatureModel):
    """A CIFAR ResNet with ``depths[i]`` BasicBlocks of width ``widths[i]`` in stage ``i``.

    The stem is a 3x3 conv + BN to ``widths[0]`` channels (no max-pool); stage 0 keeps the resolution and every
    later stage halves it; a block that changes shape uses a 1x1 conv + BN shortcut (option B, which, unlike
    option A's zero padding, allows any width change, narrowing included). ``feat`` is the last stage's output,
    ``emb`` its global average, ``fc`` the classifier.
    """

    def __init__(self, depths: tuple[int, ...], widths: tuple[int, ...], num_classes: int = 100,
                 in_chans: int = 3) -> None:
        super().__init__()
        if not depths or len(depths) != len(widths):
            raise ValueError(f"need one width per stage, got depths {depths} and widths {widths}")
        if min(depths) < 1 or min(widths) < 1:
            raise ValueError(f"depths and widths must be positive, got {depths} and {widths}")
        self.conv1 = nn.Conv2d(in_chans, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        stages = []
        for stage, (blocks, planes) in enumerate(zip(depths, widths)):
            layers = []
            for i in range(blocks):
                layers.append(BasicBlock(in_planes, planes, 2 if stage > 0 and i == 0 else 1, shortcut="B"))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(in_planes, num_classes)
        self.feature_channels = self.embedding_dim = in_planes
        self.num_classes = num_classes
        init_conv_bn(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, then every stage; the output of the last (post-ReLU) block."""
        return self.stages(F.relu(self.bn1(self.conv1(x))))
