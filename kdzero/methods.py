"""The classical, hand-designed distillers, built by name: the references every searched distiller is measured against.

Every method is an ``nn.Module`` called as ``loss(student=Features, teacher=Features, target=labels)`` and returns a
scalar tensor: ONLY its distillation term, already multiplied by its paper's default weight. The trainer adds the
cross-entropy on the labels itself, so the total objective is always ``CE + term``. Papers that mix CE and the
term with a convex ``alpha`` (Hinton's KD, Tf-KD) are given here in their alpha-free form; each docstring says how
the paper combines the two. Teacher tensors are detached inside; gradient reaches only the student (and the
method's own learned parts).

    from kdzero.methods import create_method, feature_shapes
    kd = create_method("kd")                                       # T=4, weight 1
    fitnet = create_method("fitnet", student_shapes=feature_shapes(s), teacher_shapes=feature_shapes(t))
    ofd = create_method("ofd", feature_shapes(s), feature_shapes(t), margin=teacher_margin(teacher_model))
    loss = ce + fitnet(student=s, teacher=t, target=y)             # fitnet.parameters(): its regressor

Methods with learned parts (fitnet, ofd, ickd, cc, crd; cwd when the student's and teacher's sizes differ) build
them eagerly from per-sample shapes ``{"feat": (C, H, W), "emb": (D,), "logit": (K,)}`` so that the optimiser
sees them before the first step. Where feature maps of different spatial size meet, the larger one is average-
pooled down to the smaller (RepDistiller's convention for AT), per axis.

Defaults follow RepDistiller (Tian et al. 2020) and mdistiller (Zhao et al. 2022), the code behind the CIFAR-100
tables every later paper copies.
"""
from __future__ import annotations

import inspect
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzero.errors import ConfigError, suggest
from kdzero.features import Features
from kdzero.loss import feature_shapes
from kdzero.ops import OpContext
from kdzero.ops.transforms import zscore_C

Shapes = Mapping[str, Sequence[int]]
"""Per-sample shapes of one side's ``Features``: ``{"feat": (C, H, W), "emb": (D,), "logit": (K,)}``."""

__all__ = [
    "Distiller",
    "Shapes",
    "bn_margin",
    "create_method",
    "feature_shapes",
    "list_methods",
    "teacher_margin",
]


class Distiller(nn.Module):
    """Base of every classical distiller: the shared call contract and the two hooks a trainer may need.

    ``forward(student, teacher, target)`` returns the weighted distillation term (a scalar). A trainer passes
    ``index=`` (the samples' dataset indices) only to methods with ``needs_index`` set, and calls ``set_epoch``
    at the start of every epoch for all methods; only scheduled methods act on it.
    """

    name: ClassVar[str] = ""
    needs_index: ClassVar[bool] = False

    def set_epoch(self, epoch: int) -> None:
        """Tell the method that epoch ``epoch`` (counted from 1) starts; methods with a schedule override this."""


_REGISTRY: dict[str, type[Distiller]] = {}
_D = TypeVar("_D", bound=type[Distiller])


def _register(name: str) -> Callable[[_D], _D]:
    """Class decorator: make the distiller buildable as ``create_method(name)``."""

    def add(cls: _D) -> _D:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


def list_methods() -> list[str]:
    """Names of all classical distillers, grouped by knowledge input: logits, feature maps, embeddings."""
    return list(_REGISTRY)


