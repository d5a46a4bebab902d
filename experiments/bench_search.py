"""Benchmark (issue: search): KD-Zero evolution against random search at an equal trial budget, on digits.

For each seed, one ``ProxyTask`` (built-in digits teacher resnet20 -> resnet8, proxy seeded with the seed) is
built once and shared by both samplers; each sampler then runs a fresh study (``prepare_run`` +
``ensure_baseline`` + ``run_worker``) of ``population + iterations`` trials in a temporary runs directory. The
samplers run in alternating order from seed to seed. Reported per run: the best (lowest) proxy score, its genome,
the rejected trials and the wall time; then mean +- std of the best score over seeds.

The classical presets are left out of the initial population by default (``--presets`` puts them in), so that the
comparison measures the samplers rather than the presets they both start from.

    python experiments/bench_search.py                                   # ~10 minutes on 2 shared cores
    python experiments/bench_search.py --population 20 --iterations 100  # the paper's budget (hours)
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import optuna
import torch
from bench_common import Report, digits_teacher

from kdzero.proxy import ProxyConfig
from kdzero.search.config import SearchConfig
from kdzero.search.runner import SearchObserver, build_task, ensure_baseline, prepare_run, run_worker, validity_checker

SAMPLERS = ("evolution", "random")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    parser.add_argument("--population", type=int, default=8, help="population size (default 8)")
    parser.add_argument("--iterations", type=int, default=16, help="evolution iterations (default 16)")
    parser.add_argument("--steps", type=int, default=60, help="proxy steps per trial (default 60)")
    parser.add_argument("--views", type=int, default=2, help="cached teacher views (default 2)")
    parser.add_argument("--presets", action="store_true", help="seed both populations with the presets")
    parser.add_argument("--runs-dir", default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--out", default=None, help="results file (default experiments/results/bench_search.txt)")
    return parser.parse_args()


def best_of(study: optuna.Study) -> tuple[float, str, int, int]:
    """Best score, its genome, the number of rejected trials and the trial number of the best."""
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    rejected = sum(t.state == optuna.trial.TrialState.PRUNED for t in trials)
    if not done:
        return float("inf"), "-", rejected, -1
    best = min(done, key=lambda t: t.value)
    return best.value, best.user_attrs.get("genome", "?"), rejected, best.number


def run_all(args: argparse.Namespace, runs_dir: str, report: Report) -> None:
    results: dict[str, list[float]] = {s: [] for s in SAMPLERS}
    report.add(f"digits, resnet20 -> resnet8 (built-in teacher), budget {args.population} + {args.iterations} = "
               f"{args.population + args.iterations} trials per run, {args.steps} proxy steps, {args.views} views, "
               f"presets {'in' if args.presets else 'out'}; score: lower is better")
    report.add(f"  {'seed':>4s} {'sampler':10s} {'best':>8s} {'at':>4s} {'rej':>4s} {'wall s':>7s}  best genome")
    checkpoint, seconds = digits_teacher()
    report.add(f"teacher: {checkpoint} ({seconds:.0f} s to train or find)")
    for i, seed in enumerate(args.seeds):
        base = SearchConfig(name="task", runs_dir=runs_dir, population=args.population, iterations=args.iterations,
                            seed=seed, presets=args.presets, threads=args.threads, teacher_ckpt=str(checkpoint),
                            proxy=ProxyConfig(steps=args.steps, num_views=args.views, seed=seed))
        start = time.perf_counter()
        task = build_task(base, log=lambda m: None)
        setup = time.perf_counter() - start
        print(f"seed {seed}: task ready in {setup:.1f} s")
        for sampler in SAMPLERS if i % 2 == 0 else SAMPLERS[::-1]:
            config = base.with_overrides({"name": f"{sampler}-s{seed}", "sampler": sampler})
            run = prepare_run(config, is_valid=validity_checker(task), log=lambda m: None)
            start = time.perf_counter()
            ensure_baseline(run, task)
            run_worker(run, task, SearchObserver())
            wall = time.perf_counter() - start
            score, genome, rejected, number = best_of(run.study)
            results[sampler].append(score)
            report.add(f"  {seed:4d} {sampler:10s} {score:8.4f} {number:4d} {rejected:4d} {wall:7.1f}  {genome}")
    report.add("")
    report.add(f"  {'sampler':10s} {'mean best':>10s} {'std':>8s}  per seed")
    for sampler in SAMPLERS:
        scores = results[sampler]
        std = statistics.stdev(scores) if len(scores) > 1 else 0.0
        report.add(f"  {sampler:10s} {statistics.mean(scores):10.4f} {std:8.4f}  "
                   + " ".join(f"{s:.4f}" for s in scores))
    wins = sum(e < r for e, r in zip(results["evolution"], results["random"]))
    diffs = [r - e for e, r in zip(results["evolution"], results["random"])]
    report.add(f"evolution better on {wins}/{len(args.seeds)} seeds; mean improvement over random "
               f"{statistics.mean(diffs):+.4f} (positive = evolution lower)")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    report = Report("search", out=args.out)
    if args.runs_dir:
        run_all(args, args.runs_dir, report)
    else:
        with tempfile.TemporaryDirectory() as runs_dir:
            run_all(args, runs_dir, report)
    report.finish()


if __name__ == "__main__":
    main()
