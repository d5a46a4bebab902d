"""Candidates per hour of grouped proxy training for G = 1, 2, 4, ..., stacked (vmap) vs looped, side by side.

resnet56 (akamaster, CIFAR-10) -> resnet20 on the CIFAR-10 JPEG set from ../shared/data, KD-family genomes, the
teacher's outputs cached once. For every G the same steps are timed for a stacked group (one vmapped model) and
a looped group (G models stepping over the shared batch), interleaved round by round so that machine noise hits
both alike; medians are reported. Prints the projected wall time of the paper's search (population 20 +
100 iterations = 120 evaluations) at the best G.

    python experiments/bench_batched.py                     # CPU, G up to 8
    python experiments/bench_batched.py --device cuda --groups 1 2 4 8 16 32
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from bench_common import AKAMASTER, ensure_cifar10_jpeg, machine_lines

ROOT = Path(__file__).resolve().parents[1]
GENOMES = ["logit[no,no,no]|kl|no|T4|x1", "feat[pow2,channel,norm_HW]|l2|no|T1|x100",
           "feat[mm,norm_C,no]|l2|no|T1|x100", "emb[no,no,norm_C]|cosine|no|T4|x1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--proxy-steps", type=int, default=400, help="steps per candidate, for the projection")
    parser.add_argument("--data", default="/tmp/cifar10jpeg")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--val-per-class", type=int, default=None,
                        help="validation images per class (default: the whole split; the teacher scores it once)")
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results" / "bench_batched.txt"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from kdzero.data import proxy_subset
    from kdzero.genome import Genome
    from kdzero.models import create_model, load_checkpoint
    from kdzero.proxy import ProxyConfig, ProxyTask, _Candidate, _StackedGroup
    from kdzero.train import load_data

    device = torch.device(args.device)
    data = load_data(f"imagefolder:{ensure_cifar10_jpeg(Path(args.data))}", normalize="imagenet", train_subset=1000)
    if args.val_per_class:
        data = replace(data, val=proxy_subset(data.val, per_class=args.val_per_class, seed=0))
    teacher = create_model("resnet56a", num_classes=10)
    load_checkpoint(teacher, AKAMASTER / "resnet56-4bfd9763.th")
    config = ProxyConfig(steps=args.steps, batch_size=args.batch_size, num_views=1, device=args.device,
                         warmup_steps=10**9, sharpness_samples=64, cka_samples=64)
    task = ProxyTask(teacher, lambda: create_model("resnet20", num_classes=10), data, config,
                     Path(args.data).parent / "kdzero-bench-cache", log=lambda message: None)
    task._baseline_ce = [0.0] * args.steps  # divergence check off: only the step cost is measured
    genomes = [Genome.parse(GENOMES[i % len(GENOMES)]) for i in range(max(args.groups))]
    batches = list(task.batches())

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def time_group(size: int, stacked: bool) -> float:
        candidates = [_Candidate(task, g) for g in genomes[:size]]
        group = _StackedGroup(task, candidates) if stacked else None
        timings = []
        for step, (view_ids, indices) in enumerate(batches):
            x, y, teacher_out = task.batch(view_ids, indices)
            sync()
            start = time.perf_counter()
            if group is not None:
                group.step(task, step, x, y, teacher_out)
            else:
                for candidate in candidates:
                    candidate.step(task, step, x, y, teacher_out)
            sync()
            timings.append(time.perf_counter() - start)
        return statistics.median(timings[1:] if len(timings) > 1 else timings)  # first step: warm-up

    lines = [f"bench_batched: resnet56a -> resnet20, CIFAR-10 JPEG, batch {args.batch_size}, {args.device}",
             *machine_lines(), f"load at start {os.getloadavg()[0]:.1f}", "",
             f"{'G':>3} {'looped s/step':>14} {'stacked s/step':>15} {'looped cand/h':>14} {'stacked cand/h':>15}"
             f" {'best vs G=1':>12}"]
    print("\n".join(lines), flush=True)
    per_hour: dict[tuple[int, bool], float] = {}
    for size in args.groups:
        medians = {True: [], False: []}
        for _ in range(args.rounds):
            for stacked in (False, True):
                if size == 1 and stacked:
                    continue
                medians[stacked].append(time_group(size, stacked))
        looped = statistics.median(medians[False])
        stacked = statistics.median(medians[True]) if medians[True] else looped
        for mode, seconds in ((False, looped), (True, stacked)):
            per_hour[(size, mode)] = size * 3600 / (seconds * args.proxy_steps)
        base = per_hour[(1, False)]
        best = max(per_hour[(size, False)], per_hour[(size, True)])
        line = (f"{size:>3} {looped:>14.3f} {stacked:>15.3f} {per_hour[(size, False)]:>14.1f} "
                f"{per_hour[(size, True)]:>15.1f} {best / base:>11.2f}x")
        lines.append(line)
        print(line, flush=True)
    (best_size, best_mode), best_rate = max(per_hour.items(), key=lambda item: item[1])
    hours = 120 / best_rate
    tail = ["", f"best: G={best_size} {'stacked' if best_mode else 'looped'}, {best_rate:.1f} candidates/hour at "
                f"{args.proxy_steps} proxy steps each",
            f"projected 20 x 100 search (120 evaluations): {hours:.2f} h on this device "
            f"(the paper: 21 h on one RTX 3090 Ti)", f"load at end {os.getloadavg()[0]:.1f}"]
    lines += tail
    print("\n".join(tail))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
