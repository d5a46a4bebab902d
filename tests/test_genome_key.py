"""The canonical key: sound (one key => one loss, on random inputs of every rank) and as complete as its rules.

The property tests sample genomes from both search spaces, add variants that share their key (a slot replaced by
another op, another temperature and magnitude, a sibling distance), and evaluate every pair that shares a key with
``UnifiedLoss`` on random inputs whose feature maps are 4-D, whose embeddings and logits are 2-D, and whose chains
reach 3-D through ``multi_scale``/``bmm``; the random ops draw from identically seeded generators. The class
tests pin one instance of each rule (and of each false rule the key used to apply) to hand-checkable numbers.
"""
from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from kdzero import Genome
from kdzero.errors import GenomeError
from kdzero.features import Features
from kdzero.genome import FULL_SPACE, SHRUNK_SPACE
from kdzero.loss import UnifiedLoss
from kdzero.ops import TRANSFORMS

# (batch, per-sample shapes, input spread, input shift): several sizes, odd and 7x7 maps, wide and shifted values.
PROBES = [
    (6, {"feat": (5, 4, 4), "emb": (7,), "logit": (10,)}, 1.0, 0.0),
    (5, {"feat": (3, 3, 2), "emb": (4,), "logit": (3,)}, 4.0, 1.0),
    (4, {"feat": (4, 7, 7), "emb": (6,), "logit": (5,)}, 0.3, -0.5),
]
RTOL, ATOL = 1e-4, 1e-6


def _probe_inputs(index: int, seed: int = 0) -> tuple[Features, Features, torch.Tensor]:
    batch, shapes, spread, shift = PROBES[index]
    gen = torch.Generator().manual_seed(1000 * index + seed)

    def features() -> Features:
        return Features(*(spread * torch.randn(batch, *shapes[name], generator=gen) + shift
                          for name in Features._fields))

    return features(), features(), torch.randint(0, shapes["logit"][0], (batch,), generator=gen)


INPUTS = [_probe_inputs(i) for i in range(len(PROBES))]


def _loss(genome: Genome, index: int) -> float | None:
    """The loss on probe ``index`` (random ops seeded identically for every genome), None where invalid."""
    shapes = PROBES[index][1]
    try:
        genome.validate(shapes, shapes)
    except GenomeError:
        return None
    student, teacher, target = INPUTS[index]
    with torch.no_grad():
        return float(UnifiedLoss(genome, generator=torch.Generator().manual_seed(7))(student, teacher, target))


def _assert_same_loss(first: Genome, second: Genome) -> int:
    """Both genomes give the same loss on every probe where both are valid; returns how many probes compared."""
    compared = 0
    for index in range(len(PROBES)):
        a, b = _loss(first, index), _loss(second, index)
        if a is None or b is None:
            assert a is None and b is None, f"{first} and {second} share key {first.key} but not validity"
            continue
        assert a == pytest.approx(b, rel=RTOL, abs=ATOL), \
            f"{first} = {a} but {second} = {b}, on probe {index}, with one key {first.key}"
        compared += 1
    return compared


def _variants(genome: Genome, rng: random.Random, space, count: int) -> list[Genome]:
    """Random near neighbours of ``genome`` that may share its key."""
    found = []
    for _ in range(count):
        move = rng.randrange(4)
        if move == 0:
            slots = list(genome.transforms)
            slots[rng.randrange(3)] = rng.choice(space.slots[rng.randrange(3)] + ("no",))
            found.append(replace(genome, transforms=tuple(slots)))
        elif move == 1:
            found.append(replace(genome, temperature=rng.choice(space.temperatures),
                                 magnitude=rng.choice(space.magnitudes)))
        elif move == 2:
            ops = [name for name in genome.transforms if name != "no"]
            empty = sorted(rng.sample(range(3), 3 - len(ops)))
            slots = iter(ops)
            found.append(replace(genome, transforms=tuple("no" if i in empty else next(slots) for i in range(3))))
        else:
            sibling = {"smooth_l1": "l2", "l2": "smooth_l1", "cosine": "pearson", "pearson": "cosine"}
            distance = sibling.get(genome.distance, genome.distance)
            found.append(replace(genome, distance=distance, temperature=rng.choice(space.temperatures),
                                 magnitude=genome.magnitude * rng.choice((0.5, 1.0, 2.0))))
    return found


