"""Does the DisWOT score rank students like their accuracy after KD? A correlation study with a measured yardstick.

Students are drawn at random (seeded, distinct) from ``kdzero.diswot.SearchSpace`` within the student-search
default budget (half the teacher's parameters and half its FLOPs), scored at initialisation against akamaster's
pretrained CIFAR-10 ResNet-56 (``resnet56a``) on one batch of training images, then each is distilled with KD
(T=4, CE + KD) from that teacher, once per training seed, on a class-balanced subset of CIFAR-10 JPEG and
evaluated on the whole 10,000-image test split.

What it reports (``experiments/results/diswot_correlation.{csv,md}``):
* every student's DisWOT score and terms, parameters, FLOPs, NASWOT score and top-1 per seed;
* the yardstick's noise: per-student seed-to-seed differences (sigma of one training), the binomial standard
  error of a top-1 on the test split, the spread of the students' mean top-1, and the seed-to-seed Spearman
  (how well one training ranks the students like another: the reliability r of one training); the noise
  ceiling of a predictor against the mean of S seeds is sqrt(r_S) with r_S = S r / (1 + (S - 1) r)
  (Spearman-Brown);
* Spearman and Kendall of each training-free predictor with the mean top-1, with 95 % bootstrap intervals
  (students resampled): DisWOT, its relation and semantic terms, parameters, FLOPs, and NASWOT (Mellor et al.
  2021: log-determinant of the Hamming kernel of the batch's binary activation codes, label-free).

Every finished (student, seed) is appended to the CSV at once; a rerun with the same options skips them, so a
killed study resumes. The default budget fits about 90 minutes of a 2-core machine:

    python experiments/diswot_correlation.py                              # 14 students x 2 seeds
    python experiments/diswot_correlation.py --students 6 --epochs 1 --train-subset 500 --out /tmp/dc   # smoke
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

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from kdzero.data import proxy_subset
from kdzero.diswot import (
    DEFAULT_BUDGET_RATIO,
    Budget,
    SearchSpace,
    StudentArch,
    arch_cost,
    format_count,
    model_cost,
    parse_limit,
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
PREDICTORS = (("DisWOT", "diswot"), ("relation", "relation"), ("semantic", "semantic"), ("parameters", "params"),
              ("FLOPs", "flops"), ("NASWOT", "naswot"))
FIELDS = ("student", "seed", "params", "flops", "diswot", "relation", "semantic", "naswot", "top1", "train_s")


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
def naswot_score(model: nn.Module, images: torch.Tensor) -> float:
    """NASWOT (Mellor et al., ICML 2021) at initialisation: ``log|K_H|`` where ``K_H[i, j]`` counts the units on
    which samples i and j have the same binary activation code. Codes are the signs of every BatchNorm output,
    the pre-activations of the ReLUs that follow them in kdzero's CIFAR ResNets and WRNs (their ReLUs are
    functional, so they cannot be hooked themselves). Label-free; higher is better."""
    codes: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        codes.append((output.flatten(1) > 0).double())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    model.train()  # batch statistics, as DisWOT scores students
    try:
        model(images)
    finally:
        for handle in handles:
            handle.remove()
    c = torch.cat(codes, dim=1)
    kernel = c @ c.t() + (1 - c) @ (1 - c).t()
    return float(torch.linalg.slogdet(kernel)[1])


@torch.no_grad()
def teacher_outputs(teacher: nn.Module, x: torch.Tensor, batch: int = 250) -> Features:
    """The teacher's Features for every normalised image of ``x`` (evaluation mode)."""
    teacher.eval()
    parts = [teacher(x[i:i + batch]) for i in range(0, len(x), batch)]
    return Features(*(torch.cat(p) for p in zip(*parts)))


def distil(student: nn.Module, x: torch.Tensor, y: torch.Tensor, cached: Features, epochs: int, seed: int) -> None:
    """CE + KD (T=4) training of ``student`` on resident normalised images with the teacher's outputs cached once
    (no augmentation, so the teacher runs once per image); batch order from ``seed``; SGD momentum 0.9, lr 0.05
    cosine, wd 5e-4, batch 64."""
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


