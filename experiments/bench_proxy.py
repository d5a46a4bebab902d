"""Benchmark (issue: proxy throughput): candidates per hour of ``kdzero.proxy.evaluate`` against a straightforward
proxy loop, for the same genomes, the same images and the same number of steps, in one interleaved run.

Pair: resnet56a (akamaster CIFAR-10 weights) -> resnet20 on CIFAR-10 JPEG, batch 64.

* ``kdzero``: a ``ProxyTask`` (teacher outputs cached once for V views, resident uint8 tensors, tensor
  augmentation, loss rejection); each candidate is ``evaluate(task, [genome])``: training, then val CE,
  sharpness (one SAM step) and CKA gap.
* ``straightforward``: what one writes without the proxy machinery: a torch ``DataLoader`` (num_workers=0) over a
  ``torchvision.datasets.ImageFolder`` of the same JPEG files (PIL decoding every time) with RandomCrop(32, 4) +
  RandomHorizontalFlip + ToTensor + Normalize, the teacher's forward on every batch, the same CE + UnifiedLoss
  step, no rejection; then val CE and accuracy over the same validation images through a DataLoader.

The genomes: presets, a few random valid genomes of the shrunk space, and two known-bad genomes that the proxy
rejects on the first batch. kdzero's one-off costs (building the teacher cache, the CE-only reference run) are
reported separately and amortised over a search of ``--amortise`` candidates. Target (issue): >= 3x on CPU.

    python experiments/bench_proxy.py                            # ~5 minutes on 2 shared cores
    python experiments/bench_proxy.py --steps 150 --presets all   # the default proxy length, every preset
"""
from __future__ import annotations

import argparse
import math
import random
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_common import AKAMASTER, Report, ensure_cifar10_jpeg

from kdzero import PRESETS, Genome, UnifiedLoss
from kdzero.data import SPLIT_SEED, VAL_FRACTION, _holdout, proxy_subset
from kdzero.errors import GenomeError
from kdzero.genome import SHRUNK_SPACE
from kdzero.loss import check_runs
from kdzero.models import create_model, load_checkpoint
from kdzero.proxy import ProxyConfig, ProxyTask, evaluate
from kdzero.train import NORMALIZATIONS, load_data

BAD_GENOMES = ("feat[pow4,exp,pow4]|l2|no|T1|x100", "emb[exp,pow4,no]|l2|no|T1|x100")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=15, help="training steps per candidate (default 15)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--views", type=int, default=2, help="views in the teacher cache (default 2)")
    parser.add_argument("--train-per-class", type=int, default=50, help="proxy train images per class (default 50)")
    parser.add_argument("--val-per-class", type=int, default=50, help="validation images per class (default 50)")
    parser.add_argument("--presets", default="kd,at,sp", help="comma-separated preset names, or 'all'")
    parser.add_argument("--random", type=int, default=2, help="random valid genomes (default 2)")
    parser.add_argument("--amortise", type=int, default=40,
                        help="candidates a search shares kdzero's one-off costs over (default 40: 12 + 28)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--out", default=None, help="results file (default experiments/results/bench_proxy.txt)")
    return parser.parse_args()


def pick_genomes(args: argparse.Namespace, task: ProxyTask) -> list[Genome]:
    names = list(PRESETS) if args.presets == "all" else [n for n in args.presets.split(",") if n]
    genomes = [PRESETS[n] for n in names]
    rng = random.Random(0)
    found = 0
    while found < args.random:
        g = Genome.random(rng, SHRUNK_SPACE)
        try:
            check_runs(g, task.student_shapes, task.teacher_shapes)
        except GenomeError:
            continue
        if g.key not in {x.key for x in genomes}:
            genomes.append(g)
            found += 1
    return genomes + [Genome.parse(text) for text in BAD_GENOMES]


