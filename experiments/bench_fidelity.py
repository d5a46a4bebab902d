"""Single-rung search against rung search at equal proxy compute, judged by confirmed trainings (issue #20).

Two searches over one pair, same sampler and seed: (b) the rung search (rung 0 at ``--steps``, the best 1/eta
promoted with eta times more steps, up to ``--max-steps``), then (a) the single-rung search as it was before
rungs, given as many rung-0 trials as (b) spent proxy steps. Then one confirmation (``kdzero.confirm``, 2 seeds
by default) trains every genome of (b)'s rung 1, (a)'s best ``n_1`` genomes (the two sets overlap), KD, DKD and
CE-only. Reported, in ``experiments/results/fidelity_<pair>.{md,json}``:

* per rung of (b), and for (a), the Spearman of -score against confirmed top-1 (mean of the seeds) over the
  confirmed genomes that have a score there, and of the rung's proxy validation accuracy (the candidate for a
  top-rung score other than the combined one);
* each search's pick (best score of its top rung): its rank among all confirmed searched genomes, the regret
  (best confirmed top-1 minus the pick's) and its confirmed top-1 against KD, DKD and CE-only;
* the proxy steps each search spent and the training seconds recorded with every result.

Everything is stored in the two run folders (``--runs``): a rerun resumes the searches and the confirmation
where they stopped (kill it at any time). ``--plan`` prints the planned steps and a projected time instead.

    # the full comparison (about 90 min of CPU on 2 cores is NOT enough at these settings: see --plan)
    python experiments/bench_fidelity.py --pair cifar10jpeg
    # an end-to-end check at a tiny budget (minutes)
    python experiments/bench_fidelity.py --pair digits --population 4 --iterations 4 --steps 12 --max-steps 36 \\
        --confirm-epochs 2 --tag tiny
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import subprocess
import time
from pathlib import Path

from scipy import stats

from kdzero.confirm import NOISE_Z, ConfirmSettings, Entrant, confirm, entrants
from kdzero.search import rungs, runner
from kdzero.search.config import SearchConfig, load_config

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "experiments" / "results"
ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
CPU_STEP_SECONDS = {"digits": 0.03, "cifar10jpeg": 0.30}
"""Seconds per proxy or training step of one candidate on one busy CPU thread, for ``--plan``: digits resnet8
measured in this benchmark's tiny run; CIFAR-10 resnet20 (batch 64, fp32 NHWC, 0.24 s, bench_precision.txt)
plus the cached teacher lookup and scoring."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def base_config(args: argparse.Namespace) -> SearchConfig:
    """The pair and proxy of the comparison; both searches share it."""
    if args.pair == "cifar10jpeg":
        folder = args.data
        if not (folder / "train").is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            subprocess.run(["tar", "xzf", str(ARCHIVE), "-C", str(folder)], check=True)
        config = load_config(REPO / "experiments" / "cifar10jpeg_resnet56a_resnet20.toml").with_overrides({
            "dataset": f"imagefolder:{folder}", "student": "resnet20a",
            "teacher_ckpt": str(REPO.parent / "shared" / "data" / "teachers" / "akamaster-cifar10" /
                                "resnet56-4bfd9763.th"), "proxy.train_subset": args.train_subset,
            "proxy.num_views": 2})
    else:
        config = SearchConfig()
    return config.with_overrides({
        "population": args.population, "proxy.steps": args.steps, "eta": args.eta, "seed": args.seed,
        "device": args.device, "runs_dir": str(args.runs), "confirm": 0, "confirm_epochs": args.confirm_epochs,
        "confirm_seeds": args.seeds, "confirm_subset": args.confirm_subset, "group_size": args.group_size})


def planned_steps(trials: int, steps: int, eta: int, max_steps: int | None) -> int:
    """Proxy steps of a search whose rung 0 holds ``trials`` complete genomes (an upper bound: rejections stop
    early), the CE-only student of every rung included."""
    total, count = 0, trials
    for index, rung_steps in enumerate(rungs.rung_steps(steps, eta, max_steps)):
        count = trials if index == 0 else math.ceil(count / eta)
        total += (count + 1) * rung_steps
    return total


