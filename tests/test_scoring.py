"""Proxy metrics against independent implementations: linear CKA, SAM sharpness, the combined score."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from kdzero.features import Features
from kdzero.models import create_model
from kdzero.scoring import ScoreWeights, linear_cka, sharpness

# ------------------------------------------------------------------------------------------------ linear CKA


def cka_feature_space(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. 2019, eq. for linear CKA in feature space: ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)
    on column-centred data (equal to the centred-Gram form that kdzero implements)."""
    x = x.reshape(len(x), -1).astype(np.float64)
    y = y.reshape(len(y), -1).astype(np.float64)
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def random_orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


@pytest.mark.parametrize("n,dx,dy", [(50, 8, 8), (64, 20, 5), (30, 3, 40)])
def test_cka_matches_feature_space_formula(n, dx, dy):
    rng = np.random.default_rng(n + dx + dy)
    x = rng.standard_normal((n, dx))
    y = x[:, :min(dx, dy)] @ rng.standard_normal((min(dx, dy), dy)) + 0.5 * rng.standard_normal((n, dy))
    got = linear_cka(torch.from_numpy(x).float(), torch.from_numpy(y).float())
    assert got == pytest.approx(cka_feature_space(x, y), rel=1e-5, abs=1e-6)
    assert 0.0 <= got <= 1.0 + 1e-9


def test_cka_flattens_feature_maps():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 4, 3, 3)).astype(np.float32)
    y = rng.standard_normal((40, 6, 2, 2)).astype(np.float32) + x[:, :1, :2, :2]
    assert linear_cka(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(cka_feature_space(x, y), rel=1e-5)


def test_cka_invariant_to_orthogonal_transforms_scaling_and_shift():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((80, 12))
    y = np.tanh(x @ rng.standard_normal((12, 7))) + 0.3 * rng.standard_normal((80, 7))
    base = linear_cka(torch.from_numpy(x), torch.from_numpy(y))
    x2 = 3.7 * x @ random_orthogonal(12, rng) + 5.0
    y2 = 0.02 * y @ random_orthogonal(7, rng) - 1.0
    assert linear_cka(torch.from_numpy(x2), torch.from_numpy(y2)) == pytest.approx(base, rel=1e-9)
    assert linear_cka(torch.from_numpy(y), torch.from_numpy(x)) == pytest.approx(base, rel=1e-9)  # symmetric


def test_cka_not_invariant_to_anisotropic_scaling():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((100, 4))
    stretched = x * np.array([10.0, 1.0, 1.0, 1.0])
    assert linear_cka(torch.from_numpy(x), torch.from_numpy(stretched)) < 0.9


def test_cka_identical_is_one_and_independent_is_near_zero():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(200, 16, generator=gen)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, -2.0 * x) == pytest.approx(1.0, abs=1e-12)
    a = torch.randn(4000, 6, generator=gen)
    b = torch.randn(4000, 6, generator=gen)
    value = linear_cka(a, b)
    assert 0.0 <= value < 0.01  # E ~ sqrt(dx*dy)/n = 0.0015


def test_cka_of_constant_features_is_zero():
    assert linear_cka(torch.ones(10, 3), torch.randn(10, 3)) == 0.0


# ------------------------------------------------------------------------------------------------ sharpness


class LinearClassifier(nn.Module):
    """logit = x W^T + b, returned as Features (feat/emb are the inputs)."""

    def __init__(self, w: np.ndarray, b: np.ndarray) -> None:
        super().__init__()
        self.fc = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(torch.from_numpy(w))
            self.fc.bias.copy_(torch.from_numpy(b))

    def forward(self, x: torch.Tensor) -> Features:
        return Features(x[:, :, None, None], x, self.fc(x))


