"""Does the DisWOT score rank students like their accuracy after KD? A reduced-budget correlation study.

Students are drawn at random (seeded, distinct) from ``kdzero.diswot.SearchSpace`` under a parameter and FLOPs budget,
scored by DisWOT against akamaster's pretrained CIFAR-10 ResNet-56 (``resnet56a``) on one batch of training
images, then each is distilled with KD (T=4, CE + KD) from that teacher for a few epochs on a class-balanced
subset of CIFAR-10 JPEG and evaluated on a class-balanced test subset. Printed and written to
``experiments/results/diswot_correlation.{csv,md}``: every student's score, parameters and top-1, and the
Spearman and Kendall rank correlations of accuracy with the DisWOT score (and, as a baseline, with the
parameter count).

The budget is small on purpose (one CPU thread; 24 min wall on a busy 2-core machine): no augmentation, so the
teacher's outputs are computed once per training image and cached; SGD momentum 0.9, lr 0.05 with cosine decay,
weight decay 5e-4, batch 64. Accuracies after so short a schedule are noisy, and the correlations are only indicative.

    python experiments/diswot_correlation.py                   # defaults below
    python experiments/diswot_correlation.py --students 8 --epochs 3
"""
from __future__ import annotations

import argparse
import csv
import math
import random
import subprocess
import time
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from scipy import stats

from kdzero.data import proxy_subset
from kdzero.diswot import (
    Budget,
    SearchSpace,
    StudentArch,
    arch_cost,
    format_count,
    parse_count,
    score_student,
    teacher_reference,
)
from kdzero.features import Features
from kdzero.methods import create_method
from kdzero.models import create_model, load_checkpoint
from kdzero.train import evaluate, load_data

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TEACHER_CKPT = SHARED / "teachers" / "akamaster-cifar10" / "resnet56-4bfd9763.th"
ARCHIVE = SHARED / "cifar10-jpeg.tar.gz"


def ensure_cifar10_jpeg(folder: Path) -> Path:
    """Extract the shared CIFAR-10 JPEG archive into ``folder`` (train/<class>/, test/<class>/) unless present."""
    if not (folder / "train").is_dir() or not (folder / "test").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "xzf", str(ARCHIVE), "-C", str(folder)], check=True)
    return folder


def sample_students(space: SearchSpace, budget: Budget, count: int, seed: int, image_size: tuple[int, int]
                    ) -> list[StudentArch]:
    """``count`` distinct random architectures of ``space`` within ``budget`` (seeded)."""
    rng = random.Random(seed)
    found: list[StudentArch] = []
    while len(found) < count:
        arch = space.random(rng)
        if arch not in found and budget.fits(arch_cost(arch, 10, 3, image_size)):
            found.append(arch)
    return found


@torch.no_grad()
def teacher_outputs(teacher: torch.nn.Module, x: torch.Tensor, batch: int = 250) -> Features:
    """The teacher's Features for every normalised image of ``x`` (evaluation mode)."""
    teacher.eval()
    parts = [teacher(x[i:i + batch]) for i in range(0, len(x), batch)]
    return Features(*(torch.cat(p) for p in zip(*parts)))


