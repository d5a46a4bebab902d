"""Benchmark (issue: proxy throughput): candidates per hour of ``kdzero.proxy.evaluate`` against a straightforward
proxy loop, for the same genomes, the same images and the same number of steps, in one interleaved run.

Pair: resnet56a (akamaster CIFAR-10 weights) -> resnet20 on CIFAR-10 JPEG, batch 64.

* ``kdzero fp32``: a ``ProxyTask`` with the default ``ProxyConfig`` (teacher outputs cached once for V views,
  resident uint8 tensors, tensor augmentation, channels_last students, loss rejection); each candidate is
  ``evaluate(task, [genome])``: training, then val CE, sharpness (one SAM step) and CKA gap.
* ``kdzero bf16``: the same with ``bf16=True`` (``--bf16`` on the CLI): the student's forward under bf16 autocast,
  losses in fp32. On a CPU with AMX this is where most of the speed is (experiments/bench_precision.py).
* ``kdzero ... grouped``: the same tasks evaluating the genomes the way a CPU search does, ``CPU_GROUP`` at a
  time (``evaluate(task, genomes[i:i + CPU_GROUP])``): the students step one after another over one shared batch
  stream, so a batch and its cached teacher outputs are fetched once per group. Results are bit-identical to
  one-at-a-time evaluation (the report checks it).
* ``plain``: what one writes without the proxy machinery: a torch ``DataLoader`` (num_workers=0) over a
  ``torchvision.datasets.ImageFolder`` of the same JPEG files (PIL decoding every time) with RandomCrop(32, 4) +
  RandomHorizontalFlip + ToTensor + Normalize, the teacher's forward on every batch, the same CE + UnifiedLoss
  step in fp32, no rejection; then the same metrics: one validation pass running student and teacher (val CE,
  accuracy, CKA gap) and the student's sharpness (the teacher's is computed once).

The genomes: presets, a few random valid genomes of the shrunk space, and two known-bad genomes that the proxy
rejects on the first batch (the report also gives the ratio over the valid genomes alone). One-off costs
(teacher cache and CE-only reference for kdzero; the folder scan and teacher sharpness for plain) are reported
separately and amortised over a search of ``--amortise`` candidates. Target (issue): >= 3x on CPU.

    python experiments/bench_proxy.py                    # ~20 minutes on one quiet core
    python experiments/bench_proxy.py --steps 30 --random 1   # a quick look
    python experiments/bench_proxy.py --device cuda --group 8  # on a GPU: groups are stacked (vmap) there
"""
from __future__ import annotations

import argparse
import copy
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
from kdzero.proxy import CPU_GROUP, ProxyConfig, ProxyTask, evaluate
from kdzero.scoring import linear_cka, sharpness
from kdzero.train import NORMALIZATIONS, load_data