class Straightforward:
    """The cache-less, DataLoader-based proxy loop over the same files."""

    def __init__(self, root: Path, train_files: list[int], val_files: list[int], teacher, task: ProxyTask,
                 config: ProxyConfig) -> None:
        from torch.utils.data import DataLoader, Subset
        from torchvision import datasets, transforms

        mean, std = NORMALIZATIONS["imagenet"]
        normalize = transforms.Normalize(mean, std)
        train_tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                       transforms.ToTensor(), normalize])
        val_tf = transforms.Compose([transforms.ToTensor(), normalize])
        self.train_set = Subset(datasets.ImageFolder(str(root / "train"), transform=train_tf), train_files)
        self.val_set = Subset(datasets.ImageFolder(str(root / "train"), transform=val_tf), val_files)
        self.loader_cls = DataLoader
        self.teacher, self.task, self.config = teacher, task, config

    def candidate(self, genome: Genome, steps: int) -> dict:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        student = create_model("resnet20", num_classes=10).train()
        loss_fn = UnifiedLoss(genome, self.task.student_shapes, self.task.teacher_shapes,
                              generator=torch.Generator().manual_seed(cfg.seed))
        params = list(student.parameters()) + list(loss_fn.parameters())
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        loader = self.loader_cls(self.train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                                 num_workers=0, generator=torch.Generator().manual_seed(cfg.seed))
        done = 0
        while done < steps:
            for x, y in loader:
                with torch.no_grad():
                    t = self.teacher(x)
                out = student(x)
                total = F.cross_entropy(out.logit, y) + loss_fn(student=out, teacher=t, target=y)
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                done += 1
                if done == steps:
                    break
        student.eval()
        ce_sum, correct, count = 0.0, 0, 0
        with torch.no_grad():
            for x, y in self.loader_cls(self.val_set, batch_size=512, num_workers=0):
                logit = student(x).logit
                ce_sum += float(F.cross_entropy(logit, y, reduction="sum"))
                correct += int((logit.argmax(1) == y).sum())
                count += y.numel()
        return {"val_ce": ce_sum / count, "val_acc": correct / count}


