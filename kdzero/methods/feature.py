"""Distillers of the feature maps: FitNet, AT, SP, OFD (with its teacher-margin reader), ICKD, CWD."""
from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzero.errors import ConfigError
from kdzero.features import Features
from kdzero.methods._helpers import check_width, conv_bn, match_spatial, optional_sizes, positive_number, side_size
from kdzero.methods.base import Distiller, Shapes, register


@register("fitnet")
class FitNet(Distiller):
    """Romero et al. 2015, "FitNets: Hints for Thin Deep Nets" (hint stage, trained jointly as in RepDistiller).

    term = weight * mean((r(f_s) - f_t)^2), with r a learned 1x1 conv + BatchNorm regressor from the student's
    to the teacher's channels (``self.connector``), spatial sizes aligned by average pooling. weight=100
    (RepDistiller's ``-b 100`` for hint, added to CE). RepDistiller's ``ConvReg`` is a 3x3 conv + BN + ReLU;
    the 1x1 conv + BN here is the connector shared by every feature method of this module.
    """

    def __init__(
        self, student_shapes: Shapes | None = None, teacher_shapes: Shapes | None = None, *,
        weight: float = 100.0,
    ) -> None:
        super().__init__()
        self.connector = conv_bn(side_size(student_shapes, "feat", "student", "fitnet"),
                                 side_size(teacher_shapes, "feat", "teacher", "fitnet"))
        self.weight = float(weight)

    def forward(self, student: Features, teacher: Features, target: Tensor) -> Tensor:
        """The weighted MSE between the regressed student map and the teacher map."""
        s, t = match_spatial(self.connector(student.feat), teacher.feat.detach())
        return self.weight * F.mse_loss(s, t)


@register("at")
class AT(Distiller):
    """Zagoruyko & Komodakis 2017, "Paying More Attention to Attention" (activation-based, p=2).

    at(x) = normalize(mean_c x^2 flattened over H*W) (L2 per sample);
    term = weight * mean((at(f_s) - at(f_t))^2) over batch and positions. Spatial sizes are aligned by average
    pooling the larger map. weight=1000 (RepDistiller, added to CE; the paper's beta/2 applied to its
    one-layer-per-group sum). Channels may differ: the map averages them out.
    """

    def __init__(
        self, student_shapes: Shapes | None = None, teacher_shapes: Shapes | None = None, *,
        weight: float = 1000.0,
    ) -> None:
        super().__init__()
        self.weight = float(weight)

    @staticmethod
    def _attention(f: Tensor) -> Tensor:
        """The L2-normalised spatial attention map of a (N, C, H, W) feature, flattened to (N, H*W)."""
        return F.normalize(f.pow(2).mean(1).flatten(1))

    def forward(self, student: Features, teacher: Features, target: Tensor) -> Tensor:
        """The weighted mean squared difference of the two attention maps."""
        s, t = match_spatial(student.feat, teacher.feat.detach())
        return self.weight * (self._attention(s) - self._attention(t)).pow(2).mean()


@register("sp")
class SP(Distiller):
    """Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation".

    G = row-L2-normalise(f f^T) for f the feature map flattened to (N, C*H*W);
    term = weight * ||G_s - G_t||_F^2 / N^2. weight=3000 (RepDistiller, added to CE). Any channel count and
    spatial size on either side: only the N x N similarities are compared.
    """

    def __init__(
        self, student_shapes: Shapes | None = None, teacher_shapes: Shapes | None = None, *,
        weight: float = 3000.0,
    ) -> None:
        super().__init__()
        self.weight = float(weight)

    @staticmethod
    def _similarity(f: Tensor) -> Tensor:
        """The row-normalised batch Gram matrix (N, N) of flattened features."""
        f = f.flatten(1)
        return F.normalize(f @ f.t())

    def forward(self, student: Features, teacher: Features, target: Tensor) -> Tensor:
        """The weighted, N^2-normalised squared Frobenius distance of the similarity matrices."""
        n = student.feat.shape[0]
        diff = self._similarity(student.feat) - self._similarity(teacher.feat.detach())
        return self.weight * diff.pow(2).sum() / (n * n)


def _negative_part_mean(mu: Tensor, sigma: Tensor) -> Tensor:
    """E[x | x < 0] for x ~ N(mu, sigma^2), elementwise: mu - sigma phi(mu/sigma) / Phi(-mu/sigma); -3 sigma where
    Phi(-mu/sigma) <= 0.001 (almost never negative), as in Heo et al.'s ``get_margin_from_BN``."""
    sigma = sigma.clamp_min(1e-12)
    z = mu / sigma
    tail = torch.special.ndtr(-z)
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return torch.where(tail > 1e-3, mu - sigma * pdf / tail.clamp_min(1e-3), -3.0 * sigma)


