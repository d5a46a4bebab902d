"""The statistics of the correlation study (``correlation.py``): how well each proxy metric ranks the genomes'
final accuracies, across step budgets, proxy seeds and retrainings. Pure functions of result rows, no files.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
from scipy import stats

from kdzero.scoring import ScoreWeights

PREDICTORS = [("-CE", ("val_ce",)), ("-S-gap", ("s_gap",)), ("-CKA-gap", ("cka_gap",)),
              ("-(CE+S-gap)", ("val_ce", "s_gap")), ("-(CE+CKA-gap)", ("val_ce", "cka_gap")),
              ("-(CE+S-gap+CKA-gap)", ("val_ce", "s_gap", "cka_gap"))]
WEIGHT_FIELD = {"val_ce": "ce", "s_gap": "s_gap", "cka_gap": "cka_gap"}


def metric_value(row: dict, keys: tuple[str, ...], weights: ScoreWeights) -> float:
    return sum(getattr(weights, WEIGHT_FIELD[k]) * row[k] for k in keys)


def predictor_value(row: dict, keys: tuple[str, ...], weights: ScoreWeights) -> float:
    """A predictor's raw value: the proxy's top-1 for ``("val_acc",)``, else the weighted metric sum."""
    return row["val_acc"] if keys == ("val_acc",) else metric_value(row, keys, weights)


def correlations(rows: list[dict], weights: ScoreWeights) -> list[tuple[str, float, float, float]]:
    acc = [r["last_acc"] for r in rows]
    out = []
    for name, keys in PREDICTORS:
        pred = [-metric_value(r, keys, weights) for r in rows]
        out.append((name, stats.pearsonr(pred, acc)[0], stats.spearmanr(pred, acc)[0],
                    stats.kendalltau(pred, acc)[0]))
    pred = [r["val_acc"] for r in rows]
    out.append(("+proxy val top-1 (reference)", stats.pearsonr(pred, acc)[0], stats.spearmanr(pred, acc)[0],
                stats.kendalltau(pred, acc)[0]))
    return out


def budget_lines(rows: list[dict], budgets: dict[int, dict], main_steps: int,
                 weights: ScoreWeights) -> list[str]:
    """The proxy budget study as a markdown table: Spearman of each predictor against final top-1 per budget."""
    table = {main_steps: {r["genome"]: r for r in rows}}
    for steps, results in budgets.items():
        table[steps] = {g: {**r, "proxy_s": r["seconds"]} for g, r in results.items()
                        if r.get("score") is not None}
    names = [n for n, _ in PREDICTORS]
    lines = ["Proxy budget study: the same genomes and final accuracies, proxy-scored at several step budgets "
             "(Spearman with final top-1; weights as above):", "",
             f"| proxy steps | n | {' | '.join(names)} | proxy top-1 | proxy s/genome |",
             "|---:|---:|" + "---:|" * (len(names) + 2)]
    for steps in sorted(table):
        scored = [(table[steps][r["genome"]], r["last_acc"]) for r in rows if r["genome"] in table[steps]]
        if len(scored) < 3:
            continue
        acc = [a for _, a in scored]
        cells = [stats.spearmanr([-metric_value(p, keys, weights) for p, _ in scored], acc)[0]
                 for _, keys in PREDICTORS]
        cells.append(stats.spearmanr([p["val_acc"] for p, _ in scored], acc)[0])
        seconds = sum(p["proxy_s"] for p, _ in scored) / len(scored)
        lines.append(f"| {steps}{' (main)' if steps == main_steps else ''} | {len(scored)} | "
                     + " | ".join(f"{c:.3f}" for c in cells) + f" | {seconds:.1f} |")
    return [*lines, ""]


def seed_lines(rows: list[dict], seeds: dict[int, dict], main_seed: int, weights: ScoreWeights) -> list[str]:
    """The proxy reliability study as a markdown table: per predictor, its Spearman with final top-1 at each proxy
    seed, how well the seeds agree with each other (mean pairwise Spearman of the metric itself), and the Spearman
    of the seed-averaged metric. Agreement between seeds bounds what any single proxy run can predict."""
    runs = {main_seed: {r["genome"]: r for r in rows}}
    runs.update({seed: {g: r for g, r in results.items() if r.get("score") is not None}
                 for seed, results in seeds.items()})
    genomes = [r["genome"] for r in rows if all(r["genome"] in run for run in runs.values())]
    if len(genomes) < 3 or len(runs) < 2:
        return []
    final = {r["genome"]: r["last_acc"] for r in rows}
    acc = [final[g] for g in genomes]
    order = sorted(runs)
    lines = [f"Proxy reliability study: the same genomes (n={len(genomes)}) and final accuracies, proxy-scored with "
             f"{len(order)} proxy seeds (initialisation, batch order, augmented views and proxy train images); "
             "Spearman with final top-1 per seed, the mean pairwise Spearman between seeds of the metric itself, "
             "and the Spearman of the metric averaged over the seeds:", "",
             f"| predictor | {' | '.join(f'seed {s}' for s in order)} | seed-to-seed | seed-averaged |",
             "|---|" + "---:|" * (len(order) + 2)]
    predictors = [(name, keys, -1.0) for name, keys in PREDICTORS] + [("+proxy val top-1", ("val_acc",), 1.0)]
    for name, keys, sign in predictors:
        per_seed = {s: [sign * predictor_value(runs[s][g], keys, weights) for g in genomes] for s in order}
        agreement = [stats.spearmanr(per_seed[a], per_seed[b])[0] for a, b in itertools.combinations(order, 2)]
        averaged = [sum(per_seed[s][i] for s in order) / len(order) for i in range(len(genomes))]
        cells = [stats.spearmanr(per_seed[s], acc)[0] for s in order]
        cells += [sum(agreement) / len(agreement), stats.spearmanr(averaged, acc)[0]]
        lines.append(f"| {name} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return [*lines, ""]


def noise_ceiling(accuracies: list[float], sigma: float, draws: int = 2000) -> float:
    """Expected Spearman between the observed final accuracies and the same accuracies plus N(0, sigma^2) noise:
    roughly the best Spearman any predictor can reach when each final accuracy carries training noise sigma."""
    rng = np.random.default_rng(0)
    acc = np.asarray(accuracies, dtype=float)
    return float(np.mean([stats.spearmanr(acc, acc + rng.normal(0.0, sigma, acc.size))[0] for _ in range(draws)]))


def retrain_lines(rows: list[dict], retrained: list[dict]) -> list[str]:
    """Final-accuracy reproducibility (``--retrain``): the same genome trained with another training seed."""
    first = {r["genome"]: r for r in rows}
    pairs = [(first[r["genome"]], r) for r in retrained if r["genome"] in first]
    if not pairs:
        return []
    deltas = [b["last_acc"] - a["last_acc"] for a, b in pairs]
    sigma = math.sqrt(sum(d * d for d in deltas) / (2 * len(deltas)))  # Var(a - b) = 2 sigma^2
    acc = [r["last_acc"] for r in rows]
    lines = [f"Final-accuracy reproducibility: {len(pairs)} genome{'s' if len(pairs) > 1 else ''} trained again "
             f"with training seed "
             f"{int(pairs[0][1]['train_seed'])} (initialisation, batch order, augmentation; same data). Training "
             f"noise sigma = sqrt(mean(delta^2) / 2) = {sigma:.2f} points; with that noise on every final accuracy, "
             f"even a perfect predictor would reach a Spearman of about {noise_ceiling(acc, sigma):.3f} on these "
             f"{len(rows)} genomes (simulated).", "",
             "| genome | final top-1 % | retrained top-1 % | delta |", "|---|---:|---:|---:|"]
    for (a, b), d in zip(pairs, deltas):
        lines.append(f"| `{a['genome']}` | {a['last_acc']:.2f} | {b['last_acc']:.2f} | {d:+.2f} |")
    if len(pairs) >= 3:
        score = [-a["score"] for a, _ in pairs]
        once = stats.spearmanr(score, [a["last_acc"] for a, _ in pairs])[0]
        twice = stats.spearmanr(score, [(a["last_acc"] + b["last_acc"]) / 2 for a, b in pairs])[0]
        lines += ["", f"On these {len(pairs)} genomes, Spearman(-score, final top-1) is {once:.3f} against the first "
                      f"training and {twice:.3f} against the mean of both: how much a less noisy yardstick changes "
                      "the verdict."]
    return [*lines, ""]
