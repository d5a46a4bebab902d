"""How complete is the canonical genome key? Samples genomes per search space, evaluates each on fixed random
inputs and compares the loss values with the keys.

    OMP_NUM_THREADS=1 python experiments/key_redundancy.py --samples 3000 --neighbourhoods 100

Two input sets fingerprint a loss: standard normal features, and features 4 x randn + 1 (wide and shifted, so
that clamps, signs and the quadratic zone of smooth_l1 show and near-coincidences of nearly equal ops part).
Two losses are equal when both values agree to 1e-5 relative; a key is unsound when two of its genomes differ by
more than 1e-4 relative (float32 rounding alone reaches 1e-5 on tiny KL values). Genomes whose loss is
constant (the same value on both input sets: degenerate, validation's business, not the key's) and invalid or
non-finite ones are skipped. Per space it prints:

* in the sample (``--samples`` genomes): distinct keys, distinct losses, and the redundancy fraction: the share of
  genomes whose loss equals another sampled genome's under a different key; unsound keys (one key, two losses);
* around ``--neighbourhoods`` genomes: the share that has a neighbour one gene away, or another (T, m) pair,
  with the same loss under a different key: a much harsher probe of completeness, which also counts equalities
  that hold only on these inputs, and the most common such pairs.
"""
from __future__ import annotations

import argparse
import math
import random
from collections import Counter
from dataclasses import replace

import torch

from kdzero.errors import GenomeError
from kdzero.features import Features
from kdzero.genome import FULL_SPACE, GENES, SHRUNK_SPACE, Genome
from kdzero.loss import UnifiedLoss

SHAPES = {"feat": (5, 4, 4), "emb": (7,), "logit": (10,)}
BATCH = 6
TOLERANCE = 1e-5  # two losses this close count as one (redundancy)
SOUND_RTOL = 1e-4  # a key is unsound when its genomes differ by more (float32 rounding of tiny KLs reaches 1e-5)


def probe_inputs(seed: int, spread: float = 1.0, shift: float = 0.0) -> tuple[Features, Features, torch.Tensor]:
    """Student features, teacher features (same shapes, so no connector) and labels from ``seed``."""
    gen = torch.Generator().manual_seed(seed)

    def features() -> Features:
        return Features(*(spread * torch.randn(BATCH, *SHAPES[name], generator=gen) + shift
                          for name in Features._fields))

    return features(), features(), torch.randint(0, SHAPES["logit"][0], (BATCH,), generator=gen)


