"""Issue 19: a validated genome gives a loss that depends on the student and stays finite.

Validation rejects genomes whose loss is constant in the student's input by construction (an op over an axis of
length 1, AT on 1x1 maps, relu after a log-softmax, pooling a local-contrast map onto its own cells); the
sampling tests check the promise on thousands of random genomes, the way the search draws them.
"""
from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from kdzero import PRESETS, Features, Genome, UnifiedLoss
from kdzero.errors import GenomeError
from kdzero.genome import FULL_SPACE, SHRUNK_SPACE
from kdzero.ops import DISTANCES, TRANSFORMS, OpContext
from kdzero.ops.checks import overflow_reason

MAPS_8 = ({"feat": (16, 8, 8), "emb": (16,), "logit": (10,)}, {"feat": (32, 8, 8), "emb": (32,), "logit": (10,)})
MAPS_1 = ({"feat": (16, 1, 1), "emb": (16,), "logit": (10,)}, {"feat": (16, 1, 1), "emb": (16,), "logit": (10,)})
MAPS_7_4 = ({"feat": (8, 7, 7), "emb": (8,), "logit": (5,)}, {"feat": (8, 4, 4), "emb": (8,), "logit": (5,)})
THREE_CLASSES = ({"feat": (4, 2, 2), "emb": (4,), "logit": (3,)}, {"feat": (4, 2, 2), "emb": (4,), "logit": (3,)})
TWO_CLASSES = ({"feat": (4, 2, 2), "emb": (4,), "logit": (2,)}, {"feat": (4, 2, 2), "emb": (4,), "logit": (2,)})
ONE_WIDE = ({"feat": (1, 8, 8), "emb": (1,), "logit": (2,)}, {"feat": (1, 8, 8), "emb": (1,), "logit": (2,)})
PAIRS = (MAPS_8, MAPS_1, MAPS_7_4)
SPACES = {"FULL": FULL_SPACE, "SHRUNK": SHRUNK_SPACE}
BATCH = 6


def _features(shapes: dict, seed: int, scale: float = 1.0) -> Features:
    gen = torch.Generator().manual_seed(seed)
    return Features(*(torch.randn(BATCH, *shapes[name], generator=gen) * scale for name in Features._fields))


def _loss_and_gradient(genome: Genome, pair: tuple[dict, dict], student_seed: int, scale: float = 1.0
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    student_shapes, teacher_shapes = pair
    loss_fn = UnifiedLoss(genome, student_shapes, teacher_shapes, generator=torch.Generator().manual_seed(3))
    student = _features(student_shapes, student_seed, scale)
    used = student.select(genome.input).requires_grad_(True)
    labels = torch.arange(BATCH) % teacher_shapes["logit"][0]
    value = loss_fn(student=student, teacher=_features(teacher_shapes, 99, scale), target=labels)
    (gradient,) = torch.autograd.grad(value, used, allow_unused=True)
    return value.detach(), torch.zeros_like(used) if gradient is None else gradient


# ------------------------------------------------------------------------------------ one case per op and axis
@pytest.mark.parametrize("text,pair,reason", [
    ("feat[pow2,channel,norm_HW]|l2|no|T1|x100", MAPS_1, "norm_HW.*single position"),  # AT on 1x1 maps
    ("feat[softmax_HW,no,no]|l2|no|T1|x1", MAPS_1, "softmax_HW.*single position"),
    ("feat[logsoftmax_HW,no,no]|l1|no|T1|x1", MAPS_1, "logsoftmax_HW.*single position"),
    ("feat[channel,softmax_C,no]|l2|no|T1|x1", MAPS_8, "softmax_C.*channel axis of length 1"),
    ("feat[channel,logsoftmax_C,no]|l2|no|T1|x1", MAPS_8, "logsoftmax_C.*channel axis of length 1"),
    ("feat[channel,norm_C,no]|l2|no|T1|x1", MAPS_8, "norm_C.*channel axis of length 1"),
    ("emb[softmax_C,no,no]|l2|no|T1|x1", ONE_WIDE, "softmax_C.*channel axis of length 1"),
    ("feat[channel,multi_scale_r1,min_max_normalize]|l2|no|T1|x1", MAPS_8, "min_max_normalize.*one entry"),
    ("feat[channel,multi_scale_r1,scale]|l2|no|T1|x1", MAPS_8, "scale.*one entry"),
    ("feat[local_s2,no,no]|l2|no|T1|x1", MAPS_1, "local_s2.*one position"),
    ("feat[channel,multi_scale_r1,no]|correlation|no|T1|x1", MAPS_8, "correlation.*one entry"),
    ("logit[no,no,no]|pearson|no|T1|x1", TWO_CLASSES, "at least 3"),
    ("logit[logsoftmax_C,relu,no]|l2|no|T1|x1", MAPS_8, "constant in the student's logit"),
    ("emb[logsoftmax_N,relu,mm]|l1|no|T1|x1", MAPS_8, "constant in the student's emb"),
    ("feat[local_s2,multi_scale_r1,no]|l1|no|T1|x1", MAPS_8, "constant in the student's feat"),
    ("feat[local_s4,multi_scale_r2,channel]|l2|no|T1|x1", MAPS_8, "constant in the student's feat"),
    ("feat[softmax_HW,multi_scale_r1,no]|l2|no|T1|x1", MAPS_8, "constant in the student's feat"),
    ("feat[mish,multi_scale_r4,no]|kl|no|T1|x1", MAPS_1, "constant in the student's feat"),
    ("feat[multi_scale_r2,no,no]|hard|no|T1|x1", MAPS_1, "constant in the student's feat"),
    ("feat[softmax_C,channel,no]|l2|no|T1|x1", MAPS_8, "constant in the student's feat"),
])
def test_validation_rejects_a_loss_that_is_constant_in_the_student(text, pair, reason):
    genome = Genome.parse(text)
    with pytest.raises(GenomeError, match=reason) as info:
        genome.validate(*pair)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text,pair", [
    ("feat[pow2,channel,norm_HW]|l2|no|T1|x100", MAPS_8), ("feat[softmax_HW,no,no]|l2|no|T1|x1", MAPS_7_4),
    ("feat[local_s2,multi_scale_r4,no]|l1|no|T1|x1", MAPS_8), ("logit[logsoftmax_C,abs,no]|l2|no|T1|x1", MAPS_8),
    ("logit[no,no,no]|pearson|no|T1|x1", THREE_CLASSES),
    ("feat[channel,no,no]|correlation|no|T1|x1", MAPS_8), ("feat[norm_HW,bmm,softmax_C]|correlation|no|T1|x1", MAPS_8),
])
def test_validation_keeps_the_informative_neighbours(text, pair):
    genome = Genome.parse(text)
    genome.validate(*pair)
    first, gradient = _loss_and_gradient(genome, pair, 1)
    second, _ = _loss_and_gradient(genome, pair, 2)
    assert first != second and gradient.abs().max() > 0


