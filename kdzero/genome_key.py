"""The canonical key of a genome: one string for every genome that computes the same loss.

The search deduplicates and caches by this key, so it must be *sound* (same key => same loss, to float
tolerance, on every input) before it is *complete* (same loss => same key). Every rule below is an algebraic
identity of the ops' code as written in ``kdzero.ops``; an op that no rule names is opaque (kept as it is,
never merged with a neighbour), so registering a new op can never make the key unsound.

Rules, applied left to right to the transform chain at its current tensor rank:

1. *No-op slots.* ``no`` everywhere and ``batch`` on 2-D input are dropped.
2. *Exact idempotents.* A repeat of ``relu``, ``abs``, ``batch``, ``channel``, ``local_s*`` or ``norm_*``
   collapses (``norm_*`` clamps its divisor, so it is exact above the clamp as in rule 5); so does ``local_sK``
   right after ``local_sJ`` with K <= J (the finer grid's cells nest in the coarser one's, so every coarse cell
   already has mean 0). Ops with an additive epsilon (``scale``, ``min_max_normalize``, ``batchnorm``) are not
   idempotent: the second pass divides by ``sqrt(1 + eps/var)``-like factors that are far from 1 when the first
   pass saw a small spread.
3. *Sign.* ``relu``, ``abs`` and ``leaky_relu`` are the identity on a tensor that is non-negative by construction
   (after ``exp``, ``sigmoid``, ``softmax_*``, ``pow2``, ...); an even op (``pow2``, ``pow4``) ignores an
   ``abs`` just before it.
4. *Shifts.* ``logsoftmax_A`` returns its input plus a term constant along axis A (``local_s1``: minus the mean
   over the positions, a term constant along them); an op that ignores such a
   shift (``softmax_A``, ``logsoftmax_A``, ``min_max_normalize`` along a whole sample, ``batchnorm`` along batch
   and positions, ``local_s*`` along positions) makes it redundant.
5. *Positive scales.* ``norm_A`` multiplies by a positive factor constant along A, ``scale`` by one per sample;
   an L2 normalisation along a subset of those axes makes it redundant. Exact for every vector whose norm is
   above the normalisation's clamp (1e-6), zero vectors included. The attention ops (``satt``, ``catt``,
   ``natt``) are *not* positive scales in float: their softmax weights underflow to exactly 0 once the
   attention logits differ by ~100 (after ``exp``, say), which zeroes whole samples or positions.
6. *Reshapes.* ``batch`` (flatten a sample) commutes with the entry-wise functions (``exp``, ``relu``, ...), so
   it moves after them; just before ``mm`` (which flattens anyway) it is redundant.
7. *The distance.* A trailing op is dropped when the distance cannot see it: ``batch`` before the entry-wise
   distances (l1, l2, smooth_l1) and ``batch_congruence``; a per-row shift before ``kl``, ``hard`` and ``pearson``; a
   positive per-row factor before ``cosine`` and ``pearson``; a per-sample one before ``batch_congruence``;
   ``min_max_normalize`` (a per-sample affine map) before ``pearson``. ``cosine`` after ``local_s1`` (which
   centres every row) is ``pearson``.
8. *Temperature x magnitude.* The loss is ``m * T^2 * d(f(s)/T, f(t)/T)``. Where ``d`` is positively homogeneous
   of degree k (``l2``: 2, ``l1``: 1, ``cosine``/``pearson``/``batch_congruence``: 0, scale-free up to their 1e-8
   clamp), this is ``m * T^(2-k) * d(f(s), f(t))``: the key writes the genome at ``T1`` with magnitude
   ``m * T^(2-k)``. ``kl``, ``hard`` and ``smooth_l1`` are not homogeneous, so T and m stay as they are, except
   in one case: ``smooth_l1`` (Huber, beta 1) is ``0.5 * l2`` wherever ``|s - t| <= 1``. That holds for every
   input when the chain's output lies in an interval of width w by construction and ``T >= w``: w = 1 for
   [0, 1] (after ``sigmoid``, ``softmax_*``, ``min_max_normalize``, an L2 normalisation of a non-negative
   tensor), w = 2 for [-1, 1] (``tanh``, any L2 normalisation), kept by ops that map those intervals into
   themselves (``pow2``, ``channel``, ``mm``, ...). Such a genome is keyed as the ``l2`` genome with half its
   magnitude.

The weighting reads only the logits at temperature 1 and is linear in the distances, so no rule touches it.
Randomised ops (``mask``, ``drop``) are opaque; dropping a deterministic neighbour never changes their draws.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from kdzero.ops import DISTANCES, INPUT_RANKS, TRANSFORMS

# Rules 1 and 2, by name rather than from the registry's flags: a flag set by analogy on a new op cannot leak in.
IDENTITY_AT_RANKS = {"no": frozenset({2, 3, 4}), "batch": frozenset({2})}
LOCAL_GRID = {"local_s1": 1, "local_s2": 2, "local_s4": 4}
IDEMPOTENT = frozenset({"relu", "abs", "batch", "channel", "local_s1", "local_s2", "local_s4", "norm_HW", "norm_C",
                        "norm_N"})
# Rule 3: ops whose output is >= 0 for every input, and ops that keep a non-negative input non-negative.
NONNEGATIVE_OUTPUT = frozenset({"exp", "sigmoid", "abs", "relu", "pow2", "pow4", "softmax_N", "softmax_C",
                                "softmax_HW", "min_max_normalize"})
SIGN_PRESERVING = frozenset({"mish", "leaky_relu", "tanh", "swish", "log", "sqrt", "drop", "mask", "no", "satt",
                             "catt", "natt", "bmm", "mm", "batch", "channel", "multi_scale_r1", "multi_scale_r2",
                             "multi_scale_r4", "norm_HW", "norm_C", "norm_N", "scale"})
ENTRYWISE_FUNCTIONS = frozenset({"exp", "mish", "leaky_relu", "relu", "tanh", "sigmoid", "swish", "abs", "pow2",
                                 "pow4", "log", "sqrt"})
# Rule 8's bounded outputs: ops whose output lies in [0, 1] for every input; ops whose output lies in [-1, 1] for
# every input and in [0, 1] for a non-negative one; ops that map [0, 1] into [0, 1] and [-1, 1] into [-1, 1].
UNIT_OUTPUT = frozenset({"sigmoid", "softmax_N", "softmax_C", "softmax_HW", "min_max_normalize"})
SYMMETRIC_OUTPUT = frozenset({"norm_HW", "norm_C", "norm_N", "tanh"})
BOUND_PRESERVING = frozenset({"relu", "abs", "leaky_relu", "mask", "channel", "batch", "multi_scale_r1",
                             "multi_scale_r2", "multi_scale_r4", "pow2", "pow4", "sqrt", "log", "tanh", "swish",
                             "mish", "bmm", "mm"})
IDENTITY_ON_NONNEGATIVE = frozenset({"relu", "abs", "leaky_relu"})
EVEN = frozenset({"pow2", "pow4"})
# Rule 4: op(x) = x + c with c constant along these axes (axis names resolved per rank by ``_axes``).
SHIFT_PRODUCERS = {"logsoftmax_C": "C", "logsoftmax_N": "N", "logsoftmax_HW": "HW", "local_s1": "HW"}
SHIFT_INVARIANT = {"softmax_C": "C", "softmax_N": "N", "softmax_HW": "HW", "logsoftmax_C": "C",
                   "logsoftmax_N": "N", "logsoftmax_HW": "HW", "min_max_normalize": "sample", "batchnorm": "NHW",
                   "local_s1": "HW", "local_s2": "HW", "local_s4": "HW"}
# Rule 5: op(x) = a * x with a > 0 constant along these axes; consumers divide by their own L2 norm along them.
SCALE_PRODUCERS = {"norm_C": "C", "norm_N": "N", "norm_HW": "HW", "scale": "sample"}
SCALE_INVARIANT = {"norm_C": "C", "norm_N": "N", "norm_HW": "HW"}
# Rule 6: ops that read a sample only as one flat vector and return a shape that does not depend on its layout.
FLATTENING = frozenset({"mm"})
# Rule 7: what each distance cannot see, as (shift axes, positive-scale axes, affine-per-sample, flatten).
ENTRYWISE = frozenset({"l1", "l2", "smooth_l1"})
ROW_SHIFT_FREE = frozenset({"kl", "hard", "pearson"})
ROW_SCALE_FREE = frozenset({"cosine", "pearson"})
# Rule 8: degree k of positive homogeneity, d(a s, a t) = a^k d(s, t) for a > 0.
HOMOGENEITY = {"l2": 2, "l1": 1, "cosine": 0, "pearson": 0, "batch_congruence": 0}


def _axes(name: str, rank: int) -> frozenset[int]:
    positions = frozenset(range(2, rank))
    return {"N": frozenset({0}), "C": frozenset({1}), "HW": positions, "sample": frozenset(range(1, rank)),
            "NHW": frozenset({0}) | positions}[name]


def _row_axes(rank: int) -> frozenset[int]:
    """The axes a row-wise distance compares along (see ``kdzero.ops.distances.as_rows``)."""
    return frozenset({1}) if rank == 2 else frozenset(range(2, rank))


def _covers(producer_axes: frozenset[int], consumer_axes: frozenset[int]) -> bool:
    """A term constant along ``producer_axes`` is invisible to an op that normalises along ``consumer_axes``."""
    return bool(consumer_axes) and consumer_axes <= producer_axes


def _output_rank(name: str, rank: int) -> int:
    op = TRANSFORMS[name]
    if op.out_shape is None or rank not in op.ranks:
        return rank
    probe = (2, 3) if rank == 2 else (2, 3) + (5,) * (rank - 2)
    return len(op.out_shape(probe))


def _absorbs(previous: str, previous_rank: int, name: str, rank: int) -> bool:
    """Whether ``name`` (applied at ``rank``) right after ``previous`` (applied at ``previous_rank``) equals
    ``name`` applied to ``previous``'s input."""
    if previous == "batch" and name in FLATTENING:
        return True
    if previous_rank != rank:
        return False
    if previous == name and name in IDEMPOTENT:
        return True
    if previous == "abs" and name in EVEN:
        return True
    if previous in SHIFT_PRODUCERS and name in SHIFT_INVARIANT:
        return _covers(_axes(SHIFT_PRODUCERS[previous], rank), _axes(SHIFT_INVARIANT[name], rank))
    if previous in SCALE_PRODUCERS and name in SCALE_INVARIANT:
        return _covers(_axes(SCALE_PRODUCERS[previous], rank), _axes(SCALE_INVARIANT[name], rank))
    return False


