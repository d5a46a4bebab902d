"""Benchmark (issue 8d): peak memory of a proxy evaluation, resnet56a -> resnet20 on CIFAR-10 JPEG.

Every configuration (batch size x cached views) runs in a fresh subprocess of this script, so no allocator state
or cached tensor carries over. The child loads the data (the full decoded CIFAR-10 JPEG set, as every run does)
and builds the ``ProxyTask`` (teacher cache, val features, CE-only reference run), then resets the kernel's
peak-RSS counter (``/proc/self/clear_refs``) and proxy-evaluates one genome. Reported in MB: RSS after import,
RSS and peak after set-up, and the peak during the evaluation (VmHWM from /proc/self/status; psutil's
``memory_info`` reads the same counters, tracemalloc misses torch's allocations). On CUDA (``--device cuda``)
``torch.cuda.max_memory_allocated`` is reported as well.

    python experiments/bench_memory.py                     # ~4 minutes on 2 shared cores
    python experiments/bench_memory.py --rounds 2 --steps 50 --genome at
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench_common import Report, ensure_cifar10_jpeg


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128], help="default 64 128")
    parser.add_argument("--views", type=int, nargs="+", default=[1, 4], help="cached views (default 1 4)")
    parser.add_argument("--genome", default="kd", help="preset name or genome text (default kd)")
    parser.add_argument("--steps", type=int, default=10, help="proxy steps (default 10)")
    parser.add_argument("--train-per-class", type=int, default=50, help="proxy train images per class (default 50)")
    parser.add_argument("--val-per-class", type=int, default=50, help="validation images per class (default 50)")
    parser.add_argument("--rounds", type=int, default=1, help="repetitions, order reversed every other (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", default=None, help="results file (default experiments/results/bench_memory.txt)")
    parser.add_argument("--child", nargs=3, metavar=("BATCH", "VIEWS", "CACHE_DIR"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(args: argparse.Namespace) -> None:
    """One configuration, in this fresh process; prints one JSON line."""
    import torch
    from bench_common import AKAMASTER

    from kdzero import PRESETS, Genome
    from kdzero.data import proxy_subset
    from kdzero.models import create_model, load_checkpoint
    from kdzero.proxy import ProxyConfig, ProxyTask, evaluate
    from kdzero.train import load_data

    torch.set_num_threads(1)
    batch, views, cache_dir = int(args.child[0]), int(args.child[1]), args.child[2]
    out = {"import_rss": status_mb("VmRSS")}
    genome = PRESETS[args.genome] if args.genome in PRESETS else Genome.parse(args.genome)
    data = load_data(f"imagefolder:{ensure_cifar10_jpeg()}", normalize="imagenet")
    data = replace(data, val=proxy_subset(data.val, per_class=args.val_per_class, seed=0))
    out["data_peak"] = status_mb("VmHWM")
    teacher = create_model("resnet56a", num_classes=10)
    load_checkpoint(teacher, AKAMASTER / "resnet56-4bfd9763.th")
    config = ProxyConfig(steps=args.steps, batch_size=batch, num_views=views, train_subset=args.train_per_class,
                         cka_samples=min(512, len(data.val)), sharpness_samples=min(256, len(data.val)),
                         device=args.device)
    task = ProxyTask(teacher, lambda: create_model("resnet20", num_classes=10), data, config, cache_dir,
                     log=lambda m: None)
    out["task_peak"] = status_mb("VmHWM")
    task.baseline()
    out.update(setup_rss=status_mb("VmRSS"), setup_peak=status_mb("VmHWM"), cache_mb=task.cache.nbytes / 2**20,
               data_mb=sum(s.images.numel() for s in (data.train, data.val, data.test)) / 2**20)
    out["reset"] = reset_peak()
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = evaluate(task, [genome])[0]
    out.update(eval_peak=status_mb("VmHWM"), eval_rss=status_mb("VmRSS"), seconds=time.perf_counter() - start,
               status=result.status)
    if args.device.startswith("cuda"):
        out["cuda_peak"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


def main() -> None:
    args = parse_args()
    if args.child:
        child(args)
        return
    report = Report("memory", out=args.out)
    ensure_cifar10_jpeg()
    configs = [(b, v) for b in args.batch_sizes for v in args.views]
    report.add(f"resnet56a (akamaster) -> resnet20 on CIFAR-10 JPEG, genome {args.genome}, {args.steps} steps, "
               f"{args.train_per_class * 10} train / {args.val_per_class * 10} val images, device {args.device}; "
               f"one fresh subprocess per configuration, 1 thread")
    report.add("MB; peaks are VmHWM after: loading the data (data pk), building the ProxyTask (task pk: teacher")
    report.add("cache, teacher val features, teacher sharpness), the CE-only reference run (setup pk); eval pk: peak")
    report.add("during one candidate's evaluate() after resetting the counter; eval + = eval pk - RSS before it")
    report.add(f"  {'batch':>5s} {'views':>5s} {'import':>7s} {'data pk':>8s} {'task pk':>8s} {'setup pk':>8s} "
               f"{'setup':>7s} {'eval pk':>8s} {'eval +':>7s} {'cache':>6s} {'cuda pk':>8s}")
    here = Path(__file__).resolve()
    with tempfile.TemporaryDirectory() as cache_dir:
        for r in range(args.rounds):
            for batch, views in configs if r % 2 == 0 else configs[::-1]:
                command = [sys.executable, str(here), "--child", str(batch), str(views), cache_dir,
                           "--genome", args.genome, "--steps", str(args.steps), "--train-per-class",
                           str(args.train_per_class), "--val-per-class", str(args.val_per_class),
                           "--device", args.device]
                done = subprocess.run(command, capture_output=True, text=True, cwd=here.parent.parent,
                                      env={**os.environ, "PYTHONPATH": str(here.parent)})
                if done.returncode != 0:
                    report.add(f"  {batch:5d} {views:5d} failed: {done.stderr.strip()[-400:]}")
                    continue
                m = json.loads(done.stdout.strip().splitlines()[-1])
                cuda = f"{m['cuda_peak']:8.1f}" if "cuda_peak" in m else f"{'-':>8s}"
                note = "" if m["reset"] else "  (peak counter not resettable: eval pk includes set-up)"
                report.add(f"  {batch:5d} {views:5d} {m['import_rss']:7.1f} {m['data_peak']:8.1f} "
                           f"{m['task_peak']:8.1f} {m['setup_peak']:8.1f} {m['setup_rss']:7.1f} {m['eval_peak']:8.1f} "
                           f"{m['eval_peak'] - m['setup_rss']:7.1f} "
                           f"{m['cache_mb']:6.1f} {cuda}  {m['status']}, {m['seconds']:.0f} s{note}")
    report.add(f"decoded CIFAR-10 JPEG held by every run: {m['data_mb']:.0f} MB uint8 (train+val+test)")
    report.finish()


if __name__ == "__main__":
    main()