BAD_GENOMES = ("feat[pow4,exp,pow4]|l2|no|T1|x100", "emb[exp,pow4,no]|l2|no|T1|x100")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=120,
                        help="training steps per candidate (default 120, the search's default proxy)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--views", type=int, default=2, help="views in the teacher cache (default 2)")
    parser.add_argument("--train-per-class", type=int, default=50, help="proxy train images per class (default 50)")
    parser.add_argument("--val-per-class", type=int, default=50, help="validation images per class (default 50)")
    parser.add_argument("--presets", default="kd,at,sp", help="comma-separated preset names, or 'all'")
    parser.add_argument("--random", type=int, default=2, help="random valid genomes (default 2)")
    parser.add_argument("--amortise", type=int, default=40,
                        help="candidates a search shares kdzero's one-off costs over (default 40: 12 + 28)")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16-autocast kdzero variant")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda: every variant runs there")
    parser.add_argument("--group", type=int, default=CPU_GROUP,
                        help=f"candidates per group in the grouped variants (default {CPU_GROUP}, the CPU search's)")
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
    """The cache-less, DataLoader-based proxy loop over the same files, scoring what kdzero scores.

    Per candidate: train with the teacher's forward on every batch, then one pass over the validation loader
    running student and teacher (val CE and accuracy, both models' features for the CKA gap), and the student's
    sharpness (``kdzero.scoring.sharpness``, the same formula). The teacher's sharpness is computed once, up front.
    """

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
        self.teacher, self.task, self.config = teacher.to(config.device), task, config
        self.device = torch.device(config.device)
        x, y = self.val_tensors(config.sharpness_samples)
        self.teacher_sharpness = sharpness(teacher, x, y, rho=config.rho)

    def val_tensors(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = next(iter(self.loader_cls(self.val_set, batch_size=n, num_workers=0)))
        return x.to(self.device), y.to(self.device)

    def candidate(self, genome: Genome, steps: int) -> dict:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        student = create_model("resnet20", num_classes=10).to(self.device).train()
        loss_fn = UnifiedLoss(genome, self.task.student_shapes, self.task.teacher_shapes,
                              generator=torch.Generator().manual_seed(cfg.seed)).to(self.device)
        params = list(student.parameters()) + list(loss_fn.parameters())
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        loader = self.loader_cls(self.train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                                 num_workers=0, generator=torch.Generator().manual_seed(cfg.seed))
        done = 0
        while done < steps:
            for x, y in loader:
                x, y = x.to(self.device), y.to(self.device)
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
        ce_sum, correct, count, s_feats, t_feats = 0.0, 0, 0, [], []
        with torch.no_grad():
            for x, y in self.loader_cls(self.val_set, batch_size=500, num_workers=0):
                x, y = x.to(self.device), y.to(self.device)
                out = student(x)
                t_feats.append(self.teacher(x).feat)
                s_feats.append(out.feat)
                ce_sum += float(F.cross_entropy(out.logit, y, reduction="sum"))
                correct += int((out.logit.argmax(1) == y).sum())
                count += y.numel()
        n = cfg.cka_samples
        cka_gap = 1.0 - linear_cka(torch.cat(s_feats)[:n], torch.cat(t_feats)[:n])
        s_gap = abs(sharpness(student, *self.val_tensors(cfg.sharpness_samples), rho=cfg.rho)
                    - self.teacher_sharpness)
        val_ce = ce_sum / count
        return {"val_ce": val_ce, "val_acc": correct / count, "s_gap": s_gap, "cka_gap": cka_gap,
                "score": cfg.weights.combine(val_ce, s_gap, cka_gap)}


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


def build_task(teacher, data, config: ProxyConfig, cache_dir: str) -> tuple[ProxyTask, float]:
    """A ProxyTask and its CE-only reference run; the seconds both took (kdzero's one-off cost)."""
    start = time.perf_counter()
    task = ProxyTask(teacher, lambda: create_model("resnet20", num_classes=10), data, config, cache_dir,
                     log=lambda m: None)
    task.baseline()
    return task, time.perf_counter() - start


def without_time(result) -> dict:
    """A ProxyResult's fields other than its wall time, for comparing two evaluations of one genome."""
    return {k: v for k, v in result.to_dict().items() if k != "seconds"}


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
    plain_teacher = copy.deepcopy(teacher)  # kdzero's task converts its teacher to channels_last
    val_n = len(data.val)
    config = ProxyConfig(steps=args.steps, batch_size=args.batch_size, num_views=args.views,
                         train_subset=args.train_per_class, cka_samples=min(512, val_n),
                         sharpness_samples=min(256, val_n), seed=0, device=args.device)
    variants = {"kdzero fp32": config}
    if not args.no_bf16:
        variants["kdzero bf16"] = replace(config, bf16=True)
    tasks, one_off = {}, {}
    with tempfile.TemporaryDirectory() as cache_dir:
        for name, cfg in variants.items():  # the second task loads the first one's teacher cache
            tasks[name], one_off[name] = build_task(teacher, data, cfg, cache_dir)
    task = tasks["kdzero fp32"]

    subset = proxy_subset(data.train, per_class=args.train_per_class, seed=config.seed)
    train_files, val_files = file_indices(root, data, subset.indices, data.val.indices)
    start = time.perf_counter()
    plain = Straightforward(root, train_files, val_files, plain_teacher, task, config)
    one_off["plain"] = time.perf_counter() - start
    genomes = pick_genomes(args, task)
    names = ["plain", *variants]

    report.add(f"pair: resnet56a (akamaster) -> resnet20 on CIFAR-10 JPEG; {len(train_files)} train images, "
               f"{val_n} val images, batch {args.batch_size}, {args.steps} steps per candidate, "
               f"{args.views} cached views, on {args.device}; every candidate scored (val CE, S-gap, CKA gap)")
    report.add("one-off costs: " + "; ".join(
        f"{name} {seconds:.1f} s" for name, seconds in one_off.items()) +
        "  (kdzero: teacher cache, val features, teacher sharpness, CE-only reference run; the second kdzero task "
        "reuses the first's cache. plain: ImageFolder scan, teacher sharpness)")
    plain.candidate(genomes[0], 2)  # warm-up of the DataLoader path (kdzero's was the CE-only run)
    report.add(f"{len(genomes)} genomes, each evaluated by all, the order rotating per genome (seconds):")
    report.add(f"  {'genome':44s} " + " ".join(f"{n:>12s}" for n in names) + "  kdzero outcome (score: fp32 / "
               "bf16 / plain)")
    seconds = {name: [] for name in names}
    single = {name: [] for name in variants}
    for i, genome in enumerate(genomes):
        runners = {"plain": lambda genome=genome: plain.candidate(genome, args.steps)}
        for name in variants:
            runners[name] = lambda genome=genome, name=name: evaluate(tasks[name], [genome])[0]
        order = names[i % len(names):] + names[:i % len(names)]
        outcome = {}
        for name in order:
            start = time.perf_counter()
            outcome[name] = runners[name]()
            seconds[name].append(time.perf_counter() - start)
        for name in variants:
            single[name].append(outcome[name])
        result = outcome["kdzero fp32"]
        if result.rejected:
            text = f"rejected ({result.stage}, step {result.steps}: {result.reason[:40]})"
        else:
            scores = [f"{outcome[n].score:.3f}" for n in variants] + [f"{outcome['plain']['score']:.3f}"]
            text = "score " + " / ".join(scores)
        report.add(f"  {genome!s:44s} " + " ".join(f"{seconds[n][-1]:12.1f}" for n in names) + f"  {text}")

    n = len(genomes)
    report.add("")
    stacked = torch.device(args.device).type == "cuda"  # evaluate's default: stacked (vmap) on CUDA, looped on CPU
    report.add(f"the same genomes in groups of {args.group} ("
               + ("students stacked into one vmapped model" if stacked else "students looped over one batch stream")
               + "):")
    good = [i for i, g in enumerate(genomes) if str(g) not in BAD_GENOMES]
    bad = [i for i in range(n) if i not in good]
    for name in variants:
        # Valid and bad genomes are grouped apart so that the valid-only ratio below is measured, not apportioned;
        # a rejected genome leaves its group at step 1, so mixing them would change the total by well under 1%.
        per_genome, grouped = [0.0] * n, {}
        for part in (good, bad):
            for j in range(0, len(part), args.group):
                chunk = part[j:j + args.group]
                start = time.perf_counter()
                grouped.update(zip(chunk, evaluate(tasks[name], [genomes[i] for i in chunk])))
                wall = time.perf_counter() - start
                for i in chunk:
                    per_genome[i] = wall / len(chunk)
        seconds[f"{name} grouped"] = per_genome
        one_off[f"{name} grouped"] = one_off[name]
        same = all(without_time(grouped[i]) == without_time(single[name][i]) for i in range(n))
        drift = max((abs(grouped[i].score - single[name][i].score) / abs(single[name][i].score)
                     for i in good if not single[name][i].rejected and not grouped[i].rejected), default=0.0)
        report.add(f"  {name} grouped: {n} candidates in {sum(per_genome):.1f} s; results identical to one at a "
                   f"time: {'yes' if same else 'NO'} (largest relative score difference {drift:.1e}"
                   + ("; stacked kernels round differently" if stacked else "") + ")")
    variants = {**variants, **{f"{name} grouped": cfg for name, cfg in variants.items()}}
    names = ["plain", *variants]
    rate = {name: 3600 * n / sum(seconds[name]) for name in names}
    amortised = {name: 3600 / (sum(seconds[name]) / n + one_off[name] / args.amortise) for name in names}
    report.add("")
    for name in names:
        report.add(f"{name:12s}: {rate[name]:7.1f} candidates/h (median {statistics.median(seconds[name]):6.1f} s); "
                   f"one-off amortised over {args.amortise}: {amortised[name]:7.1f}/h")
    for name in variants:
        ratio = rate[name] / rate["plain"]
        ratio_good = sum(seconds["plain"][i] for i in good) / sum(seconds[name][i] for i in good)
        report.add(f"ratio {name} / plain: {ratio:.2f}x  (target >= 3x: {'met' if ratio >= 3 else 'MISSED'}); "
                   f"amortised {amortised[name] / amortised['plain']:.2f}x; valid genomes only (no rejection "
                   f"benefit) {ratio_good:.2f}x")
    if not all(math.isfinite(r) for r in rate.values()):
        report.add("warning: no timings")
    report.finish()


if __name__ == "__main__":
    main()
