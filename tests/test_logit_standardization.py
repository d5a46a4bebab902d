"""Logit standardisation (Sun et al. 2024) against hand computations: the ``zscore_C`` transform, the ``ls`` and
``dkd_ls`` methods, and the KD+LS genome. References are numpy, written from the paper's formula with the
authors' estimator (unbiased std over the classes, 1e-7 added to the std)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdzero import PRESETS, Features, Genome, UnifiedLoss
from kdzero.errors import GenomeError
from kdzero.loss import feature_shapes
from kdzero.methods import create_method
from kdzero.ops import TRANSFORMS, OpContext
from kdzero.presets import KD_LS_TEXT

EPS = 1e-7
N, K = 6, 10


def zscore(x: np.ndarray) -> np.ndarray:
    """The authors' ``normalize``: (x - mean) / (1e-7 + std), std with divisor K - 1, over the last axis."""
    return (x - x.mean(axis=-1, keepdims=True)) / (EPS + x.std(axis=-1, ddof=1, keepdims=True))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * (np.log(p) - np.log(q))))


def ls_reference(s: np.ndarray, t: np.ndarray, T: float = 2.0, weight: float = 9.0) -> float:
    zs, zt = zscore(s), zscore(t)
    return weight * T * T * float(np.mean([kl(softmax(zt[i] / T), softmax(zs[i] / T)) for i in range(len(s))]))


def logits_only(logit: torch.Tensor) -> Features:
    n = logit.shape[0]
    return Features(torch.zeros(n, 1, 1, 1, dtype=logit.dtype), torch.zeros(n, 1, dtype=logit.dtype), logit)


def random_logits(seed: int) -> torch.Tensor:
    return 3 * torch.randn(N, K, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def zscore_op(x: torch.Tensor) -> torch.Tensor:
    return TRANSFORMS["zscore_C"](x, OpContext())


# ------------------------------------------------------------------------------------------ the transform


def test_zscore_on_hand_computed_row() -> None:
    # (1, 2, 3, 4): mean 2.5, deviations -1.5 -0.5 0.5 1.5, unbiased variance 5/3, std 1.2909944.
    out = zscore_op(torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64))
    expected = torch.tensor([[-1.5, -0.5, 0.5, 1.5]], dtype=torch.float64) / (math.sqrt(5 / 3) + EPS)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(expected[0, 3], torch.tensor(1.1618950, dtype=torch.float64), rtol=0, atol=1e-7)


@pytest.mark.parametrize("shape", [(3, 5), (3, 5, 7), (3, 5, 4, 2)])
def test_zscore_standardises_over_the_channel_axis_at_every_position(shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 4 + 2
    out = zscore_op(x)
    expected = np.moveaxis(zscore(np.moveaxis(x.numpy(), 1, -1)), -1, 1)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_zscore_is_finite_on_extreme_and_constant_input() -> None:
    x = torch.tensor([[3e38, -3e38, 1.0], [1e-38, 0.0, -1e-38], [5.0, 5.0, 5.0], [0.0, 0.0, 0.0]])
    out = zscore_op(x.requires_grad_())
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(out[0], torch.tensor([1.0, -1.0, 0.0]), rtol=1e-6, atol=1e-6)
    assert out[2:].abs().max() == 0  # a constant row has nothing to standardise


def test_zscore_over_a_single_channel_is_rejected_as_degenerate() -> None:
    assert torch.equal(zscore_op(torch.randn(4, 1, 3, 3)), torch.zeros(4, 1, 3, 3))
    with pytest.raises(GenomeError, match="zscore_C"):
        TRANSFORMS["zscore_C"].output_shape((4, 1, 3, 3))


# ------------------------------------------------------------------------------------------ the methods


def test_ls_value_and_gradient_match_hand_computation() -> None:
    s = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 2.0, 0.0]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[4.0, 1.0, 0.0, 2.0], [1.0, 1.0, 3.0, -2.0]], dtype=torch.float64)
    value = create_method("ls")(student=logits_only(s), teacher=logits_only(t), target=torch.tensor([0, 1]))
    assert math.isclose(value.item(), ls_reference(s.detach().numpy(), t.numpy()), rel_tol=1e-10)
    value.backward()
    h = 1e-6  # central differences of the numpy reference: an independent gradient
    numeric = np.zeros(s.shape)
    for index in np.ndindex(*s.shape):
        up, down = s.detach().numpy().copy(), s.detach().numpy().copy()
        up[index] += h
        down[index] -= h
        numeric[index] = (ls_reference(up, t.numpy()) - ls_reference(down, t.numpy())) / (2 * h)
    np.testing.assert_allclose(s.grad.numpy(), numeric, rtol=1e-6, atol=1e-8)


