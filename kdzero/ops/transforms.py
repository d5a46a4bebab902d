"""The 41 transforms of the KD-Zero search space (its 40 plus ``zscore_C``, logit standardisation).

A transform maps a tensor to a tensor and is applied identically to the student and the teacher side. Ranks:
2-D (N, K) vectors, 3-D (N, C, L) sequences of channel vectors, 4-D (N, C, H, W) maps. Axis 1 is always the
channel axis; the axes after it are the positions ("HW"). Every transform keeps finite inputs finite, with
finite gradients: where the textbook function overflows or has an infinite slope (exp, pow4, log, sqrt) the
formula below says how it is made safe. Nothing here normalises across the batch unless its name says so
(``_N``, ``natt``, ``mm``, ``batchnorm``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdzero.ops._registry import TRANSFORMS, OpContext, Shape

EPS = 1e-6
EXP_CLAMP = 20.0  # exp(20) ~ 4.9e8: large, yet its square and fourth power stay inside float32
POW_CLAMP = 1e4  # (1e4)^4 = 1e16: finite in float32 and bfloat16
DROP_PROB = 0.1
MASK_KEEP = 0.5
# The largest batch the magnitude bounds of the batch-wide ops (natt, batchnorm, logsoftmax_N) allow for.
BATCH_BOUND = 4096

register = TRANSFORMS.register


def _positions(x: torch.Tensor) -> torch.Tensor:
    """(N, C, *positions) -> (N, C, L), a view when possible."""
    return x.reshape(x.shape[0], x.shape[1], -1)


def _per_sample(x: torch.Tensor) -> torch.Tensor:
    """(N, ...) -> (N, D)."""
    return x.reshape(x.shape[0], -1)


def _unit(bound: float, shape: Shape) -> float:
    """Magnitude bound of an op whose output lies in [-1, 1] whatever its input."""
    return 1.0


def _one_channel(shape: Shape) -> str:
    """Degeneracy of an op over the channel axis (the features of a 2-D input)."""
    return "it acts over a channel axis of length 1" if shape[1] == 1 else ""


def _one_position(shape: Shape) -> str:
    """Degeneracy of an op over the positions of each channel."""
    return "it acts over a single position (a 1x1 map)" if math.prod(shape[2:]) == 1 else ""


def _one_entry(shape: Shape) -> str:
    """Degeneracy of an op over each sample's entries."""
    return "it acts over one entry per sample" if math.prod(shape[1:]) == 1 else ""


def _broadcast_per_sample(stat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N, 1, ..., 1) matching ``like``'s rank."""
    return stat.reshape(stat.shape[0], *([1] * (like.dim() - 1)))