def projected_hours(proxy_steps: int, trainings: int, epochs: int, images: int, batch: int, step_s: float,
                    speedup: float = 1.0) -> float:
    """Hours for ``proxy_steps`` candidate-steps plus ``trainings`` confirmation trainings of ``epochs`` epochs on
    ``images`` images, at ``step_s`` seconds per candidate-step divided by a device ``speedup`` (grouped
    candidates on a GPU: measure it with experiments/bench_batched.py on the target device)."""
    training_steps = trainings * epochs * math.ceil(images / batch)
    return (proxy_steps + training_steps) * step_s / speedup / 3600


def run_search(config: SearchConfig) -> runner.Run:
    """Run (or resume) one search, rungs included."""
    runner.configure_torch(config)
    task = runner.build_task(config, log=log)
    run = runner.prepare_run(config, is_valid=runner.validity_checker(task), log=log)

    class Printer(runner.SearchObserver):
        def log(self, message: str) -> None:
            log(message)

        def rung_started(self, rung: int, steps: int, genomes: int) -> None:
            log(f"{config.name}: rung {rung}, {genomes} genomes x {steps} steps")

    runner.ensure_baseline(run, task)
    runner.run_worker(run, task, Printer())
    return run


def recorded_seconds(run: runner.Run, prefix: str = rungs.PREFIX) -> float:
    """Training seconds recorded with the results (per candidate, so they survive resumes; wall time, inflated
    on a loaded machine): the search's trials and its rungs, or with ``prefix`` the confirmation's units."""
    from kdzero.search import claims

    units = sum(float(e.get("seconds", 0.0)) for e in claims.entries(run.study, prefix).values())
    if prefix != rungs.PREFIX:
        return units
    return units + sum(float(t.user_attrs.get("seconds", 0.0)) for t in run.study.get_trials(deepcopy=False))


def spent_steps(run: runner.Run) -> int:
    """Proxy steps a search actually trained (rejected genomes count the steps they ran)."""
    total = sum(int(t.user_attrs.get("steps", 0)) for t in run.study.get_trials(deepcopy=False)
                if "duplicate_of" not in t.user_attrs)
    rung = 1
    while entries := rungs.rung_entries(run.study, rung):
        total += sum(int(e.get("steps", 0)) for e in entries.values())
        rung += 1
    return total