def _key_pairs(samples: int, variants: int, seed: int) -> list[tuple[Genome, Genome]]:
    """Pairs of different genomes with one key: from ``samples`` genomes per space and their variants."""
    rng = random.Random(seed)
    pairs = []
    for space in (SHRUNK_SPACE, FULL_SPACE):
        first_of: dict[str, Genome] = {}
        for _ in range(samples):
            genome = Genome.random(rng, space)
            for candidate in (genome, *_variants(genome, rng, space, variants)):
                other = first_of.setdefault(candidate.key, candidate)
                if other != candidate:
                    pairs.append((other, candidate))
    return pairs


def _check_pairs(pairs: list[tuple[Genome, Genome]], limit: int, seed: int) -> int:
    random.Random(seed).shuffle(pairs)
    return sum(_assert_same_loss(a, b) for a, b in pairs[:limit])


def test_genomes_that_share_a_key_give_the_same_loss():
    pairs = _key_pairs(samples=2500, variants=4, seed=11)
    assert len(pairs) > 600
    assert _check_pairs(pairs, limit=400, seed=0) > 300


@pytest.mark.slow
def test_genomes_that_share_a_key_give_the_same_loss_on_a_large_sample():
    pairs = _key_pairs(samples=10_000, variants=8, seed=12)
    assert _check_pairs(pairs, limit=10_000, seed=1) > 8000


# --------------------------------------------------------------------------------------- one class per rule
def _key(text: str) -> str:
    return Genome.parse(text).key


def _value(text: str, index: int = 0) -> float:
    value = _loss(Genome.parse(text), index)
    assert value is not None
    return value


@pytest.mark.parametrize("op", ["batchnorm", "scale", "min_max_normalize"])
def test_ops_with_an_additive_epsilon_are_not_idempotent(op):
    once, twice = f"emb[softmax_C,{op},no]|l2|no|T1|x1", f"emb[softmax_C,{op},{op}]|l2|no|T1|x1"
    assert _key(once) != _key(twice)
    # Softmax outputs spread ~0.1: the second pass's epsilon is no longer negligible against it.
    student, teacher = (Features(torch.zeros(8, 1, 1, 1), 0.01 * torch.randn(8, 40, generator=gen),
                                 torch.zeros(8, 3)) for gen in (torch.Generator().manual_seed(s) for s in (1, 2)))
    values = [float(UnifiedLoss(text)(student, teacher)) for text in (once, twice)]
    assert abs(values[0] - values[1]) > 1e-3 * abs(values[0])


def test_batchnorm_twice_differs_from_once_as_reported():
    once, twice = "emb[softmax_C,batchnorm,no]|l2|no|T1|x1", "emb[softmax_C,batchnorm,batchnorm]|l2|no|T1|x1"
    gen = torch.Generator().manual_seed(0)
    student, teacher = (Features(torch.zeros(16, 1, 1, 1), torch.randn(16, 64, generator=gen), torch.zeros(16, 3))
                        for _ in range(2))
    values = [float(UnifiedLoss(text)(student, teacher)) for text in (once, twice)]
    # The second standardisation divides by sqrt(var / (var + 1e-5) + 1e-5): softmax over 64 entries has var ~1e-4.
    assert abs(values[1] - values[0]) > 0.01 * values[0]
    assert _key(once) != _key(twice)


@pytest.mark.parametrize("distance, degree", [("l2", 2), ("l1", 1), ("cosine", 0), ("pearson", 0),
                                              ("correlation", 0)])
def test_temperature_and_magnitude_meet_as_magnitude_times_t_to_the_two_minus_degree(distance, degree):
    hot = f"feat[relu,no,no]|{distance}|no|T4|x25"
    cold = f"feat[relu,no,no]|{distance}|no|T1|x{25 * 4 ** (2 - degree):g}"
    assert _key(hot) == _key(cold)
    assert _value(hot) == pytest.approx(_value(cold), rel=1e-5)
    assert _key(hot) != _key(f"feat[relu,no,no]|{distance}|no|T4|x50")