# ----------------------------------------------------------------------------------------------- elementwise
@register(formula="exp(min(x, 20))", idempotent=False, bound=lambda b, s: math.exp(min(b, EXP_CLAMP)))
def exp(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Exponential; the input is capped at 20 so that the output and its powers stay finite."""
    return torch.exp(torch.clamp(x, max=EXP_CLAMP))


@register(formula="x * tanh(softplus(x))")
def mish(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Mish activation (Misra 2019)."""
    return F.mish(x)


@register(formula="max(x, 0.01 x)")
def leaky_relu(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Leaky ReLU with slope 0.01 for negative inputs."""
    return F.leaky_relu(x, 0.01)


@register(formula="max(x, 0)", idempotent=True)
def relu(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """ReLU: keeps the positive responses only."""
    return F.relu(x)


@register(formula="tanh(x)", bound=lambda b, s: min(b, 1.0))
def tanh(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Hyperbolic tangent: squashes responses into (-1, 1)."""
    return torch.tanh(x)


@register(formula="1 / (1 + exp(-x))", bound=lambda b, s: 1.0)
def sigmoid(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Logistic sigmoid: squashes responses into (0, 1)."""
    return torch.sigmoid(x)


@register(formula="x * sigmoid(x)")
def swish(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Swish / SiLU activation."""
    return F.silu(x)


@register(formula="|x|", idempotent=True)
def abs(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Absolute value: response strength regardless of sign."""
    return torch.abs(x)


@register(formula="clamp(x, -1e4, 1e4)^2", bound=lambda b, s: min(b, POW_CLAMP) ** 2)
def pow2(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Square (energy), input clamped to +-1e4 to stay finite."""
    return torch.clamp(x, -POW_CLAMP, POW_CLAMP).pow(2)


@register(formula="clamp(x, -1e4, 1e4)^4", bound=lambda b, s: min(b, POW_CLAMP) ** 4)
def pow4(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Fourth power, input clamped to +-1e4 so that the result (at most 1e16) stays finite."""
    return torch.clamp(x, -POW_CLAMP, POW_CLAMP).pow(4)


@register(formula="sign(x) * log(1 + |x|)")
def log(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Signed logarithm: defined for every real input, slope 1 at 0 (plain log is NaN for x <= 0)."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


@register(formula="sign(x) * (sqrt(|x| + 1e-6) - sqrt(1e-6))")
def sqrt(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Signed square root, shifted by 1e-6 inside so that its slope at 0 is finite (about 500)."""
    return torch.sign(x) * (torch.sqrt(torch.abs(x) + EPS) - math.sqrt(EPS))


# ------------------------------------------------------------------------------------------------ random
@register(formula="x * m / 0.9, m ~ Bernoulli(0.9) shared by both sides; x in eval mode", random=True,
          bound=lambda b, s: b / (1.0 - DROP_PROB))
def drop(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Dropout with p = 0.1, one mask per call shared by student and teacher, off in eval mode. When the two
    sides differ in width (no connector), the mask is drawn per sample and position and spans all channels."""
    if not ctx.training:
        return x
    keep = ctx.bernoulli(tuple(x.shape), 1.0 - DROP_PROB, x.device, x.dtype)
    return x * keep / (1.0 - DROP_PROB)


@register(formula="x * m, m ~ Bernoulli(0.5) per position (per entry for 2-D), shared; x in eval", random=True)
def mask(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Random masking of half the positions (all channels of a position together), as in masked feature
    distillation; one mask per call shared by both sides, off in eval mode."""
    if not ctx.training:
        return x
    shape = tuple(x.shape) if x.dim() == 2 else (x.shape[0], 1, *x.shape[2:])
    return x * ctx.bernoulli(shape, MASK_KEEP, x.device, x.dtype)


@register(formula="x", identity_ranks=frozenset({2, 3, 4}), idempotent=True)
def no(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Identity: an empty slot."""
    return x


# --------------------------------------------------------------------------------------------- attention
@register(formula="x * L * softmax_positions(mean_C |x|)", ranks=frozenset({3, 4}),
          bound=lambda b, s: b * math.prod(s[2:]))
def satt(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Spatial attention: re-weights every position by the softmax of its mean absolute channel response
    (scaled by the number of positions L so the mean weight is 1). Returns the re-weighted feature."""
    flat = _positions(x)
    weights = torch.softmax(flat.abs().mean(dim=1, keepdim=True), dim=2) * flat.shape[2]
    return (flat * weights).reshape(x.shape)


@register(formula="x * C * softmax_C(mean_positions |x|)", bound=lambda b, s: b * s[1])
def catt(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Channel attention: re-weights every channel by the softmax over channels of its mean absolute response
    (scaled by C so the mean weight is 1). Returns the re-weighted feature, channels on axis 1."""
    strength = x.abs() if x.dim() == 2 else _positions(x).abs().mean(dim=2)
    weights = torch.softmax(strength, dim=1) * x.shape[1]
    return x * weights.reshape(*weights.shape, *([1] * (x.dim() - 2)))


@register(formula="x * N * softmax_N(mean |x| per sample)", bound=lambda b, s: b * BATCH_BOUND)
def natt(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Sample attention: re-weights every sample by the softmax over the batch of its mean absolute response
    (scaled by N so the mean weight is 1)."""
    weights = torch.softmax(_per_sample(x).abs().mean(dim=1), dim=0) * x.shape[0]
    return x * _broadcast_per_sample(weights, x)


# ------------------------------------------------------------------------------------------ relations
@register(formula="F F^T / L with F = x as (N, C, L): per-sample channel Gram (N, C, C)",
          ranks=frozenset({3, 4}), out_shape=lambda s: (s[0], s[1], s[1]), bound=lambda b, s: b * b, squares=True)
def bmm(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Per-sample inter-channel Gram matrix (the relation ICKD distils), normalised by the number of positions."""
    flat = _positions(x)
    return torch.bmm(flat, flat.transpose(1, 2)) / flat.shape[2]


@register(formula="X X^T / D with X = x as (N, D): batch Gram (N, N)", out_shape=lambda s: (s[0], s[0]),
          bound=lambda b, s: b * b, squares=True)
def mm(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Batch Gram matrix: the similarity of every pair of samples (the relation SP distils)."""
    flat = _per_sample(x)
    return flat @ flat.t() / flat.shape[1]


# ---------------------------------------------------------------------------------------------- reshapes
@register(formula="x as (N, D)", out_shape=lambda s: (s[0], math.prod(s[1:])),
          identity_ranks=frozenset({2}), idempotent=True)
def batch(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Sample vectors: flattens everything but the batch axis, so distances compare whole samples."""
    return _per_sample(x)


@register(formula="mean_C x, keeping a channel axis of 1: (N, 1, ...)", ranks=frozenset({3, 4}),
          out_shape=lambda s: (s[0], 1, *s[2:]), idempotent=True)
def channel(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Channel pooling: averages the channels into one map (with pow2 first this is the attention map of AT)."""
    return x.mean(dim=1, keepdim=True)


def _pyramid_len(shape: Shape, levels: tuple[int, ...]) -> int:
    return sum(level ** (len(shape) - 2) for level in levels)


def _multi_scale(x: torch.Tensor, levels: tuple[int, ...]) -> torch.Tensor:
    if x.dim() == 4:
        pooled = [F.adaptive_avg_pool2d(x, level).flatten(2) for level in levels]
    else:
        pooled = [F.adaptive_avg_pool1d(x, level) for level in levels]
    return torch.cat(pooled, dim=2)


def _register_multi_scale(radius: int) -> None:
    levels = tuple(2**i for i in range(int(math.log2(radius)) + 1))

    def multi_scale(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
        return _multi_scale(x, levels)

    grid = " + ".join(f"{lv}x{lv}" for lv in levels)
    multi_scale.__doc__ = (
        f"Spatial pyramid pooling over grids {grid}: average-pools the map to each grid (any input size, 7x7 "
        f"and 1x1 included) and concatenates the cells into one sequence per channel, (N, C, L)."
    )
    register(f"multi_scale_r{radius}", formula=f"concat(avgpool_to({', '.join(map(str, levels))})) -> (N, C, L)",
             ranks=frozenset({3, 4}), out_shape=lambda s: (s[0], s[1], _pyramid_len(s, levels)))(multi_scale)


def _cell_averaging(size: int, cells: int, like: torch.Tensor) -> torch.Tensor:
    """(size, size) matrix that replaces every position by the mean of its cell when cells split an axis of
    ``size`` into ``cells`` contiguous parts (position i belongs to cell floor(i * cells / size))."""
    cell_of = torch.arange(size, device=like.device) * cells // size
    same = (cell_of[:, None] == cell_of[None, :]).to(like.dtype)
    return same / same.sum(dim=1, keepdim=True)


def _register_local(cells: int) -> None:
    def local(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
        avg_last = _cell_averaging(x.shape[-1], cells, x)
        if x.dim() == 3:
            return x - x @ avg_last
        avg_h = _cell_averaging(x.shape[-2], cells, x)
        return x - avg_h @ x @ avg_last

    local.__doc__ = (
        f"Local contrast on a {cells}x{cells} grid: subtracts from every position the mean of its grid cell, "
        f"per channel, so only structure within each region remains. Cells are contiguous and cover any size "
        f"(7x7 split as 2+2+2+1 for s4); a map with one position per cell would give all zeros, so validation "
        f"rejects it."
    )
    register(f"local_s{cells}", formula=f"x - mean over its cell of a {cells}x{cells} grid",
             ranks=frozenset({3, 4}), idempotent=True, bound=lambda b, s: 2 * b,
             degenerate=lambda s: f"every cell of its {cells}x{cells} grid holds one position, so it returns all "
                                  f"zeros" if all(size <= cells for size in s[2:]) else "")(local)


for _radius in (1, 2, 4):
    _register_multi_scale(_radius)
for _cells in (1, 2, 4):
    _register_local(_cells)


# ---------------------------------------------------------------------------------------- normalisations
@register("norm_HW", formula="x / ||x||_2 over positions", ranks=frozenset({3, 4}), idempotent=True,
          degenerate=_one_position, squares=True, bound=_unit)
def norm_HW(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """L2 normalisation over the positions of each channel."""
    return F.normalize(_positions(x), dim=2, eps=EPS).reshape(x.shape)


@register("norm_C", formula="x / ||x||_2 over channels", idempotent=True, degenerate=_one_channel, squares=True,
          bound=_unit)
def norm_C(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """L2 normalisation over the channels (the features of a 2-D input) at every position."""
    return F.normalize(x, dim=1, eps=EPS)


@register("norm_N", formula="x / ||x||_2 over the batch", idempotent=True, squares=True, bound=_unit)
def norm_N(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """L2 normalisation over the batch for every feature."""
    return F.normalize(x, dim=0, eps=EPS)


@register("softmax_N", formula="softmax over the batch axis", bound=_unit)
def softmax_N(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Softmax over the batch: how a feature is shared among the samples."""
    return torch.softmax(x, dim=0)


@register("softmax_C", formula="softmax over channels", degenerate=_one_channel, bound=_unit)
def softmax_C(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Softmax over channels (over classes for logits)."""
    return torch.softmax(x, dim=1)


@register("softmax_HW", formula="softmax over positions", ranks=frozenset({3, 4}), degenerate=_one_position,
          bound=_unit)
def softmax_HW(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Softmax over the positions of each channel: a spatial distribution per channel."""
    return torch.softmax(_positions(x), dim=2).reshape(x.shape)


@register("logsoftmax_N", formula="log-softmax over the batch axis (dim 0)",
          bound=lambda b, s: 2 * b + math.log(BATCH_BOUND))
def logsoftmax_N(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Log-softmax over the batch axis (dim 0)."""
    return torch.log_softmax(x, dim=0)


@register("logsoftmax_C", formula="log-softmax over channels", degenerate=_one_channel,
          bound=lambda b, s: 2 * b + math.log(s[1]))
def logsoftmax_C(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Log-softmax over channels (over classes for logits)."""
    return torch.log_softmax(x, dim=1)


@register("logsoftmax_HW", formula="log-softmax over positions", ranks=frozenset({3, 4}),
          degenerate=_one_position, bound=lambda b, s: 2 * b + math.log(math.prod(s[2:])))
def logsoftmax_HW(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Log-softmax over the positions of each channel."""
    return torch.log_softmax(_positions(x), dim=2).reshape(x.shape)


@register(formula="x / sqrt(mean_sample(x^2) + 1e-6)", idempotent=True, degenerate=_one_entry,
          bound=lambda b, s: math.sqrt(math.prod(s[1:])), squares=True)
def scale(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Per-sample scale normalisation: divides each sample by its root-mean-square, removing magnitude
    differences between teacher and student while keeping signs and relative sizes."""
    rms = torch.sqrt(_per_sample(x).pow(2).mean(dim=1) + EPS)
    return x / _broadcast_per_sample(rms, x)


@register(formula="(x - min_sample) / (max_sample - min_sample + 1e-6)", idempotent=True,
          degenerate=_one_entry, bound=_unit)
def min_max_normalize(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Per-sample min-max scaling into [0, 1] (per sample, never across the batch)."""
    flat = _per_sample(x)
    low = flat.min(dim=1).values
    span = flat.max(dim=1).values - low
    return (x - _broadcast_per_sample(low, x)) / _broadcast_per_sample(span + EPS, x)


@register(formula="(x - mean_{N,positions}) / sqrt(var_{N,positions} + 1e-5), per channel", idempotent=True,
          bound=lambda b, s: math.sqrt(BATCH_BOUND * math.prod(s[2:])), squares=True)
def batchnorm(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Batch standardisation per channel without learned affine parameters or running statistics: plain
    standardisation, the same function on both sides and in every call."""
    dims = [0, *range(2, x.dim())]
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + 1e-5)


ZSCORE_EPS = 1e-7


@register(formula="(x - mean_C x) / (std_C x + 1e-7), std with Bessel's correction (C - 1)",
          degenerate=_one_channel, bound=lambda b, s: math.sqrt(s[1]))
def zscore_C(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Standardisation over channels (classes, for logits): subtracts each sample's (and position's) mean over
    C and divides by its standard deviation over C, so that only the relations between the C values remain.
    This is the logit standardisation of Sun et al. 2024 ("Logit Standardization in Knowledge Distillation",
    CVPR) with the authors' estimator: the unbiased std (divisor C - 1), 1e-7 added to the std, not to the
    variance. Applied to both sides before the temperature, ``logit[zscore_C,no,no]|kl|no|T2|x9`` is their
    KD+LS. The input is first divided by its largest |x| over C (a factor that cancels exactly), so extreme
    activations cannot overflow the variance; a single channel standardises to zeros (validation rejects it)."""
    peak = x.detach().abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    y = x / peak
    centred = y - y.mean(dim=1, keepdim=True)
    std = y.std(dim=1, keepdim=True, correction=1 if x.shape[1] > 1 else 0)
    return centred / (std + ZSCORE_EPS / peak)