def spearman_test(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    """Spearman of -score against confirmed top-1 and its two-sided p-value (an exact permutation test up to 9
    points, where the asymptotic one means little); both NaN under 3 points."""
    if len(pairs) < 3:
        return math.nan, math.nan
    x, y = [-s for s, _ in pairs], [a for _, a in pairs]
    rho = float(stats.spearmanr(x, y).statistic)
    if len(pairs) > 9:
        return rho, float(stats.spearmanr(x, y).pvalue)
    result = stats.permutation_test((x,), lambda a: stats.spearmanr(a, y).statistic, permutation_type="pairings",
                                    alternative="two-sided")
    return rho, float(result.pvalue)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", choices=("digits", "cifar10jpeg"), default="cifar10jpeg")
    parser.add_argument("--population", type=int, default=12)
    parser.add_argument("--iterations", type=int, default=24, help="rung search's evolution iterations")
    parser.add_argument("--steps", type=int, default=60, help="rung-0 proxy steps")
    parser.add_argument("--eta", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=540, help="top rung's proxy steps")
    parser.add_argument("--train-subset", type=int, default=200, help="cifar10jpeg: proxy images per class")
    parser.add_argument("--confirm-epochs", type=int, default=15)
    parser.add_argument("--confirm-subset", type=int, default=None, help="labelled images per class (default: "
                                                                          "the proxy's)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", type=Path, default=Path("/tmp/cifar10jpeg"))
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "bench_fidelity")
    parser.add_argument("--tag", default=None, help="names the two run folders and, by default, the results "
                                                    "files (default: the pair)")
    parser.add_argument("--report", default=None, help="results file suffix (default: the tag); e.g. the same "
                                                       "runs confirmed again at more --confirm-epochs")
    parser.add_argument("--plan", action="store_true", help="print the planned steps and projected hours, exit")
    args = parser.parse_args()
    tag = args.tag or args.pair
    base = base_config(args)
    trials_b = args.population + args.iterations
    steps_b = planned_steps(trials_b, args.steps, args.eta, args.max_steps)
    trials_a = max(trials_b, round(steps_b / args.steps) - 1)
    if args.plan:
        n1 = math.ceil(trials_b / args.eta)
        images = (args.confirm_subset or args.train_subset) * 10 if args.pair == "cifar10jpeg" else 300
        hours = projected_hours(2 * steps_b, (2 * n1 + 3) * args.seeds, base.confirm_epochs or 30, images, 64,
                                CPU_STEP_SECONDS[args.pair])
        print(f"rung search {trials_b} trials, {steps_b} proxy steps; single-rung {trials_a} trials; up to "
              f"{2 * n1 + 3} distillers x {args.seeds} seeds confirmed; projected {hours:.1f} h on one CPU thread")
        return
    rung_config = base.with_overrides({"name": f"{tag}-rungs", "iterations": args.iterations,
                                       "max_steps": args.max_steps})
    single_config = base.with_overrides({"name": f"{tag}-single", "iterations": trials_a - args.population,
                                         "max_steps": args.steps})
    run_b = run_search(rung_config)
    cache_b, cache_a = rung_config.run_dir / "cache", single_config.run_dir / "cache"
    if cache_b.is_dir() and not cache_a.exists():
        shutil.copytree(cache_b, cache_a)  # the same teacher outputs: build them once
    if rung_config.teacher_ckpt is None and not (single_config.run_dir / "teacher").exists():
        shutil.copytree(rung_config.run_dir / "teacher", single_config.run_dir / "teacher")
    run_a = run_search(single_config)
    n1 = len(rungs.promoted(run_b.study, 1, args.eta)) if args.max_steps else 1
    people: dict[str, Entrant] = {}
    for candidate, _ in rungs.ranked(run_b.study, 1) + rungs.ranked(run_a.study, 0)[:n1]:
        people.setdefault(candidate.genome, Entrant(label=candidate.genome, genome=candidate.genome,
                                                    trial=candidate.trial, rung=0))
    references = [e for e in entrants(run_b.study, 1) if e.genome is None]
    settings = dataclasses.replace(ConfirmSettings.from_config(rung_config), top=len(people))
    table = confirm(run_b.study, rung_config, settings, log=log, people=[*people.values(), *references])
    top1 = {row.distiller: row.last_mean for row in table.itertuples()}
    searched = {g: top1[g] for g in people if g in top1 and not math.isnan(top1[g])}
    best = max(searched.values())
    order = sorted(searched, key=lambda g: -searched[g])
    report = {"pair": args.pair, "settings": vars(args) | {"data": str(args.data), "runs": str(args.runs)},
              "proxy_steps": {"rungs": spent_steps(run_b), "single": spent_steps(run_a)},
              "seconds": {"rung_search": round(recorded_seconds(run_b)),
                          "single_search": round(recorded_seconds(run_a)),
                          "confirmation": round(recorded_seconds(run_b, f"kdzero_confirm:{settings.tag}:"))},
              "references": {r: top1.get(r) for r in REFERENCES}, "confirmed": _confirmed_rows(table),
              "spearman": {}, "picks": {}}
    top_b = rungs.top_rung(run_b.study)
    for rung in range(top_b + 1):
        scores = {c.genome: s for c, s in rungs.ranked(run_b.study, rung)}
        points = [(scores[g], a) for g, a in searched.items() if g in scores]
        report["spearman"][f"rungs: rung {rung}"] = [*spearman_test(points), len(points)]
        # the alternative top-rung score: the longer proxy training's own validation accuracy
        accs = {c.genome: -float(_rung_attr(run_b.study, rung, c, "val_acc")) for c, _ in rungs.ranked(run_b.study,
                                                                                                         rung)}
        points = [(accs[g], a) for g, a in searched.items() if g in accs]
        report["spearman"][f"rungs: rung {rung}, proxy val acc"] = [*spearman_test(points), len(points)]
    scores_a = {c.genome: s for c, s in rungs.ranked(run_a.study, 0)}
    points = [(scores_a[g], a) for g, a in searched.items() if g in scores_a]
    report["spearman"]["single: rung 0"] = [*spearman_test(points), len(points)]
    for name, run, rung in (("single", run_a, 0), ("rungs", run_b, top_b)):
        pick = rungs.ranked(run.study, rung)[0][0].genome
        acc = searched.get(pick, math.nan)
        report["picks"][name] = {"genome": pick, "top1": acc, "rank": order.index(pick) + 1 if pick in order else None,
                                 "of": len(order), "regret": best - acc,
                                 **{f"vs_{r}": acc - (top1.get(r) or math.nan) for r in ("KD", "DKD", "CE-only")},
                                 "noise": _noise(table, pick)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    report_name = args.report or tag
    (RESULTS / f"fidelity_{report_name}.json").write_text(json.dumps(report, indent=2, default=str))
    lines = [f"# Single-rung vs rung search at equal proxy compute: {args.pair} ({tag})", "",
             f"command: python experiments/bench_fidelity.py {' '.join(_argv())}", "",
             f"proxy steps spent: rung search {report['proxy_steps']['rungs']}, single-rung "
             f"{report['proxy_steps']['single']}; training seconds recorded: {report['seconds']}", "",
             f"confirmed: {settings.seeds} seeds x {settings.epochs} epochs, "
             f"{settings.subset or 'all'} labelled images per class; KD {_f(top1.get('KD'))}, DKD "
             f"{_f(top1.get('DKD'))}, CE-only {_f(top1.get('CE-only'))}", "",
             "| distiller | kind | top-1 % (mean ± std over seeds) | vs KD | vs CE-only |", "|---|---|---:|---:|---:|"]
    for row in report["confirmed"]:
        name = row["distiller"].replace("|", "\\|")
        lines.append(f"| `{name}` | {row['kind']} | {_f(row['mean'])} ± {_f(row['std'])} | {_gain(row, 'kd')} | "
                     f"{_gain(row, 'ce')} |")
    lines += ["", f"gains: mean difference ± {_f(NOISE_Z, 0)} pooled standard errors of the seed noise; 'noise': "
              "the gain does not exceed that bound", "",
              "| Spearman of -score vs confirmed top-1 | value | p (two-sided) | genomes |", "|---|---:|---:|---:|"]
    for name, (value, p, count) in report["spearman"].items():
        lines.append(f"| {name} | {_f(value, 3)} | {_f(p, 2)} | {count} |")
    lines += ["", "| search | pick | confirmed top-1 | rank | regret | vs KD | vs DKD | vs CE-only | ± noise |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, pick in report["picks"].items():
        genome = pick["genome"].replace("|", "\\|")  # a table cell's code span
        lines.append(f"| {name} | `{genome}` | {_f(pick['top1'])} | {pick['rank']}/{pick['of']} | "
                     f"{_f(pick['regret'])} | {_f(pick['vs_KD'], sign=True)} | {_f(pick['vs_DKD'], sign=True)} | "
                     f"{_f(pick['vs_CE-only'], sign=True)} | {_f(pick['noise'])} |")
    (RESULTS / f"fidelity_{report_name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


REFERENCES = ("CE-only", "KD", "KD+LS", "DKD", "DKD+LS")


def _confirmed_rows(table) -> list[dict]:
    """Every confirmed distiller, best first: mean and std of the seeds' top-1, its gains over KD and CE-only,
    each with its noise bound and verdict (kdzero.confirm's)."""
    keep = {"distiller": "distiller", "kind": "kind", "seeds": "seeds", "last_mean": "mean", "last_std": "std",
            "gain_kd": "gain_kd", "noise_kd": "noise_kd", "vs_kd": "vs_kd", "gain_ce": "gain_ce",
            "noise_ce": "noise_ce", "vs_ce": "vs_ce"}
    return [{new: _plain(row[old]) for old, new in keep.items()} for _, row in table.iterrows()]


def _plain(value):
    """A JSON-friendly scalar (NaN -> None, numpy -> Python)."""
    if hasattr(value, "item"):
        value = value.item()
    return None if isinstance(value, float) and math.isnan(value) else value


def _noise(table, genome: str) -> float:
    """The noise bound of ``genome``'s gain over KD (2 pooled standard errors), NaN when it was not confirmed."""
    rows = table[table.distiller == genome]
    return float(rows.noise_kd.iloc[0]) if len(rows) else math.nan


def _gain(row: dict, against: str) -> str:
    gain, noise, verdict = row[f"gain_{against}"], row[f"noise_{against}"], row[f"vs_{against}"]
    if gain is None or row["distiller"] == {"kd": "KD", "ce": "CE-only"}[against]:
        return ""
    return f"{gain:+.2f} ± {_f(noise)}" + (" noise" if verdict == "within noise" else "")


def _rung_attr(study, rung: int, candidate: rungs.Candidate, name: str) -> float:
    """A proxy metric of ``candidate`` at ``rung`` (rung 0: its trial's user attribute)."""
    if rung == 0:
        return study.get_trials(deepcopy=False)[candidate.trial].user_attrs[name]
    return rungs.rung_entries(study, rung)[candidate.key][name]


def _argv() -> list[str]:
    import sys

    return sys.argv[1:]


def _f(value, digits: int = 2, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


if __name__ == "__main__":
    main()
