"""The op registries: every transform on every rank and size, reference values, shared randomness, distances
and weights against independent computations (plain torch / numpy on the reference side)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from kdzero.errors import GenomeError
from kdzero.ops import DISTANCES, TRANSFORMS, WEIGHTS, OpContext

SHAPES: dict[int, list[tuple[int, ...]]] = {
    2: [(5, 10), (1, 3)],
    3: [(4, 6, 9), (3, 5, 1)],
    4: [(4, 8, 7, 7), (3, 6, 5, 5), (2, 4, 1, 1), (4, 3, 6, 9), (2, 5, 3, 5)],
}
ALL_SHAPES = [shape for shapes in SHAPES.values() for shape in shapes]
SCALES = (1.0, 100.0, 1e3, 0.0)



def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


def _np_softmax(a: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _np_log_softmax(a: np.ndarray, axis: int) -> np.ndarray:
    shifted = a - a.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


# ------------------------------------------------------------------------------------------------ registries
def test_registries_hold_the_documented_number_of_ops():
    assert (len(TRANSFORMS), len(DISTANCES), len(WEIGHTS)) == (41, 8, 5)


def test_unknown_op_name_raises_genome_error_with_suggestion():
    with pytest.raises(GenomeError, match=r"unknown transform 'softmx_C'.*softmax_C"):
        TRANSFORMS["softmx_C"]


# ---------------------------------------------------------------------------------- every transform x shape
@pytest.mark.parametrize("shape", ALL_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", TRANSFORMS.names())
def test_transform_is_finite_with_finite_gradients_and_declared_shape(name: str, shape: tuple[int, ...]):
    op = TRANSFORMS[name]
    if len(shape) not in op.ranks:
        with pytest.raises(GenomeError) as info:
            op.output_shape(shape)
        message = str(info.value)
        assert "\n" not in message and name in message and f"{len(shape)}-D" in message
        return
    if op.degenerate is not None and op.degenerate(shape):
        with pytest.raises(GenomeError, match="carries no information"):
            op.output_shape(shape)
        raw = _randn(*shape, seed=len(shape))
        x = torch.sign(raw) * (raw.abs() + 0.5)
        # Degenerate: the result depends on the input's signs at most (a constant, or +-1 for a normalisation).
        torch.testing.assert_close(op(x, OpContext(training=False)), op(torch.sign(x), OpContext(training=False)),
                                   rtol=0, atol=1e-5)
        return
    expected = op.output_shape(shape)
    base = _randn(*shape, seed=len(shape))
    for training in (True, False):
        for scale in SCALES:
            x = (base * scale).requires_grad_(True)
            out = op(x, OpContext(training=training))
            assert tuple(out.shape) == expected, (name, shape, scale)
            assert torch.isfinite(out).all(), (name, shape, scale, training)
            out.sum().backward()
            assert x.grad is not None and torch.isfinite(x.grad).all(), (name, shape, scale, training)


@pytest.mark.parametrize("rank", [1, 5])
@pytest.mark.parametrize("name", TRANSFORMS.names())
def test_transform_rejects_ranks_outside_its_declared_ranks(name: str, rank: int):
    with pytest.raises(GenomeError) as info:
        TRANSFORMS[name].output_shape((2,) * rank)
    assert "\n" not in str(info.value) and "not defined" in str(info.value)


def test_rank_restricted_transforms_are_exactly_the_positional_ones():
    positional = {name for name in TRANSFORMS.names() if 2 not in TRANSFORMS[name].ranks}
    assert positional == {"satt", "bmm", "channel", "multi_scale_r1", "multi_scale_r2", "multi_scale_r4",
                          "local_s1", "local_s2", "local_s4", "norm_HW", "softmax_HW", "logsoftmax_HW"}


# ---------------------------------------------------------------------------------- transform reference values
def _apply(name: str, x: torch.Tensor, training: bool = True) -> torch.Tensor:
    return TRANSFORMS[name](x, OpContext(training=training))


@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (2, 5, 7)])
def test_satt_reweights_positions_by_softmax_of_mean_abs_with_mean_weight_one(shape):
    x = _randn(*shape, seed=1)
    a = _np(x).reshape(shape[0], shape[1], -1)
    length = a.shape[2]
    weights = _np_softmax(np.abs(a).mean(axis=1), axis=1) * length  # (N, L)
    np.testing.assert_allclose(weights.mean(axis=1), 1.0, atol=1e-12)
    expected = (a * weights[:, None, :]).reshape(shape)
    np.testing.assert_allclose(_np(_apply("satt", x)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (2, 5, 7), (4, 9)])
def test_catt_reweights_channels_by_softmax_of_mean_abs_with_mean_weight_one(shape):
    x = _randn(*shape, seed=2)
    a = _np(x).reshape(shape[0], shape[1], -1)
    weights = _np_softmax(np.abs(a).mean(axis=2), axis=1) * shape[1]  # (N, C)
    np.testing.assert_allclose(weights.mean(axis=1), 1.0, atol=1e-12)
    expected = (a * weights[:, :, None]).reshape(shape)
    np.testing.assert_allclose(_np(_apply("catt", x)), expected, rtol=1e-5, atol=1e-6)


def test_natt_reweights_samples_by_softmax_over_batch():
    x = _randn(4, 3, 5, seed=3)
    a = _np(x)
    weights = _np_softmax(np.abs(a).reshape(4, -1).mean(axis=1), axis=0) * 4
    np.testing.assert_allclose(_np(_apply("natt", x)), a * weights[:, None, None], rtol=1e-5, atol=1e-6)


def test_bmm_is_per_sample_channel_gram_over_positions():
    x = _randn(2, 3, 4, 5, seed=4)
    f = _np(x).reshape(2, 3, 20)
    expected = np.einsum("ncl,ndl->ncd", f, f) / 20
    np.testing.assert_allclose(_np(_apply("bmm", x)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(5, 7), (3, 2, 4, 4)])
def test_mm_is_batch_gram_over_features(shape):
    x = _randn(*shape, seed=5)
    flat = _np(x).reshape(shape[0], -1)
    expected = flat @ flat.T / flat.shape[1]
    np.testing.assert_allclose(_np(_apply("mm", x)), expected, rtol=1e-5, atol=1e-6)


def test_mm_on_2d_input_is_not_a_no_op():
    x = _randn(4, 6, seed=6)
    assert _apply("mm", x).shape == (4, 4)


def test_batch_flattens_all_but_the_batch_axis():
    x = _randn(2, 3, 4, 5, seed=7)
    np.testing.assert_array_equal(_np(_apply("batch", x)), _np(x).reshape(2, 60))


def test_channel_averages_channels_keeping_a_channel_axis():
    x = _randn(2, 3, 4, 5, seed=8)
    np.testing.assert_allclose(_np(_apply("channel", x)), _np(x).mean(axis=1, keepdims=True), rtol=1e-6,
                               atol=1e-7)


def test_multi_scale_r2_on_4x4_map_is_global_mean_then_2x2_cell_means():
    x = _randn(2, 3, 4, 4, seed=9)
    a = _np(x)
    cells = [a[:, :, r:r + 2, c:c + 2].mean(axis=(2, 3)) for r in (0, 2) for c in (0, 2)]
    expected = np.stack([a.mean(axis=(2, 3)), *cells], axis=2)
    out = _apply("multi_scale_r2", x)
    assert out.shape == (2, 3, 5)
    np.testing.assert_allclose(_np(out), expected, rtol=1e-5, atol=1e-6)


def test_multi_scale_r4_on_7x7_map_has_21_cells_starting_with_global_mean():
    x = _randn(2, 3, 7, 7, seed=10)
    out = _apply("multi_scale_r4", x)
    assert out.shape == (2, 3, 1 + 4 + 16)
    np.testing.assert_allclose(_np(out[:, :, 0]), _np(x).mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)


def test_multi_scale_r1_is_global_average_pooling():
    x = _randn(2, 3, 7, 7, seed=11)
    np.testing.assert_allclose(_np(_apply("multi_scale_r1", x)), _np(x).mean(axis=(2, 3))[:, :, None],
                               rtol=1e-5, atol=1e-6)


def _local_reference(a: np.ndarray, bounds: list[tuple[int, int]]) -> np.ndarray:
    out = a.copy()
    for r0, r1 in bounds:
        for c0, c1 in bounds:
            block = a[:, :, r0:r1, c0:c1]
            out[:, :, r0:r1, c0:c1] = block - block.mean(axis=(2, 3), keepdims=True)
    return out


@pytest.mark.parametrize("size,bounds", [(4, [(0, 2), (2, 4)]), (7, [(0, 4), (4, 7)])])
def test_local_s2_subtracts_the_mean_of_each_cell(size, bounds):
    x = _randn(2, 3, size, size, seed=12)
    np.testing.assert_allclose(_np(_apply("local_s2", x)), _local_reference(_np(x), bounds), rtol=1e-5,
                               atol=1e-5)


def test_local_s4_splits_7_as_2_2_2_1():
    x = _randn(2, 3, 7, 7, seed=13)
    bounds = [(0, 2), (2, 4), (4, 6), (6, 7)]
    np.testing.assert_allclose(_np(_apply("local_s4", x)), _local_reference(_np(x), bounds), rtol=1e-5,
                               atol=1e-5)


def test_local_s1_subtracts_the_global_mean_and_keeps_rank():
    x = _randn(2, 3, 5, 6, seed=14)
    out = _apply("local_s1", x)
    assert out.shape == x.shape
    a = _np(x)
    np.testing.assert_allclose(_np(out), a - a.mean(axis=(2, 3), keepdims=True), rtol=1e-5, atol=1e-5)


def test_local_s2_on_sequence_splits_positions():
    x = _randn(2, 3, 7, seed=15)
    a = _np(x)
    expected = np.concatenate([a[:, :, :4] - a[:, :, :4].mean(axis=2, keepdims=True),
                               a[:, :, 4:] - a[:, :, 4:].mean(axis=2, keepdims=True)], axis=2)
    np.testing.assert_allclose(_np(_apply("local_s2", x)), expected, rtol=1e-5, atol=1e-5)


def test_norm_ops_divide_by_l2_norm_along_their_axis():
    x = _randn(3, 4, 5, 6, seed=16)
    a = _np(x)
    flat = a.reshape(3, 4, 30)
    np.testing.assert_allclose(_np(_apply("norm_HW", x)),
                               (flat / np.sqrt((flat**2).sum(axis=2, keepdims=True))).reshape(a.shape),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_np(_apply("norm_C", x)), a / np.sqrt((a**2).sum(axis=1, keepdims=True)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_np(_apply("norm_N", x)), a / np.sqrt((a**2).sum(axis=0, keepdims=True)),
                               rtol=1e-5, atol=1e-6)


def test_softmax_and_logsoftmax_use_their_named_axes():
    x = _randn(3, 4, 5, 6, seed=17)
    a = _np(x)
    flat = a.reshape(3, 4, 30)
    np.testing.assert_allclose(_np(_apply("softmax_N", x)), _np_softmax(a, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_np(_apply("softmax_C", x)), _np_softmax(a, 1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_np(_apply("softmax_HW", x)), _np_softmax(flat, 2).reshape(a.shape), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(_np(_apply("logsoftmax_N", x)), _np_log_softmax(a, 0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_np(_apply("logsoftmax_C", x)), _np_log_softmax(a, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_np(_apply("logsoftmax_HW", x)), _np_log_softmax(flat, 2).reshape(a.shape),
                               rtol=1e-5, atol=1e-5)


def test_logsoftmax_n_normalises_over_the_batch_not_the_classes():
    x = _randn(5, 7, seed=18)
    out = _apply("logsoftmax_N", x)
    np.testing.assert_allclose(np.exp(_np(out)).sum(axis=0), np.ones(7), rtol=1e-5)
    assert not np.allclose(np.exp(_np(out)).sum(axis=1), np.ones(5), rtol=1e-3)


def test_min_max_normalize_is_per_sample_not_across_the_batch():
    x = _randn(3, 4, 5, seed=19)
    x[1] *= 50.0
    a = _np(x).reshape(3, -1)
    low, high = a.min(axis=1, keepdims=True), a.max(axis=1, keepdims=True)
    expected = ((a - low) / (high - low + 1e-6)).reshape(3, 4, 5)
    out = _apply("min_max_normalize", x)
    np.testing.assert_allclose(_np(out), expected, rtol=1e-5, atol=1e-6)
    for sample in range(3):
        assert float(out[sample].min()) == 0.0
        assert float(out[sample].max()) == pytest.approx(1.0, abs=1e-5)
    changed = x.clone()
    changed[1] *= 1000.0
    np.testing.assert_allclose(_np(_apply("min_max_normalize", changed)[[0, 2]]), _np(out[[0, 2]]), rtol=1e-6)


def test_scale_divides_each_sample_by_its_rms():
    x = _randn(3, 4, 5, seed=20)
    a = _np(x)
    rms = np.sqrt((a.reshape(3, -1) ** 2).mean(axis=1) + 1e-6)
    np.testing.assert_allclose(_np(_apply("scale", x)), a / rms[:, None, None], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 7), (4, 3, 5, 5)])
def test_batchnorm_is_plain_standardisation_per_channel(shape):
    x = _randn(*shape, seed=21) * 3.0 + 2.0
    a = _np(x)
    axes = (0, *range(2, a.ndim))
    expected = (a - a.mean(axis=axes, keepdims=True)) / np.sqrt(a.var(axis=axes, keepdims=True) + 1e-5)
    np.testing.assert_allclose(_np(_apply("batchnorm", x)), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_np(_apply("batchnorm", x, training=False)), expected, rtol=1e-4, atol=1e-5)


def test_batchnorm_creates_no_modules_or_parameters(monkeypatch):
    created: list[nn.Module] = []
    original = nn.Module.__init__

    def counting_init(self, *args, **kwargs):
        created.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "__init__", counting_init)
    x = _randn(4, 3, 5, 5, seed=22)
    first = _apply("batchnorm", x)
    second = _apply("batchnorm", x)
    assert created == []
    assert torch.equal(first, second)
    assert not isinstance(TRANSFORMS["batchnorm"].fn, nn.Module)


def test_log_and_sqrt_are_signed_and_finite_at_zero():
    x = torch.tensor([[-100.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 100.0]])
    a = _np(x)
    np.testing.assert_allclose(_np(_apply("log", x)), np.sign(a) * np.log1p(np.abs(a)), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(_np(_apply("sqrt", x)), np.sign(a) * (np.sqrt(np.abs(a) + 1e-6) - np.sqrt(1e-6)),
                               rtol=1e-5, atol=1e-6)
    for name in ("log", "sqrt"):
        out = _apply(name, x)
        assert torch.equal(torch.sign(out), torch.sign(x))
        assert float(out[0, 3]) == 0.0


def test_exp_clamps_its_input_at_20():
    x = torch.tensor([[-5.0, 0.0, 3.0, 20.0, 50.0, 1e6]])
    expected = np.exp(np.minimum(_np(x), 20.0))
    np.testing.assert_allclose(_np(_apply("exp", x)), expected, rtol=1e-6)
    assert float(_apply("exp", x)[0, 5]) == pytest.approx(math.exp(20.0), rel=1e-6)


def test_pow_ops_clamp_at_1e4():
    x = torch.tensor([[-3.0, 0.5, 2.0, 1e5]])
    a = _np(x)
    np.testing.assert_allclose(_np(_apply("pow2", x)), np.clip(a, -1e4, 1e4) ** 2, rtol=1e-6)
    np.testing.assert_allclose(_np(_apply("pow4", x)), np.clip(a, -1e4, 1e4) ** 4, rtol=1e-6)


def test_elementwise_activations_match_their_formulas():
    x = _randn(4, 9, seed=23) * 3.0
    a = _np(x)
    sigmoid = 1.0 / (1.0 + np.exp(-a))
    expected = {
        "relu": np.maximum(a, 0.0), "leaky_relu": np.where(a > 0, a, 0.01 * a), "tanh": np.tanh(a),
        "sigmoid": sigmoid, "swish": a * sigmoid, "abs": np.abs(a), "mish": a * np.tanh(np.log1p(np.exp(a))),
        "no": a,
    }
    for name, reference in expected.items():
        np.testing.assert_allclose(_np(_apply(name, x)), reference, rtol=1e-5, atol=1e-6, err_msg=name)


# --------------------------------------------------------------------------------------------- random ops
@pytest.mark.parametrize("name", ["mask", "drop"])
@pytest.mark.parametrize("shape", [(6, 10), (4, 3, 9), (4, 3, 6, 6)])
def test_random_op_shares_its_mask_between_branches_of_one_context(name, shape):
    op = TRANSFORMS[name]
    x = _randn(*shape, seed=24) + 5.0  # no zeros, so every dropped entry shows
    ctx = OpContext(training=True, generator=torch.Generator().manual_seed(0))
    student = op(x, ctx)
    teacher = op(2 * x, ctx)
    assert torch.equal(teacher, 2 * student)
    dropped = student == 0
    assert dropped.any() and not dropped.all()


def test_mask_drops_whole_positions_across_channels():
    x = _randn(4, 5, 6, 6, seed=25) + 5.0
    out = TRANSFORMS["mask"](x, OpContext(training=True, generator=torch.Generator().manual_seed(1)))
    dropped = out == 0
    assert torch.equal(dropped, dropped[:, :1].expand_as(dropped))
    kept = ~dropped
    assert torch.equal(out[kept], x[kept])


def test_drop_rescales_kept_entries_by_inverse_keep_probability():
    x = _randn(8, 50, seed=26) + 5.0
    out = TRANSFORMS["drop"](x, OpContext(training=True, generator=torch.Generator().manual_seed(2)))
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] / 0.9)


@pytest.mark.parametrize("name", ["mask", "drop"])
def test_random_op_draws_a_new_mask_in_a_new_context(name):
    op = TRANSFORMS[name]
    x = _randn(8, 4, 6, 6, seed=27) + 5.0
    gen = torch.Generator().manual_seed(3)
    first = op(x, OpContext(training=True, generator=gen)) == 0
    second = op(x, OpContext(training=True, generator=gen)) == 0
    assert not torch.equal(first, second)


@pytest.mark.parametrize("name", ["mask", "drop"])
def test_two_slots_draw_independent_masks(name):
    op = TRANSFORMS[name]
    x = _randn(8, 4, 6, 6, seed=28) + 5.0
    ctx = OpContext(training=True, generator=torch.Generator().manual_seed(4))
    ctx.slot = 0
    first = op(x, ctx) == 0
    ctx.slot = 1
    second = op(x, ctx) == 0
    assert not torch.equal(first, second)
    ctx.slot = 0
    assert torch.equal(op(x, ctx) == 0, first)


@pytest.mark.parametrize("name", ["mask", "drop"])
def test_random_op_is_identity_in_eval_mode(name):
    x = _randn(4, 3, 6, 6, seed=29)
    assert torch.equal(TRANSFORMS[name](x, OpContext(training=False)), x)


# ------------------------------------------------------------------------------------------------ distances
DISTANCE_SHAPES = [(6, 10), (4, 5, 9), (4, 3, 5, 5), (3, 2, 7, 7)]


@pytest.mark.parametrize("shape", DISTANCE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", DISTANCES.names())
def test_distance_gives_finite_non_negative_per_sample_values(name, shape):
    op = DISTANCES[name]
    for scale in (1.0, 100.0, 0.0):
        s = (_randn(*shape, seed=30) * scale).requires_grad_(True)
        t = _randn(*shape, seed=31) * scale
        value = op(s, t)
        assert value.shape == (shape[0],)
        assert torch.isfinite(value).all() and (value >= 0).all(), (name, scale, value)
        value.sum().backward()
        assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("name", ["cosine", "pearson", "correlation"])
@pytest.mark.parametrize("shape", DISTANCE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_similarity_distance_is_zero_for_identical_inputs_and_positive_otherwise(name, shape):
    op = DISTANCES[name]
    x = _randn(*shape, seed=32)
    same = op(x, x.clone())
    assert float(same.abs().max()) < 1e-6
    if name == "correlation":  # batch relations differ: sample 1 becomes a copy of sample 0 on one side
        other = x.clone()
        other[1] = other[0]
        assert float(op(x, other)[:2].min()) > 0.1
    else:
        assert float(op(x, _randn(*shape, seed=33)).min()) > 0.1


def test_cosine_distance_is_two_for_opposite_rows():
    x = _randn(4, 10, seed=34)
    torch.testing.assert_close(DISTANCES["cosine"](x, -x), torch.full((4,), 2.0))


@pytest.mark.parametrize("shape", DISTANCE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kl_is_teacher_to_student_kl_along_last_axis(shape):
    s, t = _randn(*shape, seed=35) * 2, _randn(*shape, seed=36) * 2
    rows_s = _np(s).reshape(shape[0], -1, shape[-1] if len(shape) <= 3 else shape[2] * shape[3])
    rows_t = _np(t).reshape(rows_s.shape)
    log_ps, log_pt = _np_log_softmax(rows_s, 2), _np_log_softmax(rows_t, 2)
    expected = (np.exp(log_pt) * (log_pt - log_ps)).sum(axis=2).mean(axis=1)
    np.testing.assert_allclose(_np(DISTANCES["kl"](s, t)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", DISTANCE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_hard_is_cross_entropy_against_teacher_argmax(shape):
    s, t = _randn(*shape, seed=37), _randn(*shape, seed=38)
    rows_s = _np(s).reshape(shape[0], -1, shape[-1] if len(shape) <= 3 else shape[2] * shape[3])
    rows_t = _np(t).reshape(rows_s.shape)
    labels = rows_t.argmax(axis=2)
    log_ps = _np_log_softmax(rows_s, 2)
    expected = -np.take_along_axis(log_ps, labels[:, :, None], axis=2)[:, :, 0].mean(axis=1)
    np.testing.assert_allclose(_np(DISTANCES["hard"](s, t)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["kl", "hard"])
def test_kl_and_hard_are_asymmetric(name):
    s, t = _randn(6, 10, seed=39) * 2, _randn(6, 10, seed=40) * 3
    forward, backward = DISTANCES[name](s, t), DISTANCES[name](t, s)
    assert float((forward - backward).abs().max()) > 1e-3


@pytest.mark.parametrize("shape", DISTANCE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_elementwise_distances_match_torch_references(shape):
    s, t = _randn(*shape, seed=41) * 2, _randn(*shape, seed=42) * 2
    diff = (s - t).reshape(shape[0], -1)
    torch.testing.assert_close(DISTANCES["l1"](s, t), diff.abs().mean(dim=1))
    torch.testing.assert_close(DISTANCES["l2"](s, t), (diff**2).mean(dim=1))
    huber = torch.where(diff.abs() < 1.0, 0.5 * diff**2, diff.abs() - 0.5)
    torch.testing.assert_close(DISTANCES["smooth_l1"](s, t), huber.mean(dim=1))


def test_pearson_is_blind_to_shift_and_scale_of_rows():
    s, t = _randn(5, 12, seed=43), _randn(5, 12, seed=44)
    torch.testing.assert_close(DISTANCES["pearson"](s, t), DISTANCES["pearson"](3.0 * s + 7.0, t))
    a, b = _np(s), _np(t)
    r = np.array([np.corrcoef(a[i], b[i])[0, 1] for i in range(5)])
    np.testing.assert_allclose(_np(DISTANCES["pearson"](s, t)), 1.0 - r, rtol=1e-5, atol=1e-6)


def test_correlation_compares_batch_cosine_matrices():
    s, t = _randn(5, 3, 4, seed=45), _randn(5, 3, 4, seed=46)
    fs = _np(s).reshape(5, -1)
    ft = _np(t).reshape(5, -1)
    fs /= np.linalg.norm(fs, axis=1, keepdims=True)
    ft /= np.linalg.norm(ft, axis=1, keepdims=True)
    expected = ((fs @ fs.T - ft @ ft.T) ** 2).mean(axis=1)
    np.testing.assert_allclose(_np(DISTANCES["correlation"](s, t)), expected, rtol=1e-5, atol=1e-7)


# -------------------------------------------------------------------------------------------------- weights
def _reference_weights(name: str, s_logit: np.ndarray, t_logit: np.ndarray, labels: np.ndarray) -> np.ndarray:
    p_s, p_t = _np_softmax(s_logit, 1), _np_softmax(t_logit, 1)
    rows = np.arange(len(labels))
    if name == "no":
        return np.ones(len(labels))
    if name == "entropy":
        return -(p_t * np.log(p_t)).sum(axis=1) / np.log(s_logit.shape[1])
    if name == "focal":
        return (1.0 - p_s[rows, labels]) ** 2
    if name == "sim":
        cos = (p_s * p_t).sum(axis=1) / (np.linalg.norm(p_s, axis=1) * np.linalg.norm(p_t, axis=1))
        return 1.0 - cos
    if name == "conf":
        return p_t[rows, labels]
    raise AssertionError(name)


@pytest.mark.parametrize("classes", [7, 100])
@pytest.mark.parametrize("name", WEIGHTS.names())
def test_weight_matches_independent_mean_one_weighted_mean(name, classes):
    n = 6
    distances = (_randn(n, seed=47).abs() + 0.1).requires_grad_(True)
    s_logit = (_randn(n, classes, seed=48) * 2).requires_grad_(True)
    t_logit = (_randn(n, classes, seed=49) * 2).requires_grad_(True)
    target = torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(50))
    raw = _reference_weights(name, _np(s_logit), _np(t_logit), target.numpy())
    weights = raw + 1e-6 if name != "no" else raw
    weights = weights / weights.mean()
    expected = float((_np(distances) * weights).mean())
    value = WEIGHTS[name](distances, s_logit, t_logit, target)
    assert value.dim() == 0
    assert float(value.detach()) == pytest.approx(expected, rel=1e-5, abs=1e-7)
    value.backward()
    assert s_logit.grad is None and t_logit.grad is None
    np.testing.assert_allclose(_np(distances.grad), weights / n, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", ["focal", "conf"])
def test_weight_without_target_uses_teacher_argmax(name):
    distances = _randn(6, seed=51).abs() + 0.1
    s_logit, t_logit = _randn(6, 7, seed=52), _randn(6, 7, seed=53)
    op = WEIGHTS[name]
    torch.testing.assert_close(op(distances, s_logit, t_logit, None),
                               op(distances, s_logit, t_logit, t_logit.argmax(dim=1)))
    flipped = (t_logit.argmax(dim=1) + 1) % 7
    assert float(op(distances, s_logit, t_logit, None)) != pytest.approx(
        float(op(distances, s_logit, t_logit, flipped)), rel=1e-4)


@pytest.mark.parametrize("name", WEIGHTS.names())
def test_weights_keep_overall_scale_for_constant_distances(name):
    distances = torch.full((5,), 2.5)
    s_logit, t_logit = _randn(5, 7, seed=54), _randn(5, 7, seed=55)
    value = WEIGHTS[name](distances, s_logit, t_logit, torch.arange(5))
    assert float(value) == pytest.approx(2.5, rel=1e-5)


@pytest.mark.parametrize("cells", [1, 2, 4])
def test_local_ops_are_degenerate_exactly_when_every_cell_holds_one_position(cells: int):
    op = TRANSFORMS[f"local_s{cells}"]
    for size in range(1, 9):
        shape = (2, 3, size, size)
        output = op(_randn(*shape, seed=size), OpContext(training=True))
        assert (torch.count_nonzero(output) == 0) == (size <= cells), (cells, size)
        assert bool(op.degenerate(shape)) == (size <= cells)


def test_context_draws_once_over_the_axes_both_sides_share():
    ctx = OpContext(training=True, generator=torch.Generator().manual_seed(5))
    ctx.share(0, (6, 3, 4, 4), (6, 5, 4, 4))
    student = ctx.bernoulli((6, 3, 4, 4), 0.5, torch.device("cpu"), torch.float32)
    teacher = ctx.bernoulli((6, 5, 4, 4), 0.5, torch.device("cpu"), torch.float32)
    assert student.shape == (6, 1, 4, 4) and torch.equal(student, teacher)
    ctx.share(1, (6, 5, 4, 4), (6, 5, 4, 4))
    assert ctx.bernoulli((6, 5, 4, 4), 0.5, torch.device("cpu"), torch.float32).shape == (6, 5, 4, 4)


@pytest.mark.parametrize("shape", ALL_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", TRANSFORMS.names())
def test_transform_output_stays_within_its_declared_magnitude_bound(name: str, shape: tuple[int, ...]):
    """The bounds validation chains to reject float32 overflow (``Op.bound``; none = at most max(b, 1))."""
    op = TRANSFORMS[name]
    if len(shape) not in op.ranks or (op.degenerate is not None and op.degenerate(shape)):
        return
    base = _randn(*shape, seed=61)
    for b in (0.5, 10.0, 1e4):
        x = base / base.abs().max() * b
        out = op(x.double(), OpContext(training=True, generator=torch.Generator().manual_seed(2)))
        limit = op.bound(b, shape) if op.bound is not None else max(b, 1.0)
        assert out.abs().max().item() <= limit * (1 + 1e-9), (name, shape, b)


@pytest.mark.parametrize("name", DISTANCES.names())
def test_distance_stays_within_its_declared_magnitude_bound(name: str):
    for shape in ((5, 10), (4, 6, 9), (4, 8, 7, 7)):
        s, t = _randn(*shape, seed=62).double(), _randn(*shape, seed=63).double()
        for b in (0.5, 10.0, 1e4):
            value = DISTANCES[name](s / s.abs().max() * b, -t / t.abs().max() * b)
            assert value.abs().max().item() <= DISTANCES[name].bound(b, shape) * (1 + 1e-9), (name, shape, b)