def create_method(
    name: str,
    student_shapes: Shapes | None = None,
    teacher_shapes: Shapes | None = None,
    **overrides: object,
) -> Distiller:
    """Build the classical distiller ``name`` with its paper's defaults, changed by ``overrides``.

    ``student_shapes``/``teacher_shapes`` are per-sample shapes (see ``feature_shapes``); methods with learned
    connectors need them. ``overrides`` are the method's keyword options (e.g. ``T=8``, ``weight=0.5``,
    ``dataset_size=50000`` for crd). Unknown names and options raise ``ConfigError`` with the closest valid ones.
    """
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ConfigError(f"unknown distillation method {name!r}; {suggest(name, _REGISTRY)}")
    options = [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    for key in overrides:
        if key not in options:
            raise ConfigError(f"method {name!r} has no option {key!r}; {suggest(key, options)}")
    return cls(student_shapes, teacher_shapes, **overrides)


# ---------------------------------------------------------------------------------------------------- helpers


def _size(shapes: Shapes | None, key: str, side: str, method: str) -> int:
    """The channel (feat) or width (emb, logit) of one side, or a ConfigError saying which shapes are missing."""
    if shapes is None or key not in shapes or len(shapes[key]) == 0:
        example = "(C, H, W)" if key == "feat" else "(D,)"
        raise ConfigError(
            f"method {method!r} builds a learned connector and needs {side}_shapes with {key!r}: {example} "
            f"(per sample, e.g. feature_shapes(features)); got {shapes!r}"
        )
    return int(shapes[key][0])


def _optional_sizes(
    student_shapes: Shapes | None, teacher_shapes: Shapes | None, key: str
) -> tuple[int, int] | None:
    """Both sides' first dimension for ``key`` when both are known, else None (the method assumes they match)."""
    if student_shapes is None or teacher_shapes is None or key not in student_shapes or key not in teacher_shapes:
        return None
    return int(student_shapes[key][0]), int(teacher_shapes[key][0])


def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    """A 1x1 conv (no bias) + BatchNorm connector, initialised as OFD's ``build_feature_connector`` does."""
    conv = nn.Conv2d(c_in, c_out, kernel_size=1, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / c_out))
    return nn.Sequential(conv, nn.BatchNorm2d(c_out))


def _match_spatial(s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the larger of two (N, C, H, W) maps down to the smaller one's size, per spatial axis."""
    size = (min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1]))
    if tuple(s.shape[-2:]) != size:
        s = F.adaptive_avg_pool2d(s, size)
    if tuple(t.shape[-2:]) != size:
        t = F.adaptive_avg_pool2d(t, size)
    return s, t


def _check_width(s: Tensor, t: Tensor, dim: int, method: str) -> None:
    """A ConfigError when a connector-free method meets student/teacher tensors of different width on ``dim``."""
    if s.shape[dim] != t.shape[dim]:
        raise ConfigError(
            f"method {method!r}: student has size {s.shape[dim]} and teacher {t.shape[dim]} on axis {dim}; "
            "pass student_shapes and teacher_shapes to create_method so that a connector is built"
        )


