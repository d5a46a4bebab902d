"""How many sampled genomes pass validation yet give a loss that is constant in the student, or not finite
(issue 19).

Draws genomes uniformly from the FULL and SHRUNK spaces; each is validated on one of three student/teacher
shape pairs in turn (8x8 maps of widths 16 -> 32, 1x1 maps, 7x7 -> 4x4 maps). A validated genome is
*constant* when its float32 loss has zero gradient with respect to the student's input and takes the same
value on two different random student batches; it is *not finite* when its loss or gradient is inf/NaN on inputs
of randn x 1e-4 or randn x 1e4.

    python experiments/genome_soundness.py --genomes 3000      # ~2 minutes per space on 2 shared cores
"""
from __future__ import annotations

import argparse
import random

import torch

from kdzero import Features, Genome, UnifiedLoss
from kdzero.errors import GenomeError
from kdzero.genome import FULL_SPACE, SHRUNK_SPACE

PAIRS = (
    ({"feat": (16, 8, 8), "emb": (16,), "logit": (10,)}, {"feat": (32, 8, 8), "emb": (32,), "logit": (10,)}),
    ({"feat": (16, 1, 1), "emb": (16,), "logit": (10,)}, {"feat": (16, 1, 1), "emb": (16,), "logit": (10,)}),
    ({"feat": (8, 7, 7), "emb": (8,), "logit": (5,)}, {"feat": (8, 4, 4), "emb": (8,), "logit": (5,)}),
)
BATCH = 6


def features(shapes: dict, seed: int, scale: float = 1.0) -> Features:
    gen = torch.Generator().manual_seed(seed)
    return Features(*(torch.randn(BATCH, *shapes[name], generator=gen) * scale for name in Features._fields))


def loss_and_gradient(genome: Genome, student_shapes: dict, teacher_shapes: dict, student_seed: int,
                      scale: float = 1.0) -> tuple[float, torch.Tensor]:
    """The loss on one random batch (teacher fixed, masks from a fixed generator) and its gradient with respect
    to the student's knowledge input."""
    loss_fn = UnifiedLoss(genome, student_shapes, teacher_shapes, generator=torch.Generator().manual_seed(3))
    student = features(student_shapes, student_seed, scale)
    used = student.select(genome.input).requires_grad_(True)
    labels = torch.arange(BATCH) % teacher_shapes["logit"][0]
    value = loss_fn(student=student, teacher=features(teacher_shapes, 99, scale), target=labels)
    (gradient,) = torch.autograd.grad(value, used, allow_unused=True)
    return value.item(), torch.zeros_like(used) if gradient is None else gradient


def is_constant(genome: Genome, student_shapes: dict, teacher_shapes: dict) -> bool:
    first, gradient = loss_and_gradient(genome, student_shapes, teacher_shapes, 1)
    second, _ = loss_and_gradient(genome, student_shapes, teacher_shapes, 2)
    return first == second and gradient.abs().max().item() == 0


def is_finite(genome: Genome, student_shapes: dict, teacher_shapes: dict, scale: float) -> bool:
    value, gradient = loss_and_gradient(genome, student_shapes, teacher_shapes, 1, scale)
    return bool(torch.isfinite(torch.tensor(value)) and torch.isfinite(gradient).all())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genomes", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for label, space in (("FULL", FULL_SPACE), ("SHRUNK", SHRUNK_SPACE)):
        rng = random.Random(args.seed)
        valid = constant = not_finite = 0
        for index in range(args.genomes):
            genome = Genome.random(rng, space)
            student_shapes, teacher_shapes = PAIRS[index % len(PAIRS)]
            try:
                genome.validate(student_shapes, teacher_shapes)
            except GenomeError:
                continue
            valid += 1
            if is_constant(genome, student_shapes, teacher_shapes):
                constant += 1
                print(f"  constant: {genome} on {student_shapes['feat']} -> {teacher_shapes['feat']}")
            if not all(is_finite(genome, student_shapes, teacher_shapes, scale) for scale in (1e-4, 1e4)):
                not_finite += 1
                print(f"  not finite: {genome} on {student_shapes['feat']} -> {teacher_shapes['feat']}")
        print(f"{label}: {args.genomes} sampled, {valid} validated, {constant} constant, {not_finite} not finite")


if __name__ == "__main__":
    main()
