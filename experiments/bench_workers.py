"""Benchmark (issue 8c): trials per hour of ``kdzero search --workers N`` on one machine, N = 1 and 2.

Each search is a subprocess (``python -m kdzero search`` on digits with a fixed budget, a teacher trained once
beforehand and passed with ``--teacher-ckpt``) in a fresh run directory. Throughput is measured from the study
itself: (finished trials - 1) / (last completion - first completion), so start-up (imports, data, teacher cache,
CE-only reference run, worker processes) is excluded. The worker counts alternate within each round
(1 2, 2 1, ...). Also reported: the median proxy seconds per evaluated trial (it grows when workers compete for
cores) and the rate of evaluated trials (duplicates of an already-known genome are finished for free).

Target: >= 0.8 N scaling (2 workers >= 1.6x the trials per hour of 1). This machine has 2 cores shared with other
jobs, so 2 workers get 2 cores only when nothing else runs; the load average is printed.

    python experiments/bench_workers.py                 # ~5 minutes on 2 shared cores
    python experiments/bench_workers.py --rounds 3 --iterations 30
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch
from bench_common import Report, digits_teacher, load_average

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default 1 2)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over the worker counts (default 2)")
    parser.add_argument("--population", type=int, default=6, help="population (default 6)")
    parser.add_argument("--iterations", type=int, default=14, help="iterations (default 14)")
    parser.add_argument("--steps", type=int, default=60, help="proxy steps per trial (default 60)")
    parser.add_argument("--sampler", default="evolution", help="sampler (default evolution)")
    parser.add_argument("--out", default=None, help="results file (default experiments/results/bench_workers.txt)")
    return parser.parse_args()


def measure(study: optuna.Study) -> dict:
    trials = [t for t in study.get_trials(deepcopy=False) if t.state in FINISHED]
    times = sorted(t.datetime_complete.timestamp() for t in trials)
    evaluated = [t for t in trials if "duplicate_of" not in t.user_attrs]
    span = times[-1] - times[0] if len(times) > 1 else float("nan")
    return {
        "finished": len(trials),
        "evaluated": len(evaluated),
        "span": span,
        "rate": 3600 * (len(times) - 1) / span,
        "eval_rate": 3600 * max(len(evaluated) - 1, 0) / span,
        "trial_s": statistics.median(float(t.user_attrs.get("seconds", 0.0)) for t in evaluated),
        "workers": len({t.user_attrs.get("worker") for t in evaluated}),
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    report = Report("workers", out=args.out)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    budget = args.population + args.iterations
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = Path(tmp)
        checkpoint, teacher_seconds = digits_teacher()
        report.add(f"digits, resnet20 -> resnet8, {args.sampler} sampler, {budget} trials per search "
                   f"({args.population} + {args.iterations}), {args.steps} proxy steps, 1 thread per worker; "
                   f"teacher {checkpoint} "
                   f"({teacher_seconds:.0f} s to train or find)")
        report.add(f"  {'round':>5s} {'N':>2s} {'trials':>6s} {'eval':>5s} {'span s':>7s} {'trials/h':>9s} "
                   f"{'eval/h':>7s} {'s/trial':>8s} {'total s':>8s}  load")
        rates: dict[int, list[float]] = {n: [] for n in args.workers}
        eval_rates: dict[int, list[float]] = {n: [] for n in args.workers}
        for r in range(args.rounds):
            for n in args.workers if r % 2 == 0 else args.workers[::-1]:
                name = f"w{n}-r{r}"
                command = [sys.executable, "-m", "kdzero", "search", "--name", name, "--runs-dir", str(runs_dir),
                           "--workers", str(n), "--threads", "1", "--population", str(args.population),
                           "--iterations", str(args.iterations), "--steps", str(args.steps), "--views", "2",
                           "--sampler", args.sampler, "--seed", str(r), "--teacher-ckpt", str(checkpoint),
                           "--quiet"]
                start = time.perf_counter()
                done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"})
                total = time.perf_counter() - start
                if done.returncode != 0:
                    report.add(f"search {name} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
                    continue
                study = optuna.load_study(study_name=name, storage=f"sqlite:///{runs_dir / name / 'study.db'}")
                m = measure(study)
                rates[n].append(m["rate"])
                eval_rates[n].append(m["eval_rate"])
                report.add(f"  {r:5d} {n:2d} {m['finished']:6d} {m['evaluated']:5d} {m['span']:7.1f} "
                           f"{m['rate']:9.0f} {m['eval_rate']:7.0f} {m['trial_s']:8.2f} {total:8.1f}  "
                           f"{load_average()}")
    report.add("")
    one = statistics.median(rates[1]) if rates.get(1) else None
    for n in args.workers:
        if not rates[n]:
            continue
        rate, eval_rate = statistics.median(rates[n]), statistics.median(eval_rates[n])
        scaling = f"scaling {rate / one:.2f}x = {rate / one / n:.2f} N" if one else ""
        report.add(f"workers {n}: median {rate:7.0f} trials/h, {eval_rate:7.0f} evaluated/h  {scaling}")
    if one and 2 in rates and rates[2]:
        scale = statistics.median(rates[2]) / one / 2
        report.add(f"target >= 0.8 N: {'met' if scale >= 0.8 else 'MISSED'} ({scale:.2f} N with 2 workers on "
                   f"{os.cpu_count()} shared cores)")
    report.finish()


if __name__ == "__main__":
    main()