def _invisible_to_distance(name: str, rank: int, distance: str) -> bool:
    """Whether a trailing ``name`` (applied at ``rank``) cannot change ``distance``'s value."""
    if name == "batch":
        return distance in ENTRYWISE or distance == "batch_congruence"
    rows = _row_axes(rank)
    if name in SHIFT_PRODUCERS and distance in ROW_SHIFT_FREE:
        return _covers(_axes(SHIFT_PRODUCERS[name], rank), rows)
    if name in SCALE_PRODUCERS and distance in ROW_SCALE_FREE:
        return _covers(_axes(SCALE_PRODUCERS[name], rank), rows)
    if name in SCALE_PRODUCERS and distance == "batch_congruence":
        return _covers(_axes(SCALE_PRODUCERS[name], rank), _axes("sample", rank))
    return name == "min_max_normalize" and distance == "pearson"


def _ranks(input_name: str, transforms: Sequence[str]) -> list[tuple[str, int]]:
    """Every op of the chain with the rank of its input."""
    rank, found = INPUT_RANKS[input_name], []
    for name in transforms:
        found.append((name, rank))
        rank = _output_rank(name, rank)
    return found


def _defined(name: str, rank: int) -> bool:
    return rank in TRANSFORMS[name].ranks


def _batch_last(transforms: Sequence[str]) -> list[str]:
    """The chain with empty slots removed and every ``batch`` moved after the entry-wise functions that follow it
    (rule 6): flattening and then applying a function entry by entry equals the reverse order."""
    names = [name for name in transforms if name != "no"]
    moved = True
    while moved:
        moved = False
        for i in range(len(names) - 1):
            if names[i] == "batch" and names[i + 1] in ENTRYWISE_FUNCTIONS:
                names[i], names[i + 1] = names[i + 1], names[i]
                moved = True
    return names


