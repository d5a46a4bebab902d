"""Configurable CIFAR ResNets for student architecture search: any blocks and width per stage.

The zoo's ``CifarResNet`` has one block count ``n`` for all three stages and fixed widths; a student search
(``kdzero.diswot``) needs every stage free. ``StageResNet`` builds the same network family from the zoo's own
``BasicBlock`` (option-B shortcuts, RepDistiller's init) with per-stage depths and widths, so
``StageResNet((3, 3, 3), (16, 32, 64))`` is ResNet-20 layer for layer. No fixed name is registered here: students
are built from their architecture text (``StudentArch``, ``create_student``), registered as a model *pattern* so
that ``create_model`` accepts it as a model name, so a student found by ``kdzero student-search`` replays by its text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kdzero.errors import ConfigError, suggest
from kdzero.models.base import FeatureModel, init_conv_bn
from kdzero.models.cifar_resnet import BasicBlock
from kdzero.models.registry import register_model_pattern
from kdzero.models.wrn import WideResNet


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


# ------------------------------------------------------------------------------------------- architecture texts
FAMILIES: tuple[str, ...] = ("resnet", "wrn")
"""Student families: CIFAR ResNets with free stages, and Wide ResNets."""

_RESNET = re.compile(r"resnet\[(?P<depths>[^\]]*)\]x\[(?P<widths>[^\]]*)\]")
_WRN = re.compile(r"wrn_d(?P<depth>[^_]+)_w(?P<widen>.+)")
_EXAMPLES = "write e.g. resnet[3,3,3]x[16,32,64] or wrn_d16_w2"


@dataclass(frozen=True)
class StudentArch:
    """One student architecture: a family and its integer genes, with one canonical text form.

    ``resnet``: genes = blocks per stage, then width per stage; text ``resnet[3,3,3]x[16,32,64]``.
    ``wrn``: genes = (depth, widening factor), depth 6n+4; text ``wrn_d16_w2``.
    ``StudentArch.parse(str(a)) == a`` for every architecture.
    """

    family: str
    genes: tuple[int, ...]

    def __str__(self) -> str:
        if self.family == "resnet":
            half = len(self.genes) // 2
            return f"resnet[{','.join(map(str, self.genes[:half]))}]x[{','.join(map(str, self.genes[half:]))}]"
        return f"wrn_d{self.genes[0]}_w{self.genes[1]}"

    @classmethod
    def parse(cls, text: str) -> StudentArch:
        """Read an architecture text; a ConfigError names the bad token and what would be right."""
        raw = str(text)
        compact = re.sub(r"\s+", "", raw).lower()
        if match := _RESNET.fullmatch(compact):
            depths = _ints(match["depths"], raw, "depth")
            widths = _ints(match["widths"], raw, "width")
            if len(depths) != len(widths):
                raise ConfigError(f"bad student {raw!r}: {len(depths)} stage depths but {len(widths)} widths")
            if not 1 <= len(depths) <= 4:
                raise ConfigError(f"bad student {raw!r}: 1 to 4 stages, got {len(depths)}")
            return cls("resnet", depths + widths)
        if match := _WRN.fullmatch(compact):
            depth, widen = _ints(match["depth"], raw, "depth")[0], _ints(match["widen"], raw, "widening factor")[0]
            if (depth - 4) % 6 or depth < 10:
                raise ConfigError(f"bad student {raw!r}: WRN depth {depth} is not 6n+4 with n >= 1 (10, 16, 22, ...)")
            return cls("wrn", (depth, widen))
        family = re.split(r"[\[_]", compact, maxsplit=1)[0]
        if family not in FAMILIES:
            raise ConfigError(f"bad student {raw!r}: unknown family {family!r}; {suggest(family, FAMILIES)}")
        raise ConfigError(f"bad student {raw!r}: malformed {family} text; {_EXAMPLES}")

    @property
    def gene_names(self) -> tuple[str, ...]:
        """A name per gene (``depth1``, ``width1``, ... or ``depth``, ``widen``), for messages and tables."""
        if self.family == "resnet":
            stages = len(self.genes) // 2
            return tuple(f"depth{i + 1}" for i in range(stages)) + tuple(f"width{i + 1}" for i in range(stages))
        return ("depth", "widen")

    def with_gene(self, index: int, value: int) -> StudentArch:
        """A copy with gene ``index`` set to ``value`` and every other gene inherited."""
        genes = list(self.genes)
        genes[index] = value
        return StudentArch(self.family, tuple(genes))

    def build(self, num_classes: int, in_chans: int = 3) -> nn.Module:
        """A freshly initialised model of this architecture returning ``Features``."""
        if self.family == "resnet":
            half = len(self.genes) // 2
            return StageResNet(self.genes[:half], self.genes[half:], num_classes=num_classes, in_chans=in_chans)
        return WideResNet(self.genes[0], self.genes[1], num_classes=num_classes, in_chans=in_chans)


def _ints(part: str, raw: str, what: str) -> tuple[int, ...]:
    values = []
    for token in part.split(","):
        if not token.isdigit() or int(token) < 1:
            raise ConfigError(f"bad student {raw!r}: {what} {token!r} is not a positive integer; {_EXAMPLES}")
        values.append(int(token))
    return tuple(values)


def create_student(arch_text: str, num_classes: int, in_chans: int = 3) -> nn.Module:
    """Build the student named by an architecture text (``resnet[3,3,3]x[16,32,64]``, ``wrn_d16_w2``).

    This is what ``create_model`` needs to accept search results by name.
    """
    return StudentArch.parse(arch_text).build(num_classes, in_chans)


def is_architecture_text(name: str) -> bool:
    """A student-search architecture text (``resnet[...]x[...]``, ``wrn_dD_wW``) rather than a zoo name."""
    compact = name.replace(" ", "").lower()
    return compact.startswith("resnet[") or compact.startswith("wrn_d")


def _build_student(arch_text: str, num_classes: int, in_chans: int, **options: object) -> nn.Module:
    """``create_student`` as a registry pattern's builder: an architecture text carries every option itself."""
    if options:
        raise ConfigError(f"model {arch_text!r}: architecture texts take no options, got {', '.join(options)}")
    return create_student(arch_text, num_classes, in_chans)


register_model_pattern(is_architecture_text, _build_student, example="resnet[3,3,3]x[16,32,64] or wrn_d16_w2")