def _positive(value: float, what: str, method: str) -> float:
    """``value`` as a float, or a ConfigError if it is not a positive number (temperatures, clips)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not number > 0:
        raise ConfigError(f"method {method!r}: {what} must be a positive number, got {value!r}")
    return number


def _logits(student: Features, teacher: Features, standardize: bool) -> tuple[Tensor, Tensor]:
    """Both sides' logits (the teacher's detached), z-scored per sample over the classes when ``standardize``
    (logit standardisation: the same function as the ``zscore_C`` transform of the genome language)."""
    z_s, z_t = student.logit, teacher.logit.detach()
    if standardize:
        context = OpContext(training=False)
        z_s, z_t = zscore_C(z_s, context), zscore_C(z_t, context)
    return z_s, z_t


# ---------------------------------------------------------------------------------------------------- logits


@_register("kd")
class KD(Distiller):
    """Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network".

    term = weight * T^2 * KL(softmax(t/T) || softmax(s/T)), KL summed over classes and averaged over the batch,
    with log_softmax on the student side and the teacher as the target distribution. T=4, weight=1.
    The paper mixes ``(1-alpha) CE + alpha T^2 KL`` (RepDistiller ``-r 0.1 -a 0.9``, mdistiller CE 0.1 / KD 0.9);
    here the alpha-free form ``CE + 1 * T^2 KL`` is used, like every method in this module.
    """

    standardize: ClassVar[bool] = False

    def __init__(
        self, student_shapes: Shapes | None = None, teacher_shapes: Shapes | None = None, *,
        T: float = 4.0, weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.T = _positive(T, "T", self.name)
        self.weight = float(weight)

    def forward(self, student: Features, teacher: Features, target: Tensor) -> Tensor:
        """The weighted, temperature-scaled KL of the student's softened logits from the teacher's."""
        z_s, z_t = _logits(student, teacher, self.standardize)
        log_p_s = F.log_softmax(z_s / self.T, dim=1)
        p_t = F.softmax(z_t / self.T, dim=1)
        return self.weight * self.T**2 * F.kl_div(log_p_s, p_t, reduction="batchmean")


@_register("ls")
class LS(KD):
    """Sun et al. 2024, "Logit Standardization in Knowledge Distillation" (CVPR), applied to KD ("KD+LS").

    Each sample's logits are z-scored over the classes on both sides before the temperature softmax:
      z(x) = (x - mean_k x) / (std_k x + 1e-7),  std with Bessel's correction (divisor K - 1)
      term = weight * T^2 * KL(softmax(z(t)/T) || softmax(z(s)/T)), summed over classes, batch-averaged.
    The estimator and epsilon are the authors' ``normalize`` (sunshangquan/logit-standardization-KD); T is their
    "base temperature" 2 and weight their ``--kd-weight`` 9 (README command and log names ``kd,...,2,9`` for the
    CIFAR-100 pairs; a few pairs use base temperature 3), added to CE with weight 1 (their ``KD.LOSS.CE_WEIGHT``).
    The loss does not change when either side's logits are scaled by a positive per-sample factor or shifted
    (up to the epsilon). The genome ``logit[zscore_C,no,no]|kl|no|T2|x9`` (preset ``kd_ls``) computes the same.
    """

    standardize: ClassVar[bool] = True

    def __init__(
        self, student_shapes: Shapes | None = None, teacher_shapes: Shapes | None = None, *,
        T: float = 2.0, weight: float = 9.0,
    ) -> None:
        super().__init__(student_shapes, teacher_shapes, T=T, weight=weight)


@_register("dkd")
class DKD(Distiller):
    """Zhao et al. 2022, "Decoupled Knowledge Distillation" (mdistiller's ``dkd_loss``).

    With b = (p_target, 1 - p_target) the binary split of softmax(z/T), and p^ the softmax over the non-target
    classes only:
      TCKD = T^2 * KL(b_t || b_s),  NCKD = T^2 * KL(p^_t || p^_s)   (both summed over classes, batch-averaged)
      term = weight * min(epoch / warmup, 1) * (alpha * TCKD + beta * NCKD)
    alpha=1, beta=8, T=4, warmup=20 epochs, weight=1 (mdistiller's CIFAR-100 default; the paper adds CE with weight
    1). beta is tuned per pair in mdistiller's configs: ``res56_res20.yaml`` sets beta=2, so pass ``beta=2`` to
    reproduce DKD's ResNet-56 -> ResNet-20 row.
    Epochs count from 1 (``set_epoch``), so the first epoch has factor 1/20. Before any ``set_epoch`` call the
    method behaves as in epoch 1; ``warmup=0`` disables the warm-up. As in mdistiller, the non-target softmax
    is taken with the target logit lowered by 1000.
    """

    warmup_factor: float
    standardize: ClassVar[bool] = False

    def __init__(
        self, student_shapes: Shapes | None = None, teacher_shapes: Shapes | None = None, *,
        alpha: float = 1.0, beta: float = 8.0, T: float = 4.0, warmup: int = 20, weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.T = _positive(T, "T", self.name)
        if warmup < 0:
            raise ConfigError(f"method {self.name!r}: warmup must be >= 0 epochs, got {warmup!r}")
        self.warmup = int(warmup)
        self.weight = float(weight)
        self.set_epoch(1)

    def set_epoch(self, epoch: int) -> None:
        """Set the warm-up factor min(epoch / warmup, 1) for epoch ``epoch`` (counted from 1)."""
        self.warmup_factor = 1.0 if self.warmup == 0 else min(epoch / self.warmup, 1.0)

    @staticmethod
    def _binary_log_probs(z: Tensor, gt: Tensor) -> Tensor:
        """log (p_target, p_other) of softmax(z), computed in log space (no log of an underflowed 0)."""
        log_all = torch.logsumexp(z, dim=1)
        log_target = (z * gt).sum(dim=1) - log_all
        log_other = torch.logsumexp(z.masked_fill(gt, float("-inf")), dim=1) - log_all
        return torch.stack([log_target, log_other], dim=1)

    def forward(self, student: Features, teacher: Features, target: Tensor) -> Tensor:
        """The weighted, warmed-up TCKD + beta * NCKD."""
        z_s, z_t = _logits(student, teacher, self.standardize)
        z_s, z_t = z_s / self.T, z_t / self.T
        gt = F.one_hot(target, z_s.shape[1]).bool()
        n = z_s.shape[0]
        log_b_s = self._binary_log_probs(z_s, gt)
        b_t = self._binary_log_probs(z_t, gt).exp()
        tckd = F.kl_div(log_b_s, b_t, reduction="sum") / n
        log_q_s = F.log_softmax(z_s - 1000.0 * gt, dim=1)
        q_t = F.softmax(z_t - 1000.0 * gt, dim=1)
        nckd = F.kl_div(log_q_s, q_t, reduction="sum") / n
        return self.weight * self.warmup_factor * self.T**2 * (self.alpha * tckd + self.beta * nckd)


@_register("dkd_ls")
class DKDLS(DKD):
    """DKD on standardised logits ("DKD+LS", Sun et al. 2024): ``dkd`` with both sides' logits z-scored per
    sample over the classes first, exactly as in ``ls`` (unbiased std over the classes, 1e-7 added to it).

    Defaults are the authors' CIFAR-100 run of DKD+LS (``--logit-stand --base-temp 2 --kd-weight 9``): their
    ``tools/train.py`` multiplies DKD's alpha and beta by the kd-weight 9 and sets DKD's temperature to the base
    temperature 2, on mdistiller's DKD config (alpha 1, beta 8 for ResNet32x4 -> ResNet8x4, warm-up 20 epochs):
    alpha=9, beta=72, T=2, warmup=20, weight=1, added to CE with weight 1 (beta=18 for the pairs where DKD uses
    beta=2, e.g. ResNet-56 -> ResNet-20). One published revision of that script derives beta from the already
    multiplied alpha and leaves T at 4; the later one, followed here, scales both and uses the base temperature.
    """

    standardize: ClassVar[bool] = True

    def __init__(
        self, student_shapes: Shapes | None = None, teacher_shapes: Shapes | None = None, *,
        alpha: float = 9.0, beta: float = 72.0, T: float = 2.0, warmup: int = 20, weight: float = 1.0,
    ) -> None:
        super().__init__(student_shapes, teacher_shapes, alpha=alpha, beta=beta, T=T, warmup=warmup,
                         weight=weight)


@_register("tfkd")
class TfKD(Distiller):
    """Yuan et al. 2020, "Revisiting Knowledge Distillation via Label Smoothing Regularization" (Tf-KD_reg).

    A teacher-free, manually designed virtual teacher: p^d(k) = a for the labelled class, (1 - a)/(K - 1) for
    the others; as in the authors' ``loss_kd_regularization`` it is softened as softmax(p^d / T) with T=20 while
    the student stays at temperature 1:
      term = weight * KL(softmax(p^d / T) || softmax(s)), summed over classes, batch-averaged.
    a=0.99 (the value hard-coded in the authors' code for every dataset), T=20, weight (their ``multiplier``)=1.
    The authors mix ``(1-alpha) CE + alpha * multiplier * KL`` with ``nn.KLDivLoss()``'s default mean over
    batch AND classes; here the KL is a true per-sample KL (batch mean only), added to CE. The real teacher is
    ignored.
    """

    def __init__(
        self, student_shapes: Shapes | None = None, teacher_shapes: Shapes | None = None, *,
        correct_prob: float = 0.99, T: float = 20.0, weight: float = 1.0,
    ) -> None:
        super().__init__()
        if not 0.0 < correct_prob < 1.0:
            raise ConfigError(f"method 'tfkd': correct_prob must lie in (0, 1), got {correct_prob!r}")
        self.correct_prob = float(correct_prob)
        self.T = _positive(T, "T", "tfkd")
        self.weight = float(weight)

    def forward(self, student: Features, teacher: Features, target: Tensor) -> Tensor:
        """The weighted KL of the student's distribution from the softened virtual teacher's."""
        s = student.logit
        k = s.shape[1]
        virtual = torch.full_like(s, (1.0 - self.correct_prob) / (k - 1)).detach()
        virtual.scatter_(1, target.view(-1, 1), self.correct_prob)
        p_t = F.softmax(virtual / self.T, dim=1)
        return self.weight * F.kl_div(F.log_softmax(s, dim=1), p_t, reduction="batchmean")


@_register("alpha")
class AlphaDivergence(Distiller):
    """Wang et al. 2021, "AlphaNet: Improved Training of Supernets with Alpha-Divergence" (``AdaptiveLossSoft``).

    With q = softmax(s) (student), p = softmax(t) (teacher), importance ratio r = p/q, and for each alpha in
    {alpha_min, alpha_max} (AlphaNet's ``f_divergence``):
      alpha = 1:  D = sum_k q r log r = KL(p || q),           rho = r
      alpha = 0:  r <- clip(r, 0, c);  D = -sum_k q log r,     rho = log r - 1
      otherwise:  w = clip(r^alpha, 0, c);  D = sum_k q (w - 1) / (alpha (alpha - 1)),
                  rho = w / alpha + 1 / (alpha (alpha - 1))
      surrogate   G = -sum_k stopgrad(q rho) log q   (its gradient is the clipped alpha-divergence gradient)
    Per sample the alpha with the larger D is chosen (the paper's adaptive alpha); batch mean; weight 1;
    alpha_min=-1, alpha_max=1, clip c=5 (facebookresearch/AlphaNet ``loss_ops.py`` defaults), temperature 1.
    Gradients are exactly AlphaNet's. Deviation: AlphaNet returns the surrogate G as the loss value; here the
    value is the chosen divergence D (a meaningful number to log and compare) carrying G's gradient.
    """

    def __init__(
        self, student_shapes: Shapes | None = None, teacher_shapes: Shapes | None = None, *,
        alpha_min: float = -1.0, alpha_max: float = 1.0, iw_clip: float = 5.0, weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.alpha_min = float(alpha_min)
        self.alpha_max = float(alpha_max)
        self.iw_clip = _positive(iw_clip, "iw_clip", "alpha")
        self.weight = float(weight)

    def _divergence(self, log_q: Tensor, log_p: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
        """Per-sample (clipped alpha-divergence D, gradient surrogate G) for one alpha.

        The same quantities as AlphaNet's ``f_divergence``, computed from log-probabilities (q r = p, r = exp of
        the log-ratio) so that a class whose probability underflows to 0 gives no inf * 0 = NaN.
        """
        q = log_q.exp().detach()
        log_ratio = log_p - log_q.detach()
        if abs(alpha) < 1e-3:
            log_ratio = log_ratio.clamp_max(math.log(self.iw_clip))
            value, q_rho = -(q * log_ratio).sum(dim=1), q * (log_ratio - 1.0)
        elif abs(alpha - 1.0) < 1e-3:
            p = log_p.exp()
            value, q_rho = (p * log_ratio).sum(dim=1), p
        else:
            w = (alpha * log_ratio).exp().clamp_max(self.iw_clip)
            f_base = 1.0 / alpha / (alpha - 1.0)
            value, q_rho = (q * (w - 1.0)).sum(dim=1) * f_base, q * (w / alpha + f_base)
        return value, -(q_rho * log_q).sum(dim=1)

    def forward(self, student: Features, teacher: Features, target: Tensor) -> Tensor:
        """The weighted adaptive alpha-divergence of the student from the teacher."""
        log_q = F.log_softmax(student.logit, dim=1)
        log_p = F.log_softmax(teacher.logit.detach(), dim=1)
        d_left, g_left = self._divergence(log_q, log_p, self.alpha_min)
        d_right, g_right = self._divergence(log_q, log_p, self.alpha_max)
        left = d_left > d_right
        value = torch.where(left, d_left, d_right)
        surrogate = torch.where(left, g_left, g_right)
        return self.weight * (value + surrogate - surrogate.detach()).mean()


# ---------------------------------------------------------------------------------------------------- feature maps


@_register("fitnet")
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
        self.connector = _conv_bn(
            _size(student_shapes, "feat", "student", "fitnet"), _size(teacher_shapes, "feat", "teacher", "fitnet")
        )
        self.weight = float(weight)

    def forward(self, student: Features, teacher: Features, target: Tensor) -> Tensor:
        """The weighted MSE between the regressed student map and the teacher map."""
        s, t = _match_spatial(self.connector(student.feat), teacher.feat.detach())
        return self.weight * F.mse_loss(s, t)


@_register("at")
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
        s, t = _match_spatial(student.feat, teacher.feat.detach())
        return self.weight * (self._attention(s) - self._attention(t)).pow(2).mean()


@_register("sp")
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


@_register("ofd")
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
        student_channels = _size(student_shapes, "feat", "student", "ofd")
        channels = _size(teacher_shapes, "feat", "teacher", "ofd")
        self.connector = _conv_bn(student_channels, channels)
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
        s, t = _match_spatial(self.connector(student.feat), teacher.feat.detach())
        m = self.margin.to(t.dtype)
        t = torch.where(t == 0, m.expand_as(t), torch.maximum(t, m))
        mask = (s > t) | (t > 0)
        return self.weight * ((s - t).pow(2) * mask).sum() / s.shape[0]


@_register("ickd")
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
        self.connector = _conv_bn(
            _size(student_shapes, "feat", "student", "ickd"), _size(teacher_shapes, "feat", "teacher", "ickd")
        )
        self.weight = float(weight)

    @staticmethod
    def _correlation(f: Tensor) -> Tensor:
        """The row-normalised per-sample channel Gram matrices (N, C, C)."""
        f = f.flatten(2)
        return F.normalize(f @ f.transpose(1, 2), dim=2)

    def forward(self, student: Features, teacher: Features, target: Tensor) -> Tensor:
        """The weighted squared distance of the inter-channel correlations, divided by C * N."""
        s, t = _match_spatial(self.connector(student.feat), teacher.feat.detach())
        n, c = t.shape[:2]
        return self.weight * (self._correlation(s) - self._correlation(t)).pow(2).sum() / (c * n)


@_register("cwd")
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
        sizes = _optional_sizes(student_shapes, teacher_shapes, "feat")
        self.connector = _conv_bn(*sizes) if sizes and sizes[0] != sizes[1] else nn.Identity()
        self.T = _positive(T, "T", "cwd")
        self.weight = float(weight)

    def forward(self, student: Features, teacher: Features, target: Tensor) -> Tensor:
        """The weighted, temperature-scaled channel-wise spatial KL."""
        s, t = _match_spatial(self.connector(student.feat), teacher.feat.detach())
        _check_width(s, t, 1, "cwd")
        n, c = t.shape[:2]
        log_p_s = F.log_softmax(s.flatten(2) / self.T, dim=2)
        p_t = F.softmax(t.flatten(2) / self.T, dim=2)
        return self.weight * self.T**2 * F.kl_div(log_p_s, p_t, reduction="sum") / (n * c)


# ---------------------------------------------------------------------------------------------------- embeddings


@_register("cc")
class CC(Distiller):
    """Peng et al. 2019, "Correlation Congruence for Knowledge Distillation", in RepDistiller's form.

    Both embeddings pass their own learned linear head to ``feat_dim``=128 (``embed_s``, ``embed_t``; RepDistiller's
    ``LinearEmbed``, no normalisation, both trained with the student). With d_i = |f_s,i - f_t,i| the per-sample
    absolute difference of the heads' outputs, in batch order:
      term = weight * mean_{i=1..N-1} sum_k d_i,k * d_{i+1},k
    weight=0.02 (RepDistiller's ``-b 0.02`` for ``--distill correlation``, added to CE). This kernel-free
    correlation is the code RepDistiller received from the CC authors and the one its CIFAR-100 table, and its
    weight 0.02, were produced with; the paper's Taylor-expanded Gaussian-kernel congruence yields a term orders
    of magnitude smaller (its entries are bounded by exp(2 gamma) - 1 apart), so 0.02 applied to that form made
    the term negligible. Weight and formula now come from the same source.
    """

    def __init__(
        self, student_shapes: Shapes | None = None, teacher_shapes: Shapes | None = None, *,
        feat_dim: int = 128, weight: float = 0.02,
    ) -> None:
        super().__init__()
        self.embed_s = nn.Linear(_size(student_shapes, "emb", "student", "cc"), feat_dim)
        self.embed_t = nn.Linear(_size(teacher_shapes, "emb", "teacher", "cc"), feat_dim)
        self.weight = float(weight)

    def forward(self, student: Features, teacher: Features, target: Tensor) -> Tensor:
        """The weighted mean over neighbouring sample pairs of the product of their absolute differences."""
        delta = (self.embed_s(student.emb.flatten(1)) - self.embed_t(teacher.emb.detach().flatten(1))).abs()
        if delta.shape[0] < 2:
            raise ConfigError("method 'cc' correlates neighbouring samples and needs a batch of at least 2")
        return self.weight * (delta[:-1] * delta[1:]).sum(dim=1).mean()


@_register("rkd")
class RKD(Distiller):
    """Park et al. 2019, "Relational Knowledge Distillation" (RepDistiller's ``RKDLoss`` on embeddings).

    Distance-wise: psi_D(i, j) = ||e_i - e_j|| / mu, mu the mean over the positive distances of the batch;
    angle-wise: psi_A(i, j, k) = <unit(e_i - e_j), unit(e_k - e_j)>;
    term = weight * (w_d * smoothL1(psi_D^s, psi_D^t) + w_a * smoothL1(psi_A^s, psi_A^t)), means over all
    pairs / triplets, w_d=25, w_a=50, weight=1 (RepDistiller, added to CE). Widths may differ.
    """

    def __init__(
        self, student_shapes: Shapes | None = None, teacher_shapes: Shapes | None = None, *,
        w_d: float = 25.0, w_a: float = 50.0, weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.w_d = float(w_d)
        self.w_a = float(w_a)
        self.weight = float(weight)

    @staticmethod
    def _distances(e: Tensor) -> Tensor:
        """Pairwise Euclidean distances (zero diagonal, safe gradient) divided by their mean positive value."""
        sq = e.pow(2).sum(dim=1)
        d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp_min(1e-12).sqrt()
        d = d * (1 - torch.eye(len(e), dtype=d.dtype, device=d.device))
        return d / d[d > 0].mean()

    @staticmethod
    def _angles(e: Tensor) -> Tensor:
        """Cosines of all angles e_i - e_j - e_k (flattened N^3 vector)."""
        diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
        return (diff @ diff.transpose(1, 2)).flatten()

    def forward(self, student: Features, teacher: Features, target: Tensor) -> Tensor:
        """The weighted distance-wise plus angle-wise relational loss."""
        s, t = student.emb.flatten(1), teacher.emb.detach().flatten(1)
        loss_d = F.smooth_l1_loss(self._distances(s), self._distances(t))
        loss_a = F.smooth_l1_loss(self._angles(s), self._angles(t))
        return self.weight * (self.w_d * loss_d + self.w_a * loss_a)


@_register("pkt")
class PKT(Distiller):
    """Passalis & Tefas 2018, "Learning Deep Representations with Probabilistic Knowledge Transfer".

    Cosine similarities of the embeddings (each divided by its norm + eps), mapped to [0, 1] by (c + 1)/2 and
    normalised per row into conditional probabilities P(j | i); term = weight * mean_{i,j} P_t log((P_t + eps) /
    (P_s + eps)), eps=1e-7 (the mean over all N^2 entries, as in the authors' and RepDistiller's code).
    weight=30000 (RepDistiller, added to CE). Widths may differ.
    """

    def __init__(
        self, student_shapes: Shapes | None = None, teacher_shapes: Shapes | None = None, *,
        eps: float = 1e-7, weight: float = 30000.0,
    ) -> None:
        super().__init__()
        self.eps = float(eps)
        self.weight = float(weight)

    def _probabilities(self, e: Tensor) -> Tensor:
        """Row-stochastic (N, N) matrix of conditional probabilities from cosine similarities."""
        e = e.flatten(1)
        e = e / (e.norm(dim=1, keepdim=True) + self.eps)
        sim = (e @ e.t() + 1.0) / 2.0
        return sim / sim.sum(dim=1, keepdim=True)

    def forward(self, student: Features, teacher: Features, target: Tensor) -> Tensor:
        """The weighted KL of the student's conditional probabilities from the teacher's."""
        p_s = self._probabilities(student.emb)
        p_t = self._probabilities(teacher.emb.detach())
        return self.weight * (p_t * torch.log((p_t + self.eps) / (p_s + self.eps))).mean()


@_register("crd")
class CRD(Distiller):
    """Tian, Krishnan & Isola 2020, "Contrastive Representation Distillation" (RepDistiller's ``CRDLoss``).

    Both embeddings pass their own linear + L2-normalise head (``embed_s``, ``embed_t``) to ``feat_dim``=128.
    Two memory banks of ``dataset_size`` unit vectors (``memory_s``, ``memory_t``) hold a momentum average
    (``momentum``=0.5) of every sample's past student / teacher embedding. For each sample i with K negatives
    j_1..j_K (uniform over the dataset unless ``contrast_index`` is given; the positive is i itself):
      h(v, m) = exp(v . m / tau) / Z,  tau=0.07, Z = mean of the first batch's exp(v . m / tau) * dataset_size
      NCE(x) = -[log x_pos / (x_pos + K/n) + sum_j log (K/n) / (x_j + K/n)]   (eps 1e-7 in the denominators)
    term = weight * (NCE of the student anchor against the teacher bank + NCE of the teacher anchor against the
    student bank), batch-averaged. K = nce_k = 16384 clamped to dataset_size - 1, weight=0.8 (RepDistiller's
    ``-a 0 -b 0.8``, added to CE). The banks are updated after each training-mode call with the batch's
    embeddings. ``forward`` needs ``index``: the samples' positions in the dataset.
    """

    needs_index: ClassVar[bool] = True

    memory_s: Tensor
    memory_t: Tensor
    z_s: Tensor
    z_t: Tensor

    def __init__(
        self, student_shapes: Shapes | None = None, teacher_shapes: Shapes | None = None, *,
        dataset_size: int | None = None, feat_dim: int = 128, nce_k: int = 16384, nce_t: float = 0.07,
        momentum: float = 0.5, weight: float = 0.8,
    ) -> None:
        super().__init__()
        if dataset_size is None or dataset_size < 2:
            raise ConfigError(
                f"method 'crd' needs dataset_size (the number of training samples, >= 2) for its memory bank; "
                f"got {dataset_size!r}"
            )
        self.embed_s = nn.Linear(_size(student_shapes, "emb", "student", "crd"), feat_dim)
        self.embed_t = nn.Linear(_size(teacher_shapes, "emb", "teacher", "crd"), feat_dim)
        self.dataset_size = int(dataset_size)
        self.nce_k = min(int(nce_k), self.dataset_size - 1)
        self.nce_t = _positive(nce_t, "nce_t", "crd")
        self.momentum = float(momentum)
        self.weight = float(weight)
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_s", torch.rand(self.dataset_size, feat_dim) * 2 * stdv - stdv)
        self.register_buffer("memory_t", torch.rand(self.dataset_size, feat_dim) * 2 * stdv - stdv)
        self.register_buffer("z_s", torch.tensor(-1.0))
        self.register_buffer("z_t", torch.tensor(-1.0))

    def _nce(self, x: Tensor) -> Tensor:
        """RepDistiller's ``ContrastLoss``: NCE over (N, K + 1) scores with the positive in column 0."""
        k = x.shape[1] - 1
        noise = k / self.dataset_size
        log_pos = torch.log(x[:, 0] / (x[:, 0] + noise + 1e-7))
        log_neg = torch.log(noise / (x[:, 1:] + noise + 1e-7))
        return -(log_pos.sum() + log_neg.sum()) / x.shape[0]

    def forward(
        self, student: Features, teacher: Features, target: Tensor, index: Tensor | None = None,
        contrast_index: Tensor | None = None,
    ) -> Tensor:
        """The weighted two-sided NCE loss; ``index`` (N,) dataset positions, ``contrast_index`` (N, K + 1)."""
        if index is None:
            raise ConfigError("method 'crd' needs index= (the samples' dataset positions) in every call")
        v_s = F.normalize(self.embed_s(student.emb.flatten(1)), dim=1)
        v_t = F.normalize(self.embed_t(teacher.emb.detach().flatten(1)), dim=1)
        n = v_s.shape[0]
        if contrast_index is None:
            contrast_index = torch.randint(0, self.dataset_size, (n, self.nce_k + 1), device=index.device)
            contrast_index[:, 0] = index
        bank_t = self.memory_t[contrast_index].to(v_s.dtype)
        bank_s = self.memory_s[contrast_index].to(v_t.dtype)
        out_s = torch.exp(torch.bmm(bank_t, v_s.unsqueeze(2)).squeeze(2) / self.nce_t)
        out_t = torch.exp(torch.bmm(bank_s, v_t.unsqueeze(2)).squeeze(2) / self.nce_t)
        if self.z_s < 0:
            self.z_s.fill_(out_s.mean().item() * self.dataset_size)
            self.z_t.fill_(out_t.mean().item() * self.dataset_size)
        loss = self._nce(out_s / self.z_s) + self._nce(out_t / self.z_t)
        if self.training:
            with torch.no_grad():
                for bank, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
                    mixed = bank[index] * self.momentum + v.to(bank.dtype) * (1 - self.momentum)
                    bank.index_copy_(0, index, F.normalize(mixed, dim=1))
        return self.weight * loss