def test_at_preset_is_valid_on_maps_but_not_on_1x1_maps():
    assert PRESETS["at"].is_valid(*MAPS_8)
    assert not PRESETS["at"].is_valid(*MAPS_1)


# ----------------------------------------------------------------------------------------- sampled genomes
def _check_sampled_genomes_vary(space: str, count: int) -> tuple[int, int]:
    """Every validated genome's loss changes with the student's batch or has a non-zero student gradient."""
    rng = random.Random(19)
    validated, constant = 0, []
    for index in range(count):
        genome = Genome.random(rng, SPACES[space])
        pair = PAIRS[index % len(PAIRS)]
        if not genome.is_valid(*pair):
            continue
        validated += 1
        first, gradient = _loss_and_gradient(genome, pair, 1)
        second, _ = _loss_and_gradient(genome, pair, 2)
        # float32, as in training: a near-uniform softmax can round two batches to one value, so a genome only
        # counts as constant when its value does not move *and* its gradient is exactly zero.
        if torch.equal(first, second) and gradient.abs().max() == 0:
            constant.append(f"{genome} on {pair[0]['feat']}")
    assert not constant, constant
    return validated, count


@pytest.mark.parametrize("space", sorted(SPACES))
def test_sampled_validated_genomes_depend_on_the_student(space):
    validated, _ = _check_sampled_genomes_vary(space, 300)
    assert validated > 60


@pytest.mark.slow
@pytest.mark.parametrize("space", sorted(SPACES))
def test_3000_sampled_validated_genomes_depend_on_the_student(space):
    validated, _ = _check_sampled_genomes_vary(space, 3000)
    assert validated > 800


# ------------------------------------------------------------------------------------------- finite losses
GROWTH_OPS = ("no", "exp", "pow2", "pow4", "mm", "bmm", "satt", "catt", "natt", "logsoftmax_N", "logsoftmax_C",
              "logsoftmax_HW", "batchnorm", "scale", "norm_C", "norm_HW", "local_s2", "multi_scale_r4", "batch",
              "channel", "drop", "mish")
# Where overflow lives: the ops that enlarge magnitudes, and the distances that square them.
DENSE_GROWTH_OPS = ("no", "exp", "pow2", "pow4", "mm", "bmm", "logsoftmax_C", "catt", "norm_C")
GROWTH_SPACE = replace(FULL_SPACE, slots=(DENSE_GROWTH_OPS,) * 3, distances=("l2", "l1", "kl", "cosine"))
SCALES = (1e-4, 1.0, 1e4)


@pytest.mark.parametrize("text", ["feat[pow4,mm,no]|l2|no|T1|x1", "feat[pow4,bmm,bmm]|l1|no|T1|x1",
                                  "emb[pow4,logsoftmax_C,mm]|l2|no|T8|x100", "feat[pow2,mm,mm]|l2|no|T1|x1"])
