"""Benchmark (issue: teacher-output cache): proxy training step with and without the teacher cache.

resnet56a (akamaster CIFAR-10 weights) -> resnet20 on CIFAR-10 JPEG, batch 64, one KD genome. Both variants
train their own identically initialised student on the same stream of augmented batches (``AugmentedViews``):

* ``cached``: the teacher's Features are looked up in a ``TeacherCache`` (fp16, built once for V views);
* ``forward``: the teacher runs forward (eval mode, no grad) on every batch, as a cache-less loop would.

The step is the proxy's: student forward, CE + UnifiedLoss, backward, gradient clipping, SGD. Steps are timed one
by one, interleaved in rounds after a warm-up; the report gives both medians, their ratio, the one-off build cost
of the cache and the number of steps after which it has paid for itself.

    python experiments/bench_teacher_cache.py                 # ~3 minutes on 2 shared cores
    python experiments/bench_teacher_cache.py --rounds 30     # longer, tighter medians
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from bench_common import AKAMASTER, Report, ensure_cifar10_jpeg, interleaved, round_ratios, summary

from kdzero import PRESETS, Genome, UnifiedLoss
from kdzero.data import AugmentedViews
from kdzero.loss import feature_shapes
from kdzero.models import create_model, load_checkpoint
from kdzero.teacher_cache import TeacherCache
from kdzero.train import load_data


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--genome", default="kd", help="a preset name or a genome text (default: kd)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--views", type=int, default=4, help="augmented views in the cache (default 4)")
    parser.add_argument("--train-subset", type=int, default=1000, help="proxy train images (default 1000)")
    parser.add_argument("--rounds", type=int, default=12, help="timed rounds (default 12)")
    parser.add_argument("--per-round", type=int, default=5, help="timed steps per variant per round (default 5)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--out", default=None, help="results file (default: experiments/results/bench_NAME.txt)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    report = Report("teacher_cache", out=args.out)
    genome = PRESETS[args.genome] if args.genome in PRESETS else Genome.parse(args.genome)
    root = ensure_cifar10_jpeg()
    data = load_data(f"imagefolder:{root}", normalize="imagenet", train_subset=args.train_subset)
    train = data.train
    teacher = create_model("resnet56a", num_classes=10)
    load_checkpoint(teacher, AKAMASTER / "resnet56-4bfd9763.th")
    teacher.eval().requires_grad_(False)
    views = AugmentedViews(train, args.views, seed=0, flip=True)

    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        cache = TeacherCache.build_or_load(teacher, views, cache_dir, log=lambda m: None)
        build_seconds = time.perf_counter() - start

    probe_x = views.batch(0, torch.arange(2))
    with torch.no_grad():
        teacher_shapes = feature_shapes(teacher(probe_x))
        student_shapes = feature_shapes(create_model("resnet20", num_classes=10).eval()(probe_x))

    generator = torch.Generator().manual_seed(0)
    stream = list(views.batches(args.batch_size, 64, generator))

    def make_variant(use_cache: bool):
        torch.manual_seed(0)
        student = create_model("resnet20", num_classes=10).train()
        loss_fn = UnifiedLoss(genome, student_shapes, teacher_shapes,
                              generator=torch.Generator().manual_seed(0))
        params = list(student.parameters()) + list(loss_fn.parameters())
        optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
        position = [0]

        def step() -> None:
            view_ids, indices = stream[position[0] % len(stream)]
            position[0] += 1
            x = views.batch(view_ids, indices)
            y = train.labels[indices]
            if use_cache:
                t = cache.get(view_ids, indices)
            else:
                with torch.no_grad():
                    t = teacher(x)
            out = student(x)
            total = F.cross_entropy(out.logit, y) + loss_fn(student=out, teacher=t, target=y)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            optimizer.step()

        return step

    view_ids, indices = stream[0]
    with torch.no_grad():
        exact = teacher(views.batch(view_ids, indices))
    looked_up = cache.get(view_ids, indices)
    max_diff = max(float((a - b).abs().max()) for a, b in zip(exact, looked_up))

    report.add(f"pair: resnet56a (akamaster) -> resnet20 on CIFAR-10 JPEG, {len(train)} train images, "
               f"{args.views} views, batch {args.batch_size}, genome {genome}")
    report.add(f"teacher cache: built in {build_seconds:.1f} s ({len(views)} teacher forwards), "
               f"{cache.nbytes / 2**20:.1f} MB fp16; max |cached - forward| on a batch = {max_diff:.2e}")
    report.add(f"timing: {args.warmup} warm-up steps each, then {args.rounds} rounds x {args.per_round} steps per "
               f"variant, order alternating per round")
    times = interleaved({"cached": make_variant(True), "forward": make_variant(False)}, args.rounds,
                        args.per_round, args.warmup, progress=print)
    cached, forward = statistics.median(times["cached"]), statistics.median(times["forward"])
    ratios = round_ratios(times["forward"], times["cached"], args.per_round)
    report.add("")
    report.add(f"step with cache (lookup)     : {summary(times['cached'])}")
    report.add(f"step without cache (forward) : {summary(times['forward'])}")
    report.add(f"ratio forward/cached         : {forward / cached:.2f}x faster with the cache "
               f"(per-round ratios: min {min(ratios):.2f}, median {statistics.median(ratios):.2f}, "
               f"max {max(ratios):.2f})")
    saving = forward - cached
    if saving > 0:
        report.add(f"cache pays for itself after {build_seconds / saving:.0f} steps "
                   f"(build {build_seconds:.1f} s / saving {saving * 1e3:.1f} ms per step); a search of 100 "
                   f"candidates x 150 steps saves {saving * 15000 / 60:.1f} min of teacher forwards")
    report.finish()


if __name__ == "__main__":
    main()