def test_ls_defaults_are_the_authors_base_temperature_and_weight() -> None:
    method = create_method("ls")
    assert (method.T, method.weight) == (2.0, 9.0)
    dkd = create_method("dkd_ls")
    assert (dkd.alpha, dkd.beta, dkd.T, dkd.warmup, dkd.weight) == (9.0, 72.0, 2.0, 20, 1.0)


@pytest.mark.parametrize("name", ["ls", "dkd_ls"])
def test_standardised_methods_ignore_a_per_sample_scale_and_shift(name: str) -> None:
    s, t = random_logits(0), random_logits(1)
    g = torch.Generator().manual_seed(2)
    scale = torch.rand(N, 1, generator=g, dtype=torch.float64) * 5 + 0.2
    shift = torch.randn(N, 1, generator=g, dtype=torch.float64) * 10
    target = torch.arange(N) % K
    method = create_method(name, warmup=0) if name == "dkd_ls" else create_method(name)
    base = method(student=logits_only(s), teacher=logits_only(t), target=target)
    moved = method(student=logits_only(s * scale + shift), teacher=logits_only(t * scale.flip(0) - shift),
                   target=target)
    torch.testing.assert_close(moved, base, rtol=1e-6, atol=0)
    plain = create_method("kd")  # without standardisation the same change moves the loss
    assert not torch.isclose(plain(student=logits_only(s * scale + shift), teacher=logits_only(t), target=target),
                             plain(student=logits_only(s), teacher=logits_only(t), target=target))


def test_dkd_ls_is_dkd_on_standardised_logits() -> None:
    s, t = random_logits(3), random_logits(4)
    y = torch.arange(N) % K
    T, alpha, beta = 2.0, 9.0, 72.0
    zs, zt = zscore(s.numpy()), zscore(t.numpy())
    total = 0.0
    for i in range(N):
        ps, pt = softmax(zs[i] / T), softmax(zt[i] / T)
        g = int(y[i])
        rest = np.arange(K) != g
        total += alpha * kl(np.array([pt[g], 1 - pt[g]]), np.array([ps[g], 1 - ps[g]]))
        total += beta * kl(pt[rest] / pt[rest].sum(), ps[rest] / ps[rest].sum())
    method = create_method("dkd_ls")
    method.set_epoch(20)
    value = method(student=logits_only(s), teacher=logits_only(t), target=y)
    assert math.isclose(value.item(), T * T * total / N, rel_tol=1e-9)


# ------------------------------------------------------------------------------------------ the genome


def test_kd_ls_genome_and_ls_method_give_the_same_loss() -> None:
    genome = Genome.parse("logit[zscore_C,no,no]|kl|no|T2|x9")
    s, t = random_logits(5).float(), random_logits(6).float()
    student, teacher = logits_only(s), logits_only(t)
    target = torch.arange(N) % K
    loss = UnifiedLoss(genome, feature_shapes(student), feature_shapes(teacher))
    expected = create_method("ls")(student=student, teacher=teacher, target=target)
    torch.testing.assert_close(loss(student=student, teacher=teacher, target=target), expected, rtol=1e-5, atol=0)
    assert math.isclose(expected.item(), ls_reference(s.double().numpy(), t.double().numpy()), rel_tol=1e-5)


def test_kd_ls_preset_is_the_kd_ls_genome() -> None:
    assert str(PRESETS["kd_ls"]) == KD_LS_TEXT == "logit[zscore_C,no,no]|kl|no|T2|x9"