def test_a_chain_that_can_overflow_float32_is_rejected_with_its_reason(text):
    genome = Genome.parse(text)
    with pytest.raises(GenomeError, match=r"can overflow float32 on activations up to 1e\+05: .*(squares|reach)"):
        genome.validate(*MAPS_8)
    # The check is not idle: the same chain, run through the ops without validation, overflows at 1e4.
    s = _features(MAPS_8[1], 1, 1e4).select(genome.input)
    t = _features(MAPS_8[1], 2, 1e4).select(genome.input)
    ctx = OpContext(training=False)
    for name in genome.transforms:
        s, t = TRANSFORMS[name](s, ctx), TRANSFORMS[name](t, ctx)
    value = DISTANCES[genome.distance](s / genome.temperature, t / genome.temperature).mean()
    assert not torch.isfinite(value * genome.magnitude * genome.temperature ** 2)


@pytest.mark.parametrize("text", ["feat[pow4,no,no]|l2|no|T1|x100", "feat[pow2,mm,no]|l2|no|T1|x100",
                                  "feat[pow2,bmm,norm_C]|cosine|no|T1|x1", "logit[exp,no,no]|kl|no|T4|x100"])
def test_powers_and_grams_that_stay_inside_float32_are_kept_and_finite(text):
    genome = Genome.parse(text)
    genome.validate(*MAPS_8)
    for scale in SCALES:
        value, gradient = _loss_and_gradient(genome, MAPS_8, 1, scale)
        assert torch.isfinite(value) and torch.isfinite(gradient).all(), (text, scale)


def test_a_norm_of_an_overflowing_gram_is_rejected_too():
    """Its output stays finite, but only because the norm overflows to inf and every entry becomes 0."""
    with pytest.raises(GenomeError, match=r"transform3 'norm_C' squares values that can reach 1\.0e\+32"):
        Genome.parse("feat[pow4,mm,norm_C]|cosine|no|T1|x1").validate(*MAPS_8)


def _check_sampled_genomes_are_finite(space, count: int, seed: int) -> int:
    rng = random.Random(seed)
    validated, broken = 0, []
    for index in range(count):
        genome = Genome.random(rng, space)
        pair = PAIRS[index % len(PAIRS)]
        if not genome.is_valid(*pair):
            continue
        validated += 1
        for scale in SCALES:
            value, gradient = _loss_and_gradient(genome, pair, index, scale)
            if not (torch.isfinite(value) and torch.isfinite(gradient).all()):
                broken.append(f"{genome} on {pair[0]['feat']} at scale {scale:g}")
    assert not broken, broken
    return validated


@pytest.mark.parametrize("space", ["FULL", "SHRUNK", "GROWTH"])
def test_sampled_validated_genomes_give_finite_losses_and_gradients_from_1e_minus4_to_1e4(space):
    validated = _check_sampled_genomes_are_finite({**SPACES, "GROWTH": GROWTH_SPACE}[space], 150, seed=7)
    assert validated > 40


@pytest.mark.slow
@pytest.mark.parametrize("space", ["FULL", "SHRUNK", "GROWTH"])
def test_2000_sampled_validated_genomes_give_finite_losses_and_gradients(space):
    validated = _check_sampled_genomes_are_finite({**SPACES, "GROWTH": GROWTH_SPACE}[space], 2000, seed=8)
    assert validated > 500


@pytest.mark.parametrize("seed", range(4))
def test_chains_on_3d_inputs_that_pass_the_overflow_check_are_finite(seed):
    """The same guarantee for transform chains on (N, C, L) sequences, straight through the ops."""
    rng = random.Random(seed)
    shape, checked = (6, 5, 9), 0
    while checked < 40:
        names = [rng.choice(GROWTH_OPS) for _ in range(3)]
        distance = rng.choice(DISTANCES.names())
        try:
            out_shape = shape
            for name in names:
                out_shape = TRANSFORMS[name].output_shape(out_shape)
        except GenomeError:
            continue
        if overflow_reason(names, distance, 1, 100, shape):
            continue
        checked += 1
        for scale in SCALES:
            x = (torch.randn(shape, generator=torch.Generator().manual_seed(checked)) * scale).requires_grad_(True)
            y = torch.randn(shape, generator=torch.Generator().manual_seed(99)) * scale
            ctx = OpContext(training=True, generator=torch.Generator().manual_seed(1))
            s, t = x, y
            for slot, name in enumerate(names):
                ctx.share(slot, tuple(s.shape), tuple(t.shape))
                s, t = TRANSFORMS[name](s, ctx), TRANSFORMS[name](t, ctx)
            value = DISTANCES[distance](s, t).mean() * 100
            value.backward()
            assert torch.isfinite(value) and torch.isfinite(x.grad).all(), (names, distance, scale)
