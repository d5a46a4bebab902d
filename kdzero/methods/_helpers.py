"""Small pieces several distiller families share: shape lookups, connectors, spatial matching, argument checks.

Private to ``kdzero.methods``: each helper turns a mistake into a ``ConfigError`` that names the method.
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from kdzero.errors import ConfigError
from kdzero.features import Features
from kdzero.methods.base import Shapes
from kdzero.ops import OpContext
from kdzero.ops.transforms import zscore_C


def side_size(shapes: Shapes | None, key: str, side: str, method: str) -> int:
    """The channel (feat) or width (emb, logit) of one side, or a ConfigError saying which shapes are missing."""
    if shapes is None or key not in shapes or len(shapes[key]) == 0:
        example = "(C, H, W)" if key == "feat" else "(D,)"
        raise ConfigError(
            f"method {method!r} builds a learned connector and needs {side}_shapes with {key!r}: {example} "
            f"(per sample, e.g. feature_shapes(features)); got {shapes!r}"
        )
    return int(shapes[key][0])


def optional_sizes(
    student_shapes: Shapes | None, teacher_shapes: Shapes | None, key: str
) -> tuple[int, int] | None:
    """Both sides' first dimension for ``key`` when both are known, else None (the method assumes they match)."""
    if student_shapes is None or teacher_shapes is None or key not in student_shapes or key not in teacher_shapes:
        return None
    return int(student_shapes[key][0]), int(teacher_shapes[key][0])


def conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    """A 1x1 conv (no bias) + BatchNorm connector, initialised as OFD's ``build_feature_connector`` does."""
    conv = nn.Conv2d(c_in, c_out, kernel_size=1, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / c_out))
    return nn.Sequential(conv, nn.BatchNorm2d(c_out))


def match_spatial(s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the larger of two (N, C, H, W) maps down to the smaller one's size, per spatial axis."""
    size = (min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1]))
    if tuple(s.shape[-2:]) != size:
        s = F.adaptive_avg_pool2d(s, size)
    if tuple(t.shape[-2:]) != size:
        t = F.adaptive_avg_pool2d(t, size)
    return s, t


def check_width(s: Tensor, t: Tensor, dim: int, method: str) -> None:
    """A ConfigError when a connector-free method meets student/teacher tensors of different width on ``dim``."""
    if s.shape[dim] != t.shape[dim]:
        raise ConfigError(
            f"method {method!r}: student has size {s.shape[dim]} and teacher {t.shape[dim]} on axis {dim}; "
            "pass student_shapes and teacher_shapes to create_method so that a connector is built"
        )


def positive_number(value: float, what: str, method: str) -> float:
    """``value`` as a float, or a ConfigError if it is not a positive number (temperatures, clips)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not number > 0:
        raise ConfigError(f"method {method!r}: {what} must be a positive number, got {value!r}")
    return number


def pick_logits(student: Features, teacher: Features, standardize: bool) -> tuple[Tensor, Tensor]:
    """Both sides' logits (the teacher's detached), z-scored per sample over the classes when ``standardize``
    (logit standardisation: the same function as the ``zscore_C`` transform of the genome language)."""
    z_s, z_t = student.logit, teacher.logit.detach()
    if standardize:
        context = OpContext(training=False)
        z_s, z_t = zscore_C(z_s, context), zscore_C(z_t, context)
    return z_s, z_t