def ce_numpy(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean softmax cross-entropy of a linear classifier and its exact gradient in (W, b)."""
    z = x @ w.T + b
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    n = len(y)
    loss = float(-np.log(p[np.arange(n), y]).mean())
    d = p.copy()
    d[np.arange(n), y] -= 1.0
    d /= n
    return loss, d.T @ x, d.sum(axis=0)


def sam_increase_numpy(w, b, x, y, rho):
    """The closed form of one SAM step: L(theta + rho g/||g||) - L(theta), g = grad L(theta) over (W, b)."""
    loss, gw, gb = ce_numpy(w, b, x, y)
    norm = math.sqrt((gw ** 2).sum() + (gb ** 2).sum())
    perturbed, _, _ = ce_numpy(w + rho * gw / norm, b + rho * gb / norm, x, y)
    return perturbed - loss, norm


@pytest.mark.parametrize("rho", [0.01, 0.05, 0.5])
def test_sharpness_of_linear_classifier_matches_closed_form(rho):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((64, 6))
    y = rng.integers(0, 4, 64)
    w, b = 0.5 * rng.standard_normal((4, 6)), 0.1 * rng.standard_normal(4)
    model = LinearClassifier(w, b).double()
    got = sharpness(model, torch.from_numpy(x), torch.from_numpy(y), rho=rho)
    expected, grad_norm = sam_increase_numpy(w, b, x, y, rho)
    assert got == pytest.approx(expected, abs=1e-6)  # the loss is taken in float32
    # CE is convex in (W, b): the ascent step raises the loss by at least rho * ||g|| (first-order bound).
    assert got >= rho * grad_norm * (1 - 1e-9)


def test_sharpness_nonnegative_near_a_minimum_and_zero_at_zero_gradient():
    rng = np.random.default_rng(6)
    x = torch.from_numpy(rng.standard_normal((128, 5)))
    y = torch.from_numpy(rng.integers(0, 3, 128))  # random labels: not separable, CE has a finite minimum
    model = LinearClassifier(np.zeros((3, 5)), np.zeros(3)).double()
    opt = torch.optim.LBFGS(model.parameters(), max_iter=40, tolerance_grad=1e-10, tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x).logit, y)
        loss.backward()
        return loss

    opt.step(closure)
    value = sharpness(model, x, y, rho=0.05)
    assert value >= 0.0
    assert value < 0.05  # a flat-ish convex bowl: tiny compared with the loss (~1.0)
    # Zero weights, identical inputs with one label of each class: the gradient is exactly zero -> 0.
    balanced = LinearClassifier(np.zeros((2, 2)), np.zeros(2)).double()
    xs = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    assert sharpness(balanced, xs, torch.tensor([0, 1]), rho=0.05) == 0.0


def test_sharpness_leaves_weights_buffers_mode_and_flags_untouched():
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10, in_chans=1)
    model.train()
    next(model.parameters()).requires_grad_(False)  # a frozen tensor stays frozen
    flags = [p.requires_grad for p in model.parameters()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(16, 1, 8, 8)
    y = torch.randint(0, 10, (16,))
    value = sharpness(model, x, y)
    assert math.isfinite(value)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, tensor in before.items():
        assert torch.equal(tensor, after[key]), key  # weights and BN running stats / counters
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------------------------------------ combined score


def test_combine_arithmetic():
    assert ScoreWeights(1.0, 2.0, 3.0).combine(0.5, 0.25, 0.1) == pytest.approx(0.5 + 0.5 + 0.3)
    assert ScoreWeights(1.0, 0.0, 0.0).combine(0.7, 123.0, 9.0) == pytest.approx(0.7)
    w = ScoreWeights()
    assert w.combine(1.0, 0.2, 0.3) == pytest.approx(w.ce * 1.0 + w.s_gap * 0.2 + w.cka_gap * 0.3)


def test_combine_lower_is_better():
    w = ScoreWeights()
    assert w.combine(0.5, 0.1, 0.2) < w.combine(0.6, 0.1, 0.2)
    for better, worse in (((0.5, 0.1, 0.2), (0.5, 0.3, 0.2)), ((0.5, 0.1, 0.2), (0.5, 0.1, 0.4))):
        assert w.combine(*better) <= w.combine(*worse)


@pytest.mark.parametrize("metrics", [(math.inf, 0.1, 0.1), (0.5, math.inf, 0.1), (0.5, 0.1, math.inf),
                                     (math.nan, 0.1, 0.1), (-math.inf, 0.1, 0.1), (math.inf, -math.inf, 0.1)])
def test_combine_non_finite_is_plus_inf(metrics):
    assert ScoreWeights(1.0, 1.0, 1.0).combine(*metrics) == math.inf


def test_combine_zero_weight_on_infinite_metric_is_still_inf():
    # 0 * inf is nan; a rejected genome (all metrics inf) must never score finite, whatever the weights.
    assert ScoreWeights(1.0, 0.0, 0.0).combine(0.5, math.inf, 0.1) == math.inf


def test_chunked_sharpness_equals_one_batch_sharpness():
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10, in_chans=1).eval()
    x, y = torch.randn(200, 1, 8, 8), torch.randint(0, 10, (200,))
    assert sharpness(model, x, y, chunk=64) == pytest.approx(sharpness(model, x, y, chunk=1000), abs=1e-6)


def test_default_weights_are_the_calibrated_ones():
    # experiments/results/correlation_calibration.md; change both together.
    assert ScoreWeights() == ScoreWeights(ce=1.0, s_gap=2.0, cka_gap=1.0)