def bn_margin(bn: nn.BatchNorm2d) -> Tensor:
    """OFD's per-channel margin (C,) from the batch norm in front of the teacher's last ReLU (Heo et al. 2019,
    eq. 3 and the authors' ``get_margin_from_BN``): the pre-ReLU response of channel c is taken to be Gaussian
    with the BN's shift beta_c as mean and |gamma_c| as standard deviation, and the margin is the expectation of
    its negative part, E[x | x < 0]."""
    return _negative_part_mean(bn.bias.detach().float(), bn.weight.detach().float().abs())


class _FeatureMap(nn.Module):
    """``model.forward_features`` as a module's forward, so that torch.fx traces exactly the path to ``feat``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.forward_features(x)


class _Tracer(torch.fx.Tracer):
    """A tracer that takes every shape-dependent branch as false instead of failing (VGG pools once more on
    large inputs): only the path into the final ReLU matters, and it is the same on either branch."""

    def to_bool(self, obj: torch.fx.Proxy) -> bool:
        return False


def _is_relu(node: torch.fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[str(node.target)], nn.ReLU)
    if node.op == "call_function":
        return node.target in (F.relu, torch.relu, torch.relu_)
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _is_add(node: torch.fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in (operator.add, operator.iadd, torch.add)
    return node.op == "call_method" and node.target in ("add", "add_")


def teacher_margin(teacher: nn.Module) -> Tensor:
    """The OFD margin (C,) of ``teacher``: ``bn_margin`` of the batch norm that feeds the ReLU producing its
    feature map ``feat``, found by tracing ``forward_features`` with torch.fx. Through a residual sum the first
    operand (the block's own branch) is followed, as the authors' ``get_bn_before_relu`` takes ``bn2`` of a
    ResNet's last BasicBlock. ``Features.feat`` is post-ReLU, so the pre-ReLU statistics the paper uses can
    only come from this BN. A ConfigError when the structure is not BN -> (residual sum ->) ReLU or cannot be
    traced; then pass ``margin=`` to ``create_method("ofd", ...)`` yourself."""
    name = type(teacher).__name__
    if not callable(getattr(teacher, "forward_features", None)):
        raise ConfigError(f"method 'ofd' reads the teacher's batch norm before its last ReLU, but {name} has no "
                          "forward_features; pass margin= (one value per teacher channel)")
    root = _FeatureMap(teacher)
    try:
        graph = _Tracer().trace(root)
    except Exception as exc:  # e.g. hooks or data-dependent loops: any tracing failure means "not found"
        raise ConfigError(f"method 'ofd' cannot trace {name}.forward_features to find its batch norm before the "
                          f"last ReLU ({type(exc).__name__}); pass margin= (one value per teacher channel)") from None
    modules = dict(root.named_modules())
    node = next(n for n in graph.nodes if n.op == "output").args[0]
    if isinstance(node, torch.fx.Node) and _is_relu(node, modules):
        node = node.args[0]
        while isinstance(node, torch.fx.Node) and _is_add(node):
            node = node.args[0]
        if isinstance(node, torch.fx.Node) and node.op == "call_module" and \
                isinstance(modules[str(node.target)], nn.BatchNorm2d):
            return bn_margin(modules[str(node.target)])
    raise ConfigError(f"method 'ofd': {name}'s feature map is not batch norm -> ReLU (optionally through a residual "
                      "sum), so the paper's margin is undefined; pass margin= (one value per teacher channel)")


@register("ofd")
class OFD(Distiller):
    """Heo et al. 2019, "A Comprehensive Overhaul of Feature Distillation".

    The student map passes a 1x1 conv + BN connector r (``self.connector``); the teacher map a margin-ReLU;
    the partial L2 skips positions where the student is already below a non-positive target:
      t_m = max(t, m_c),   term = weight / N * sum over (s > t_m) or (t_m > 0) of (r(f_s) - t_m)^2
    with the paper's per-channel margin, the expectation of the negative part of the teacher's pre-ReLU response,
    modelled as a Gaussian with the mean and std of the BN before that ReLU (``bn_margin``, ``teacher_margin``):
      m_c = E[x | x < 0] = beta_c - |gamma_c| phi(beta_c / |gamma_c|) / Phi(-beta_c / |gamma_c|)
    (-3 |gamma_c| when Phi(-beta_c/|gamma_c|) <= 0.001). ``margin`` (C values) is required: the trainer passes
    ``teacher_margin(teacher)``. weight=1e-3: the authors' CIFAR script divides the summed loss by the batch size
    and by 1000, added to CE.
    Deviation: the paper distils pre-ReLU maps; ``Features.feat`` is post-ReLU, so a teacher 0 stands for a
    clipped negative response and becomes m_c (what margin-ReLU makes of a negative response, in expectation),
    and the connector reads the student's post-ReLU map.
    """

    margin: Tensor

    def __init__(
        self, student_shapes: Shapes | None = None, teacher_shapes: Shapes | None = None, *,
        margin: Tensor | Sequence[float] | None = None, weight: float = 1e-3,
    ) -> None:
        super().__init__()
        student_channels = side_size(student_shapes, "feat", "student", "ofd")
        channels = side_size(teacher_shapes, "feat", "teacher", "ofd")
        self.connector = conv_bn(student_channels, channels)
        if margin is None:
            raise ConfigError("method 'ofd' needs margin= (one value per teacher channel, from the batch norm before "
                              "the teacher's last ReLU): create_method('ofd', ..., margin=teacher_margin(teacher))")
        values = torch.as_tensor(margin, dtype=torch.float32).detach().flatten()
        if values.numel() != channels or not bool(torch.isfinite(values).all()) or bool((values > 0).any()):
            raise ConfigError(f"method 'ofd': margin must hold {channels} finite values <= 0 (one per teacher "
                              f"channel), got {values.numel()} values")
        self.register_buffer("margin", values.view(1, -1, 1, 1).clone())
        self.weight = float(weight)

    def forward(self, student: Features, teacher: Features, target: Tensor) -> Tensor:
        """The weighted, batch-averaged partial L2 between the connected student map and the margined teacher."""
        s, t = match_spatial(self.connector(student.feat), teacher.feat.detach())
        m = self.margin.to(t.dtype)
        t = torch.where(t == 0, m.expand_as(t), torch.maximum(t, m))
        mask = (s > t) | (t > 0)
        return self.weight * ((s - t).pow(2) * mask).sum() / s.shape[0]


@register("ickd")
class ICKD(Distiller):
    """Liu et al. 2021, "Exploring Inter-Channel Correlation for Diversity-preserved Knowledge Distillation".

    Per sample, F is the (C, H*W) map (the student's after a 1x1 conv + BN connector to the teacher's C
    channels, ``self.connector``, the authors' ``Embed``), G = row-L2-normalise(F F^T), a C x C inter-channel
    correlation; term = weight * sum_n ||G_s,n - G_t,n||_F^2 / (C * N).
    The paper writes the distance as a mean over the C^2 entries; the normalisation here (row-normalised Gram,
    divided by C * N) is the authors' released ``ICKDLoss.batch_loss``, the code behind the paper's tables and
    the one its weight 2.5 (their ``-b 2.5``, added to CE) belongs to.
    """

    def __init__(
        self, student_shapes: Shapes | None = None, teacher_shapes: Shapes | None = None, *,
        weight: float = 2.5,
    ) -> None:
        super().__init__()
        self.connector = conv_bn(
            side_size(student_shapes, "feat", "student", "ickd"), side_size(teacher_shapes, "feat", "teacher", "ickd")
        )
        self.weight = float(weight)

    @staticmethod
    def _correlation(f: Tensor) -> Tensor:
        """The row-normalised per-sample channel Gram matrices (N, C, C)."""
        f = f.flatten(2)
        return F.normalize(f @ f.transpose(1, 2), dim=2)

    def forward(self, student: Features, teacher: Features, target: Tensor) -> Tensor:
        """The weighted squared distance of the inter-channel correlations, divided by C * N."""
        s, t = match_spatial(self.connector(student.feat), teacher.feat.detach())
        n, c = t.shape[:2]
        return self.weight * (self._correlation(s) - self._correlation(t)).pow(2).sum() / (c * n)


@register("cwd")
class CWD(Distiller):
    """Shu et al. 2021, "Channel-wise Knowledge Distillation for Dense Prediction".

    Each channel's map becomes a distribution over its H*W positions, softmax(x / T);
    term = weight * T^2 / (N * C) * sum_{n,c} KL(softmax(t_nc / T) || softmax(s_nc / T)), T=4.
    weight=3: our choice of a CIFAR-classification default in RepDistiller style (the paper tunes its weight
    per dense-prediction task). When student and teacher channel counts differ a 1x1 conv + BN connector
    (``self.connector``) maps the student to the teacher's channels; this needs both shapes at construction.
    """

    def __init__(
        self, student_shapes: Shapes | None = None, teacher_shapes: Shapes | None = None, *,
        T: float = 4.0, weight: float = 3.0,
    ) -> None:
        super().__init__()
        sizes = optional_sizes(student_shapes, teacher_shapes, "feat")
        self.connector = conv_bn(*sizes) if sizes and sizes[0] != sizes[1] else nn.Identity()
        self.T = positive_number(T, "T", "cwd")
        self.weight = float(weight)

    def forward(self, student: Features, teacher: Features, target: Tensor) -> Tensor:
        """The weighted, temperature-scaled channel-wise spatial KL."""
        s, t = match_spatial(self.connector(student.feat), teacher.feat.detach())
        check_width(s, t, 1, "cwd")
        n, c = t.shape[:2]
        log_p_s = F.log_softmax(s.flatten(2) / self.T, dim=2)
        p_t = F.softmax(t.flatten(2) / self.T, dim=2)
        return self.weight * self.T**2 * F.kl_div(log_p_s, p_t, reduction="sum") / (n * c)