def loss_value(genome: Genome, inputs: tuple[Features, Features, torch.Tensor], seed: int = 0) -> float:
    """The genome's loss on ``inputs``, its random ops (mask, drop) drawn from a generator seeded with ``seed``."""
    student, teacher, target = inputs
    loss_fn = UnifiedLoss(genome, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return float(loss_fn(student=student, teacher=teacher, target=target))


def close(a: float, b: float, rtol: float = TOLERANCE) -> bool:
    return abs(a - b) <= rtol * max(abs(a), abs(b)) + 1e-12


class Evaluator:
    """Loss values per genome text and input set, cached (neighbourhoods overlap)."""

    def __init__(self) -> None:
        self.inputs = (probe_inputs(1), probe_inputs(2, spread=4.0, shift=1.0))
        self.cache: dict[tuple[str, int], float | None] = {}

    def value(self, genome: Genome, which: int = 0) -> float | None:
        """The loss on input set ``which``, or None when the genome is invalid here or not finite."""
        slot = (str(genome), which)
        if slot not in self.cache:
            try:
                genome.validate(SHAPES, SHAPES)
                value = loss_value(genome, self.inputs[which])
            except GenomeError:
                value = None
            self.cache[slot] = value if value is not None and math.isfinite(value) else None
        return self.cache[slot]

    def same_loss(self, first: Genome, second: Genome, rtol: float = TOLERANCE) -> bool:
        values = [(self.value(first, w), self.value(second, w)) for w in (0, 1)]
        return all(a is not None and b is not None and close(a, b, rtol) for a, b in values)


def neighbours(genome: Genome, space) -> list[Genome]:
    """Every genome one gene away (temperature and magnitude excluded: see ``temperature_twins``)."""
    found = []
    for gene in GENES[:6]:
        for value in space.choices(gene):
            if value != genome.gene(gene):
                found.append(genome.with_gene(gene, value))
    return found


def temperature_twins(genome: Genome, space, evaluator: Evaluator) -> list[Genome]:
    """The (T, m) variants of ``genome`` with its loss: one evaluation per temperature, since the loss is linear
    in the magnitude."""
    base = evaluator.value(genome)
    twins = []
    for temperature in space.temperatures:
        unit = evaluator.value(replace(genome, temperature=temperature, magnitude=1.0))
        if unit is None or base is None:
            continue
        twins += [replace(genome, temperature=temperature, magnitude=m) for m in space.magnitudes
                  if (temperature, m) != (genome.temperature, genome.magnitude) and close(m * unit, base)]
    return [twin for twin in twins if evaluator.same_loss(genome, twin)]


def in_sample(space_name: str, samples: int, seed: int, examples: int) -> None:
    space = {"full": FULL_SPACE, "shrunk": SHRUNK_SPACE}[space_name]
    rng = random.Random(seed)
    evaluator = Evaluator()
    by_key: dict[str, list[Genome]] = {}
    skipped = constant = 0
    for _ in range(samples):
        genome = Genome.random(rng, space)
        values = (evaluator.value(genome, 0), evaluator.value(genome, 1))
        if None in values:
            skipped += 1
        elif close(*values):
            constant += 1
        else:
            by_key.setdefault(genome.key, []).append(genome)
    unsound = [group for group in by_key.values()
               if any(not evaluator.same_loss(group[0], other, SOUND_RTOL) for other in group[1:])]
    # Losses are grouped by their first input set's value, then checked on the second.
    ordered = sorted(by_key.values(), key=lambda group: evaluator.value(group[0]))
    classes: list[list[list[Genome]]] = []
    for group in ordered:
        if classes and evaluator.same_loss(classes[-1][0][0], group[0]):
            classes[-1].append(group)
        else:
            classes.append([group])
    counted = sum(len(group) for group in by_key.values())
    redundant = [cls for cls in classes if len(cls) > 1]
    share = sum(len(group) for cls in redundant for group in cls)
    print(f"{space_name}, in a sample of {samples}: {skipped} invalid or non-finite, {constant} constant, "
          f"{counted} counted")
    print(f"  distinct keys {len(by_key)}, distinct losses {len(classes)}; redundancy fraction (genomes whose loss "
          f"another sampled genome has under a different key) {share}/{counted} = {share / max(counted, 1):.1%}")
    print(f"  unsound keys (one key, different losses): {len(unsound)}")
    for group in unsound[:examples]:
        print(f"    UNSOUND key {group[0].key}: {', '.join(map(str, group[:3]))}")
    for cls in redundant[:examples]:
        print(f"    e.g. {cls[0][0]} == {cls[1][0]}")


ATTENTION = frozenset({"satt", "catt", "natt"})


def _differs_by_attention(genome: Genome, twin: Genome) -> bool:
    """Whether ``twin`` is ``genome`` with one slot changed to or from an attention op."""
    changed = [(a, b) for a, b in zip(genome.transforms, twin.transforms) if a != b]
    same_rest = replace(genome, transforms=twin.transforms) == twin
    return same_rest and len(changed) == 1 and bool(ATTENTION & set(changed[0]))


def neighbourhood_probe(space_name: str, samples: int, seed: int, examples: int) -> None:
    space = {"full": FULL_SPACE, "shrunk": SHRUNK_SPACE}[space_name]
    rng = random.Random(seed)
    evaluator = Evaluator()
    counted = constant = redundant = attention_only = 0
    keys: set[str] = set()
    unsound: list[tuple[Genome, Genome]] = []
    shapes: Counter = Counter()
    while counted + constant < samples:
        genome = Genome.random(rng, space)
        values = (evaluator.value(genome, 0), evaluator.value(genome, 1))
        if None in values:
            continue
        if close(*values):
            constant += 1
            continue
        counted += 1
        keys.add(genome.key)
        twins = temperature_twins(genome, space, evaluator)
        for other in neighbours(genome, space):
            if other.key == genome.key:
                if not evaluator.same_loss(genome, other, SOUND_RTOL) and evaluator.value(other) is not None:
                    unsound.append((genome, other))
            elif evaluator.value(other) is not None and close(evaluator.value(other), values[0]) and \
                    evaluator.same_loss(genome, other):
                twins.append(other)
        twins = [t for t in twins if t.key != genome.key]
        if twins:
            redundant += 1
            attention_only += all(_differs_by_attention(genome, twin) for twin in twins)
            shapes[f"{genome} == {twins[0]}"] += 1
    print(f"{space_name}, neighbourhoods of {counted} genomes ({constant} constant ones skipped)")
    print(f"  genomes that share their loss with a one-gene or (T, m) neighbour under a "
          f"different key): {redundant}/{counted} = {redundant / max(counted, 1):.1%}")
    print(f"  of which every such neighbour differs only by an attention op (satt/catt/natt: a positive weight "
          f"in real arithmetic, but one that underflows to 0 in float, so the key keeps it): {attention_only}; "
          f"without them {redundant - attention_only}/{counted} = {(redundant - attention_only) / max(counted, 1):.1%}")
    print(f"  unsound keys (same key, different loss) among the neighbours: {len(unsound)}")
    for first, second in unsound[:examples]:
        print(f"    UNSOUND {first} vs {second} (key {first.key})")
    for text, _ in shapes.most_common(examples):
        print(f"    e.g. {text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=3000, help="genomes sampled per space")
    parser.add_argument("--neighbourhoods", type=int, default=100,
                        help="genomes per space whose one-gene and (T, m) neighbours are all evaluated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--examples", type=int, default=8, help="redundant pairs shown per space")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for space_name in ("shrunk", "full"):
        in_sample(space_name, args.samples, args.seed, args.examples)
    for space_name in ("shrunk", "full"):
        neighbourhood_probe(space_name, args.neighbourhoods, args.seed, args.examples)


if __name__ == "__main__":
    main()