@pytest.mark.parametrize("distance", ["kl", "hard", "smooth_l1"])
def test_temperature_stays_in_the_key_of_distances_that_are_not_homogeneous(distance):
    hot, cold = f"emb[no,no,no]|{distance}|no|T4|x1", f"emb[no,no,no]|{distance}|no|T1|x16"
    assert _key(hot) != _key(cold)
    assert _value(hot, 1) != pytest.approx(_value(cold, 1), rel=1e-3)


def test_smooth_l1_on_a_bounded_chain_is_half_of_l2_once_t_covers_the_bound():
    assert _key("logit[softmax_C,no,no]|smooth_l1|no|T1|x10") == _key("logit[softmax_C,no,no]|l2|no|T4|x5")
    assert _value("logit[softmax_C,no,no]|smooth_l1|no|T1|x10") == \
        pytest.approx(_value("logit[softmax_C,no,no]|l2|no|T1|x5"), rel=1e-5)
    # tanh lies in [-1, 1]: differences reach 2, so T1 is outside the quadratic zone and T2 inside it.
    assert _key("emb[tanh,no,no]|smooth_l1|no|T1|x1") != _key("emb[tanh,no,no]|l2|no|T1|x0.5")
    assert _key("emb[tanh,no,no]|smooth_l1|no|T2|x1") == _key("emb[tanh,no,no]|l2|no|T1|x0.5")


@pytest.mark.parametrize("longer, shorter", [
    ("logit[logsoftmax_C,logsoftmax_C,no]|l2|no|T1|x1", "logit[logsoftmax_C,no,no]|l2|no|T1|x1"),
    ("logit[logsoftmax_C,softmax_C,no]|l2|no|T1|x1", "logit[softmax_C,no,no]|l2|no|T1|x1"),
    ("feat[logsoftmax_HW,softmax_HW,no]|l1|no|T1|x1", "feat[softmax_HW,no,no]|l1|no|T1|x1"),
    ("feat[local_s1,softmax_HW,no]|l1|no|T1|x1", "feat[softmax_HW,no,no]|l1|no|T1|x1"),
    ("emb[logsoftmax_C,min_max_normalize,no]|l2|no|T1|x1", "emb[min_max_normalize,no,no]|l2|no|T1|x1"),
    ("emb[logsoftmax_N,batchnorm,no]|l2|no|T1|x1", "emb[batchnorm,no,no]|l2|no|T1|x1"),
    ("feat[softmax_C,relu,no]|l2|no|T1|x1", "feat[softmax_C,no,no]|l2|no|T1|x1"),
    ("feat[sigmoid,pow2,abs]|l2|no|T1|x1", "feat[sigmoid,pow2,no]|l2|no|T1|x1"),
    ("feat[abs,pow2,no]|l2|no|T1|x1", "feat[pow2,no,no]|l2|no|T1|x1"),
    ("feat[scale,norm_C,no]|l2|no|T1|x1", "feat[norm_C,no,no]|l2|no|T1|x1"),
    ("feat[batch,tanh,mm]|l2|no|T1|x1", "feat[tanh,mm,no]|l2|no|T1|x1"),
    ("feat[relu,batch,no]|l2|no|T1|x1", "feat[relu,no,no]|l2|no|T1|x1"),
    ("feat[local_s2,local_s1,local_s2]|l1|no|T1|x1", "feat[local_s2,no,no]|l1|no|T1|x1"),
    ("logit[no,no,logsoftmax_C]|kl|no|T4|x1", "logit[no,no,no]|kl|no|T4|x1"),
    ("feat[pow2,no,logsoftmax_HW]|hard|no|T4|x1", "feat[pow2,no,no]|hard|no|T4|x1"),
    ("feat[pow2,no,norm_HW]|cosine|no|T1|x1", "feat[pow2,no,no]|cosine|no|T1|x1"),
    ("emb[exp,min_max_normalize,no]|pearson|no|T1|x1", "emb[exp,no,no]|pearson|no|T1|x1"),
    ("feat[exp,scale,no]|correlation|no|T1|x1", "feat[exp,no,no]|correlation|no|T1|x1"),
    ("feat[exp,local_s1,no]|cosine|no|T1|x1", "feat[exp,no,no]|pearson|no|T1|x1"),
])
def test_each_rule_merges_equal_losses(longer, shorter):
    assert _key(longer) == _key(shorter)
    for index in range(len(PROBES)):
        assert _value(longer, index) == pytest.approx(_value(shorter, index), rel=RTOL, abs=ATOL)