def file_indices(root: Path, data, train_rows: torch.Tensor, val_rows: torch.Tensor) -> tuple[list[int], list[int]]:
    """Positions in ImageFolder(root/train) of kdzero's train-split rows and val-split rows (the val split is a
    seeded hold-out of train/; both readers list files in the same sorted order)."""
    from torchvision import datasets

    folder = datasets.ImageFolder(str(root / "train"))
    labels = torch.tensor(folder.targets)
    take = (torch.bincount(labels).double() * VAL_FRACTION).round().long()
    rest, held = _holdout(labels, take, SPLIT_SEED)
    train_files, val_files = rest[train_rows].tolist(), held[val_rows].tolist()
    assert torch.equal(labels[train_files], data.train.labels[train_rows]), "train file mapping is off"
    assert torch.equal(labels[val_files], data.val.labels), "val file mapping is off"
    return train_files, val_files


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    report = Report("proxy", out=args.out)
    root = ensure_cifar10_jpeg()
    data = load_data(f"imagefolder:{root}", normalize="imagenet")
    data = replace(data, val=proxy_subset(data.val, per_class=args.val_per_class, seed=0))
    teacher = create_model("resnet56a", num_classes=10)
    load_checkpoint(teacher, AKAMASTER / "resnet56-4bfd9763.th")
    teacher.eval().requires_grad_(False)
    val_n = len(data.val)
    config = ProxyConfig(steps=args.steps, batch_size=args.batch_size, num_views=args.views,
                         train_subset=args.train_per_class, cka_samples=min(512, val_n),
                         sharpness_samples=min(256, val_n), seed=0)

    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        task = ProxyTask(teacher, lambda: create_model("resnet20", num_classes=10), data, config, cache_dir,
                         log=lambda m: None)
        task_seconds = time.perf_counter() - start
    start = time.perf_counter()
    task.baseline()
    baseline_seconds = time.perf_counter() - start
    one_off = task_seconds + baseline_seconds

    subset = proxy_subset(data.train, per_class=args.train_per_class, seed=config.seed)
    train_files, val_files = file_indices(root, data, subset.indices, data.val.indices)
    start = time.perf_counter()
    plain = Straightforward(root, train_files, val_files, teacher, task, config)
    plain_setup = time.perf_counter() - start
    genomes = pick_genomes(args, task)

    report.add(f"pair: resnet56a (akamaster) -> resnet20 on CIFAR-10 JPEG; {len(train_files)} train images, "
               f"{val_n} val images, batch {args.batch_size}, {args.steps} steps per candidate, "
               f"{args.views} cached views")
    report.add(f"kdzero one-off: ProxyTask {task_seconds:.1f} s (teacher cache of {args.views} x "
               f"{len(train_files)} images, val features, teacher sharpness) + CE-only reference "
               f"{baseline_seconds:.1f} s; straightforward one-off: ImageFolder scan {plain_setup:.1f} s")
    plain.candidate(genomes[0], 2)  # warm-up of the DataLoader path (kdzero's was the CE-only run)
    report.add(f"{len(genomes)} genomes, each evaluated by both, order alternating per genome:")
    report.add(f"  {'genome':44s} {'kdzero s':>9s} {'plain s':>8s} {'ratio':>6s}  kdzero outcome")
    ours_t, plain_t = [], []
    for i, genome in enumerate(genomes):
        def run_ours(genome=genome):
            return evaluate(task, [genome])[0]

        def run_plain(genome=genome):
            return plain.candidate(genome, args.steps)

        timed = {}
        for name, fn in ((("ours", run_ours), ("plain", run_plain)) if i % 2 == 0 else
                         (("plain", run_plain), ("ours", run_ours))):
            start = time.perf_counter()
            value = fn()
            timed[name] = (time.perf_counter() - start, value)
        (o_s, result), (p_s, plain_result) = timed["ours"], timed["plain"]
        ours_t.append(o_s)
        plain_t.append(p_s)
        outcome = (f"rejected ({result.stage}, step {result.steps}: {result.reason[:40]})" if result.rejected
                   else f"score {result.score:.3f}, val CE {result.val_ce:.3f} (plain {plain_result['val_ce']:.3f})")
        report.add(f"  {genome!s:44s} {o_s:9.1f} {p_s:8.1f} {p_s / o_s:5.1f}x  {outcome}")

    n = len(genomes)
    ours_rate, plain_rate = 3600 * n / sum(ours_t), 3600 * n / sum(plain_t)
    amortised = 3600 / (sum(ours_t) / n + one_off / args.amortise)
    plain_amortised = 3600 / (sum(plain_t) / n + plain_setup / args.amortise)
    report.add("")
    report.add(f"kdzero proxy      : {ours_rate:7.1f} candidates/h  (median {statistics.median(ours_t):.1f} s per "
               f"candidate)")
    report.add(f"straightforward   : {plain_rate:7.1f} candidates/h  (median {statistics.median(plain_t):.1f} s per "
               f"candidate)")
    report.add(f"ratio             : {ours_rate / plain_rate:.2f}x  (target >= 3x: "
               f"{'met' if ours_rate / plain_rate >= 3 else 'MISSED'})")
    report.add(f"with one-off costs amortised over {args.amortise} candidates: {amortised:.1f} vs "
               f"{plain_amortised:.1f} candidates/h = {amortised / plain_amortised:.2f}x")
    good = [i for i, g in enumerate(genomes) if str(g) not in BAD_GENOMES]
    ratio_good = sum(plain_t[i] for i in good) / sum(ours_t[i] for i in good)
    report.add(f"valid genomes only (no rejection benefit): {ratio_good:.2f}x; median per-genome ratio "
               f"{statistics.median(p / o for p, o in zip(plain_t, ours_t)):.2f}x")
    report.add("note: kdzero's candidate also computes sharpness (a SAM step) and CKA gap; the plain loop only val "
               "CE/accuracy")
    if not math.isfinite(ours_rate):
        report.add("warning: no timings")
    report.finish()


if __name__ == "__main__":
    main()