def distil(student: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cached: Features, epochs: int,
           seed: int) -> None:
    """CE + KD (T=4) training of ``student`` on resident normalised images with cached teacher outputs."""
    kd = create_method("kd")
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    steps = epochs * math.ceil(len(x) / 64)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    student.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            idx = order[start:start + 64]
            if len(idx) < 2:
                continue
            out = student(x[idx])
            loss = F.cross_entropy(out.logit, y[idx]) + kd(student=out, teacher=cached.index(idx), target=y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()


def main() -> None:
    """Sample, score, distil, correlate, write the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=10)
    parser.add_argument("--budget-params", default="0.3M")
    parser.add_argument("--budget-flops", default="60M")
    parser.add_argument("--train-subset", type=int, default=2000)
    parser.add_argument("--test-subset", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64, help="DisWOT batch size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=Path("/tmp/cifar10jpeg"))
    parser.add_argument("--out", type=Path, default=REPO / "experiments" / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    began = time.perf_counter()

    folder = ensure_cifar10_jpeg(args.data)
    data = load_data(f"imagefolder:{folder}", normalize="imagenet", train_subset=args.train_subset)
    test = proxy_subset(data.test, per_class=args.test_subset // data.num_classes)
    budget = Budget(params=parse_count(args.budget_params), flops=parse_count(args.budget_flops))
    teacher = create_model("resnet56a", num_classes=10)
    load_checkpoint(teacher, TEACHER_CKPT)
    teacher.eval()
    x_train, y_train = data.train.normalize(data.train.images), data.train.labels
    cached = teacher_outputs(teacher, x_train)
    teacher_acc = evaluate(teacher, test)
    budget_note = (f"CIFAR-10 JPEG, teacher resnet56a (akamaster, {teacher_acc:.2f}% on the test subset); "
                   f"{args.students} random students within {budget}; KD (T=4) "
                   f"for {args.epochs} epochs on a {len(data.train)}-image class-balanced train subset, no "
                   f"augmentation, batch 64, SGD lr 0.05 cosine; top-1 on a {len(test)}-image test subset; DisWOT "
                   f"on one batch of {args.batch} training images; 1 CPU thread")
    print(budget_note, flush=True)

    generator = torch.Generator().manual_seed(args.seed)
    pick = torch.randperm(len(x_train), generator=generator)[:args.batch]
    reference = teacher_reference(teacher, x_train[pick], y_train[pick])
    archs = sample_students(SearchSpace(), budget, args.students, args.seed, data.image_size)

    rows = []
    for arch in archs:
        text = str(arch)
        torch.manual_seed(args.seed * 1_000_003 + zlib.crc32(text.encode()))  # StudentSearch's seeding
        student = arch.build(data.num_classes, data.in_chans)
        score = score_student(reference, student, x_train[pick], y_train[pick])
        cost = arch_cost(arch, data.num_classes, data.in_chans, data.image_size)
        start = time.perf_counter()
        distil(student, x_train, y_train, cached, args.epochs, args.seed)
        acc = evaluate(student, test)
        rows.append({"student": text, "params": cost.params, "flops": cost.flops, "diswot": score.score,
                     "relation": score.relation, "semantic": score.semantic, "top1": acc,
                     "train_s": round(time.perf_counter() - start, 1)})
        print(f"{text:28s} params {format_count(cost.params):>7s} diswot {score.score:+.5f} top-1 {acc:6.2f}% "
              f"({rows[-1]['train_s']} s)", flush=True)

    accs = [r["top1"] for r in rows]
    corr = {name: (stats.spearmanr([r[key] for r in rows], accs)[0], stats.kendalltau([r[key] for r in rows], accs)[0])
            for name, key in (("DisWOT score", "diswot"), ("relation", "relation"), ("semantic", "semantic"),
                              ("parameters", "params"))}
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "diswot_correlation.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["# DisWOT score vs accuracy after short KD", "", budget_note + ".", "",
             "| student | params | FLOPs | DisWOT | relation | semantic | top-1 % |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: -r["diswot"]):
        lines.append(f"| `{r['student']}` | {format_count(r['params'])} | {format_count(r['flops'])} | "
                     f"{r['diswot']:.5f} | {r['relation']:.5f} | {r['semantic']:.5f} | {r['top1']:.2f} |")
    lines += ["", "| predictor | Spearman | Kendall |", "|---|---:|---:|"]
    lines += [f"| {name} | {rho:.3f} | {tau:.3f} |" for name, (rho, tau) in corr.items()]
    lines += ["", f"Total {time.perf_counter() - began:.0f} s. Command: `python experiments/diswot_correlation.py "
              f"--students {args.students} --budget-params {args.budget_params} --budget-flops {args.budget_flops} "
              f"--train-subset {args.train_subset} "
              f"--test-subset {args.test_subset} --epochs {args.epochs} --batch {args.batch} --seed {args.seed}`"]
    (args.out / "diswot_correlation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