@pytest.mark.parametrize("first, second", [
    ("logit[softmax_C,logsoftmax_C,no]|l2|no|T1|x1", "logit[logsoftmax_C,no,no]|l2|no|T1|x1"),
    ("emb[logsoftmax_C,batchnorm,no]|l2|no|T1|x1", "emb[batchnorm,no,no]|l2|no|T1|x1"),
    ("feat[logsoftmax_C,no,no]|kl|no|T4|x1", "feat[no,no,no]|kl|no|T4|x1"),
    ("feat[norm_HW,no,no]|cosine|no|T1|x1", "feat[norm_C,no,no]|cosine|no|T1|x1"),
    ("feat[relu,no,no]|l2|no|T1|x1", "feat[leaky_relu,no,no]|l2|no|T1|x1"),
    ("feat[local_s2,softmax_HW,no]|l1|no|T1|x1", "feat[softmax_HW,no,no]|l1|no|T1|x1"),
    ("feat[batch,no,no]|cosine|no|T1|x1", "feat[no,no,no]|cosine|no|T1|x1"),
    ("feat[local_s1,local_s2,no]|l1|no|T1|x1", "feat[local_s1,no,no]|l1|no|T1|x1"),
    ("feat[exp,natt,no]|correlation|no|T1|x1", "feat[exp,no,no]|correlation|no|T1|x1"),
    ("feat[exp,satt,norm_C]|l2|no|T1|x1", "feat[exp,norm_C,no]|l2|no|T1|x1"),
])
def test_near_misses_keep_their_own_keys(first, second):
    assert _key(first) != _key(second)
    assert any(_value(first, i) != pytest.approx(_value(second, i), rel=1e-3) for i in range(len(PROBES)))


@pytest.fixture
def new_op():
    """A transform registered for this test only, flagged (wrongly) as identity and idempotent everywhere: the
    flags a careless registration could carry. Removed again afterwards."""
    name = "test_new_op"
    TRANSFORMS.register(name, formula="x * 2", identity_ranks=frozenset({2, 3, 4}), idempotent=True)(
        lambda x, ctx: x * 2)
    try:
        yield name
    finally:
        del TRANSFORMS._ops[name]


def test_an_op_no_rule_names_is_kept_as_written(new_op):
    """An op the key's rules do not name is opaque: never dropped, never merged with a neighbour."""
    keys = {Genome.parse(f"emb[{slots}]|l2|no|T1|x1").key
            for slots in ("no,no,no", f"{new_op},no,no", f"{new_op},{new_op},no", f"softmax_C,{new_op},relu",
                          f"softmax_C,{new_op},no", f"logsoftmax_C,{new_op},softmax_C", "softmax_C,no,no")}
    assert len(keys) == 7
    assert Genome.parse(f"logit[no,no,{new_op}]|kl|no|T4|x1").key != Genome.parse("logit[no,no,no]|kl|no|T4|x1").key


def test_off_grid_temperatures_and_magnitudes_key_like_grid_ones():
    assert _key("feat[relu,no,no]|l1|no|T2.5|x4") == _key("feat[relu,no,no]|l1|no|T1|x10")
    assert _key("feat[relu,no,no]|cosine|no|T3|x1") == _key("feat[relu,no,no]|cosine|no|T1|x9")
    assert _key("logit[no,no,no]|kl|no|T3|x9") != _key("logit[no,no,no]|kl|no|T1|x81")