def _width(name: str, nonnegative: bool, before: float) -> float:
    """Width of an interval that holds ``name``'s output (inf: unbounded), from its input's ``before``."""
    if name in UNIT_OUTPUT:
        return 1.0
    if name in SYMMETRIC_OUTPUT:
        return 1.0 if nonnegative else 2.0
    if name in BOUND_PRESERVING:
        return 1.0 if nonnegative and before <= 2.0 else before  # [-1, 1] meets [0, inf) in [0, 1]
    return math.inf


def canonical_chain(input_name: str, transforms: Sequence[str], distance: str
                    ) -> tuple[tuple[str, ...], str, float]:
    """The transforms that matter and the distance, after rules 1-7 of the module docstring, and the width of an
    interval that holds the chain's output by construction (inf when none is known). A distance's former name
    (``correlation``) is keyed as its current one (``batch_congruence``): the same loss."""
    distance = DISTANCES.canonical(distance)
    # Each kept op with the rank it is applied at, whether its output is non-negative by construction, and the
    # width of an interval that holds it.
    kept: list[tuple[str, int, bool, float]] = []
    rank = INPUT_RANKS[input_name]
    if any(not _defined(name, rank) for name, rank in _ranks(input_name, transforms)):
        return tuple(transforms), distance, math.inf  # invalid everywhere: keyed as written, never merged
    for name in _batch_last(transforms):
        nonnegative = kept[-1][2] if kept else False
        if rank in IDENTITY_AT_RANKS.get(name, ()) or (nonnegative and name in IDENTITY_ON_NONNEGATIVE):
            continue
        if kept and kept[-1][1] == rank and name in LOCAL_GRID and kept[-1][0] in LOCAL_GRID and \
                LOCAL_GRID[name] <= LOCAL_GRID[kept[-1][0]]:
            continue
        while kept and _absorbs(kept[-1][0], kept[-1][1], name, rank):
            rank = kept.pop()[1]
        before_nonnegative, before_width = (kept[-1][2], kept[-1][3]) if kept else (False, math.inf)
        output_nonnegative = name in NONNEGATIVE_OUTPUT or (before_nonnegative and name in SIGN_PRESERVING)
        kept.append((name, rank, output_nonnegative,
                     _width(name, before_nonnegative if name in SYMMETRIC_OUTPUT else output_nonnegative,
                            before_width)))
        rank = _output_rank(name, rank)
    while kept and _invisible_to_distance(kept[-1][0], kept[-1][1], distance):
        kept.pop()
    if distance == "cosine" and kept and kept[-1][0] == "local_s1":
        distance = "pearson"  # cosine of rows centred by local_s1 is pearson, which centres them itself
        while kept and _invisible_to_distance(kept[-1][0], kept[-1][1], distance):
            kept.pop()
    return tuple(entry[0] for entry in kept), distance, kept[-1][3] if kept else math.inf


def canonical_key(input_name: str, transforms: Sequence[str], distance: str, weight: str, temperature: float,
                  magnitude: float) -> str:
    """The key string: the canonical chain, distance and weight, and the temperature and magnitude after rule 8.
    Numbers are written with 12 significant digits so that equal products in different orders (0.1 x 16 and
    1.6) meet."""
    chain, distance, width = canonical_chain(input_name, transforms, distance)
    if distance == "smooth_l1" and temperature >= width:
        distance, magnitude = "l2", magnitude * 0.5
    if distance in HOMOGENEITY:
        magnitude, temperature = magnitude * float(temperature) ** (2 - HOMOGENEITY[distance]), 1
    return (f"{input_name}[{','.join(chain)}]|{distance}|{weight}|T{float(temperature):.12g}|"
            f"x{magnitude:.12g}")