def bootstrap_interval(x: np.ndarray, y: np.ndarray, statistic, reps: int = 2000, seed: int = 0
                       ) -> tuple[float, float]:
    """The 95 % percentile bootstrap interval of ``statistic(x, y)`` over resampled pairs (NaN draws dropped)."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(reps):
        pick = rng.integers(0, len(x), len(x))
        if len(np.unique(x[pick])) > 1 and len(np.unique(y[pick])) > 1:
            values.append(statistic(x[pick], y[pick]))
    low, high = np.nanpercentile(values, [2.5, 97.5])
    return float(low), float(high)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return float(stats.spearmanr(x, y)[0])


def kendall(x: np.ndarray, y: np.ndarray) -> float:
    return float(stats.kendalltau(x, y)[0])


def noise_summary(by_student: dict[str, dict[int, float]], seeds: list[int], test_size: int) -> dict[str, float]:
    """The yardstick's noise: sigma of one training (from seed differences), the binomial standard error of one
    top-1, the spread of the students' means, seed-to-seed Spearman r and the ceiling sqrt(r_S)."""
    both = [accs for accs in by_student.values() if all(s in accs for s in seeds)]
    means = np.array([np.mean([accs[s] for s in seeds]) for accs in both])
    out = {"students": len(both), "spread": float(np.std(means, ddof=1)) if len(both) > 1 else math.nan,
           "binomial_se": float(100 * math.sqrt(max(means.mean() / 100 * (1 - means.mean() / 100), 0) / test_size))
           if len(both) else math.nan}
    if len(seeds) >= 2 and len(both) > 2:
        first, second = (np.array([accs[s] for accs in both]) for s in seeds[:2])
        out["sigma"] = float(np.std(first - second, ddof=1) / math.sqrt(2))
        r = spearman(first, second)
        r_mean = len(seeds) * r / (1 + (len(seeds) - 1) * r) if r > -1 / (len(seeds) - 1) else math.nan
        out.update(seed_spearman=r, ceiling=math.sqrt(r_mean) if r_mean > 0 else 0.0)
    return out


def read_rows(path: Path) -> list[dict]:
    """The finished (student, seed) rows of an earlier run, numbers parsed."""
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != FIELDS:
            raise SystemExit(f"{path} holds other columns ({', '.join(reader.fieldnames or ())}): another version's "
                             "results; move it away or pass another --out")
        rows = list(reader)
    for row in rows:
        for key in FIELDS[1:]:
            row[key] = float(row[key]) if key not in ("seed", "params", "flops") else int(row[key])
    return rows


def main() -> None:
    """Sample, score, distil over seeds (resumably), measure the noise, correlate with intervals, write tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=14)
    parser.add_argument("--seeds", type=int, default=2, help="trainings per student (>= 2 to measure the noise)")
    parser.add_argument("--budget-params", default=f"{DEFAULT_BUDGET_RATIO}x")
    parser.add_argument("--budget-flops", default=f"{DEFAULT_BUDGET_RATIO}x")
    parser.add_argument("--train-subset", type=int, default=2000)
    parser.add_argument("--test-subset", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64, help="DisWOT / NASWOT batch size")
    parser.add_argument("--seed", type=int, default=0, help="seed of the students, the scoring batch and the subsets")
    parser.add_argument("--data", type=Path, default=Path("/tmp/cifar10jpeg"))
    parser.add_argument("--out", type=Path, default=REPO / "experiments" / "results")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: write the report from the (student, seed) trainings finished so far")
    args = parser.parse_args()
    torch.set_num_threads(1)
    began = time.perf_counter()

    folder = ensure_cifar10_jpeg(args.data)
    data = load_data(f"imagefolder:{folder}", normalize="imagenet", train_subset=args.train_subset)
    test = proxy_subset(data.test, per_class=args.test_subset // data.num_classes)
    teacher = create_model("resnet56a", num_classes=10)
    load_checkpoint(teacher, TEACHER_CKPT)
    teacher.eval()
    teacher_cost = model_cost(teacher, data.in_chans, data.image_size)
    budget = Budget(params=parse_limit(args.budget_params, teacher_cost.params, "--budget-params"),
                    flops=parse_limit(args.budget_flops, teacher_cost.flops, "--budget-flops"))
    x_train, y_train = data.train.normalize(data.train.images), data.train.labels
    cached = teacher_outputs(teacher, x_train)
    teacher_acc = evaluate(teacher, test)
    seeds = list(range(args.seeds))
    note = (f"CIFAR-10 JPEG, teacher resnet56a (akamaster, {teacher_acc:.2f}% on the test split used); "
            f"{args.students} random students within {budget.relative_to(teacher_cost)}; KD (T=4) for "
            f"{args.epochs} epochs on a {len(data.train)}-image class-balanced train subset, no augmentation, "
            f"batch 64, SGD lr 0.05 cosine, training seeds {seeds}; top-1 on {len(test)} test images; DisWOT and "
            f"NASWOT on one batch of {args.batch} training images at initialisation; 1 CPU thread")
    print(note, flush=True)

    generator = torch.Generator().manual_seed(args.seed)
    pick = torch.randperm(len(x_train), generator=generator)[:args.batch]
    reference = teacher_reference(teacher, x_train[pick], y_train[pick])
    archs = sample_students(SearchSpace(), budget, args.students, args.seed, data.image_size)

    args.out.mkdir(parents=True, exist_ok=True)
    csv_path = args.out / "diswot_correlation.csv"
    rows = read_rows(csv_path)
    done = {(r["student"], r["seed"]) for r in rows}
    if args.report_only:
        archs = [a for a in archs if all((str(a), seed) in done for seed in seeds)]
        write_report(rows, [str(a) for a in archs], seeds, len(test), note, args, time.perf_counter() - began)
        return
    with open(csv_path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        if not rows:
            writer.writeheader()
        for arch in archs:
            text = str(arch)
            for seed in seeds:
                if (text, seed) in done:
                    continue
                torch.manual_seed(args.seed * 1_000_003 + zlib.crc32(text.encode()))  # StudentSearch's seeding
                student = arch.build(data.num_classes, data.in_chans)
                score = score_student(reference, student, x_train[pick], y_train[pick])
                naswot = naswot_score(student, x_train[pick])
                cost = arch_cost(arch, data.num_classes, data.in_chans, data.image_size)
                start = time.perf_counter()
                torch.manual_seed(seed)
                distil(student, x_train, y_train, cached, args.epochs, seed)
                row = {"student": text, "seed": seed, "params": cost.params, "flops": cost.flops,
                       "diswot": score.score, "relation": score.relation, "semantic": score.semantic,
                       "naswot": naswot, "top1": evaluate(student, test),
                       "train_s": round(time.perf_counter() - start, 1)}
                writer.writerow(row)
                handle.flush()
                rows.append(row)
                print(f"{text:28s} seed {seed} params {format_count(cost.params):>7s} diswot {score.score:+.5f} "
                      f"top-1 {row['top1']:6.2f}% ({row['train_s']} s)", flush=True)
    write_report(rows, [str(a) for a in archs], seeds, len(test), note, args, time.perf_counter() - began)


def write_report(rows: list[dict], students: list[str], seeds: list[int], test_size: int, note: str,
                 args: argparse.Namespace, seconds: float) -> None:
    """The markdown table of students, the noise, and the predictors' correlations with intervals."""
    by_student: dict[str, dict[int, float]] = {}
    first: dict[str, dict] = {}
    for row in rows:
        if row["student"] in students:
            by_student.setdefault(row["student"], {})[row["seed"]] = row["top1"]
            first.setdefault(row["student"], row)
    complete = [s for s in students if all(seed in by_student.get(s, {}) for seed in seeds)]
    mean_top1 = np.array([np.mean([by_student[s][seed] for seed in seeds]) for s in complete])
    noise = noise_summary({s: by_student[s] for s in complete}, seeds, test_size)
    lines = ["# DisWOT score vs accuracy after KD, with a measured yardstick", "", note + ".", "",
             "| student | params | FLOPs | DisWOT | relation | semantic | NASWOT | "
             + " | ".join(f"top-1 seed {s}" for s in seeds) + " | mean |",
             "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * (len(seeds) + 1)]
    for s in sorted(complete, key=lambda s: -first[s]["diswot"]):
        r = first[s]
        accs = " | ".join(f"{by_student[s][seed]:.2f}" for seed in seeds)
        lines.append(f"| `{s}` | {format_count(r['params'])} | {format_count(r['flops'])} | {r['diswot']:.5f} | "
                     f"{r['relation']:.5f} | {r['semantic']:.5f} | {r['naswot']:.1f} | {accs} | "
                     f"{np.mean(list(by_student[s].values())):.2f} |")
    lines += ["", "The yardstick (mean top-1 over the seeds):", ""]
    lines += [f"- spread of the students' mean top-1 (std): {noise['spread']:.2f} points",
              f"- binomial standard error of one top-1 on {test_size} test images: {noise['binomial_se']:.2f} points"]
    if "sigma" in noise:
        lines += [f"- seed noise of one training (std of seed differences / sqrt 2): {noise['sigma']:.2f} points",
                  f"- seed-to-seed Spearman (reliability of one training): {noise['seed_spearman']:.3f}; noise "
                  f"ceiling of any predictor against the mean of {len(seeds)} seeds: {noise['ceiling']:.3f}"]
    lines += ["", f"| predictor (n={len(complete)}) | Spearman | 95 % interval | Kendall | 95 % interval |",
              "|---|---:|---:|---:|---:|"]
    for name, key in PREDICTORS:
        values = np.array([float(first[s][key]) for s in complete])
        rho, tau = spearman(values, mean_top1), kendall(values, mean_top1)
        (rl, rh), (tl, th) = (bootstrap_interval(values, mean_top1, f) for f in (spearman, kendall))
        lines.append(f"| {name} | {rho:.3f} | [{rl:.2f}, {rh:.2f}] | {tau:.3f} | [{tl:.2f}, {th:.2f}] |")
    command = (f"python experiments/diswot_correlation.py --students {args.students} --seeds {args.seeds} "
               f"--budget-params {args.budget_params} --budget-flops {args.budget_flops} "
               f"--train-subset {args.train_subset} --test-subset {args.test_subset} --epochs {args.epochs} "
               f"--batch {args.batch} --seed {args.seed}")
    lines += ["", f"This invocation {seconds:.0f} s (earlier finished trainings reused). Command: `{command}`"]
    (args.out / "diswot_correlation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
