"""The correlation study's files: result rows as CSV, the markdown report, and the score-weight calibration
over finished runs.
"""
from __future__ import annotations

import argparse
import csv
import fcntl
import itertools
import math
import sys
from pathlib import Path

from correlation_stats import budget_lines, correlations, retrain_lines, seed_lines
from scipy import stats

from kdzero.scoring import ScoreWeights

CSV_FIELDS = ["name", "genome", "val_ce", "val_acc", "sharpness", "s_gap", "cka_gap", "score", "proxy_s",
              "best_acc", "last_acc", "train_s"]
RETRAIN_FIELDS = ["name", "genome", "train_seed", "best_acc", "last_acc", "train_s"]
GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


def read_rows(path: Path, fields: list[str] = CSV_FIELDS) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in fields[2:]:
            row[key] = float(row[key])
    return rows


def append_row(path: Path, row: dict, fields: list[str] = CSV_FIELDS) -> None:
    """Append one row under an exclusive lock, so shards (``--shard``) can share the CSV."""
    with open(path, "a", newline="") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        writer = csv.DictWriter(handle, fieldnames=fields)
        if handle.tell() == 0:
            writer.writeheader()
        writer.writerow({k: row[k] for k in fields})
        handle.flush()
        fcntl.flock(handle, fcntl.LOCK_UN)


def write_markdown(path: Path, rows: list[dict], state: dict, note: str, args: argparse.Namespace,
                   weights: ScoreWeights, expected: int, elapsed: float, budgets: dict[int, dict],
                   seeds: dict[int, dict], retrained: list[dict]) -> str:
    lines = [f"# Proxy metrics vs final accuracy ({args.dataset})", "", note + ".", "",
             f"Score weights in force: ce {weights.ce:g}, s_gap {weights.s_gap:g}, cka_gap {weights.cka_gap:g}. "
             "Sign convention: each metric is lower-is-better and is negated, so a positive coefficient means the "
             "metric predicts accuracy. Final accuracy = top-1 (%) after the last epoch.", ""]
    if len(rows) < expected:
        lines += [f"**Partial: {len(rows)} of {expected} genomes trained.**", ""]
    rejected = state.get("rejected", [])
    preset_rej = [n for n, r in state.get("presets", {}).items() if r["status"] != "complete"]
    lines += [f"Random genomes: {state.get('drawn', 0)} drawn, {state.get('static_invalid', 0)} statically invalid "
              f"for the pair, {len(rejected)} rejected by the proxy (stages: "
              f"{', '.join(sorted({r['stage'] for r in rejected})) or '-'}), {len(state.get('random', []))} "
              f"accepted. Presets rejected by the proxy: {', '.join(preset_rej) or 'none'}; statically invalid: "
              f"{', '.join(state.get('static_invalid_presets', [])) or 'none'}.", ""]
    base = state.get("baseline")
    if base:
        lines += [f"CE-only student on the proxy: val CE {base['val_ce']:.4f}, S-gap {base['s_gap']:.4f}, "
                  f"CKA-gap {base['cka_gap']:.4f}, val top-1 {100 * base['val_acc']:.2f}%.", ""]
    if len(rows) >= 3:
        lines += [f"| predictor (n={len(rows)}) | Pearson | Spearman | Kendall |", "|---|---:|---:|---:|"]
        lines += [f"| {n} | {p:.3f} | {s:.3f} | {k:.3f} |" for n, p, s, k in correlations(rows, weights)]
        lines += [""]
    bf16 = state.get("bf16", {})
    paired = [r for r in rows if bf16.get(r["genome"], {}).get("score") is not None]
    if len(paired) >= 3:
        fp32_scores = [r["score"] for r in paired]
        bf16_scores = [bf16[r["genome"]]["score"] for r in paired]
        acc = [r["last_acc"] for r in paired]
        bf16_seconds = sum(bf16[r["genome"]]["seconds"] for r in paired)
        lines += [f"bf16-autocast proxy (the same genomes, n={len(paired)}): Spearman with the fp32 proxy's score "
                  f"{stats.spearmanr(fp32_scores, bf16_scores)[0]:.3f}; Spearman(-score, final top-1) "
                  f"{stats.spearmanr([-x for x in bf16_scores], acc)[0]:.3f} (fp32 proxy: "
                  f"{stats.spearmanr([-x for x in fp32_scores], acc)[0]:.3f}); proxy seconds per genome "
                  f"{bf16_seconds / len(paired):.1f} (fp32: {sum(r['proxy_s'] for r in paired) / len(paired):.1f}).",
                  ""]
    if budgets and len(rows) >= 3:
        lines += budget_lines(rows, budgets, args.proxy_steps, weights)
    if seeds and len(rows) >= 3:
        lines += seed_lines(rows, seeds, args.seed, weights)
    if retrained and len(rows) >= 3:
        lines += retrain_lines(rows, retrained)
    lines += ["| genome | val CE | S-gap | CKA-gap | score | proxy top-1 % | final top-1 % | best top-1 % |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: r["score"]):
        label = f"{r['name']} `{r['genome']}`" if r["name"] != "random" else f"`{r['genome']}`"
        lines.append(f"| {label} | {r['val_ce']:.4f} | {r['s_gap']:.4f} | {r['cka_gap']:.4f} | {r['score']:.4f} "
                     f"| {100 * r['val_acc']:.2f} | {r['last_acc']:.2f} | {r['best_acc']:.2f} |")
    command = " ".join(["python", "experiments/correlation.py", *sys.argv[1:]])
    training_hours = (sum(r["train_s"] for r in rows) + sum(r["train_s"] for r in retrained)) / 3600
    lines += ["", f"Wall time of this invocation: {elapsed / 60:.1f} min; the full trainings behind these tables "
              f"took {training_hours:.1f} h of one thread in all (resumed and sharded runs included). Command: "
              f"`{command}`"]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def calibrate(paths: list[Path], out: Path) -> str:
    """Grid-search (ce=1, s_gap, cka_gap) for the largest mean Spearman of -score vs final top-1."""
    stems = [p.stem for p in paths]
    # Runs of one dataset share a file name (correlation_cifar10jpeg.csv): name those by their folder too.
    runs = {(f"{p.parent.name}/{p.stem}" if stems.count(p.stem) > 1 else p.stem): read_rows(p) for p in paths}
    if len(runs) < len(paths):
        raise SystemExit(f"--calibrate was given the same run twice: {', '.join(map(str, paths))}")
    table = []
    for s_w, c_w in itertools.product(GRID, GRID):
        w = ScoreWeights(1.0, s_w, c_w)
        per = {name: stats.spearmanr([-w.combine(r["val_ce"], r["s_gap"], r["cka_gap"]) for r in rows],
                                     [r["last_acc"] for r in rows])[0] for name, rows in runs.items()}
        table.append((sum(per.values()) / len(per), s_w, c_w, per))
    best = max(t[0] for t in table)
    # Simplest within 0.02 of the best: fewest non-zero extra weights, then weights closest to 1 (equal mix).
    near = [t for t in table if t[0] >= best - 0.02]
    chosen = min(near, key=lambda t: ((t[1] != 0) + (t[2] != 0), abs(math.log2(t[1] or 1)) + abs(math.log2(t[2] or 1)),
                                      -t[0]))
    names = list(runs)
    lines = ["# ScoreWeights calibration", "",
             f"Grid: ce = 1, s_gap and cka_gap in {list(GRID)}; objective: mean over runs of Spearman(-score, final "
             f"top-1). Runs: {', '.join(f'{n} (n={len(runs[n])})' for n in names)}.", "",
             f"Best mean Spearman {best:.3f}; chosen (simplest within 0.02 of the best: fewest non-zero weights, "
             f"then nearest to 1): ce 1, s_gap {chosen[1]:g}, cka_gap {chosen[2]:g}, mean Spearman "
             f"{chosen[0]:.3f} ({', '.join(f'{n} {chosen[3][n]:.3f}' for n in names)}).", "",
             "With so few points (each Spearman has a standard error of roughly 1/sqrt(n-1) ~ 0.25-0.3) the ranking "
             "of nearby grid points is mostly noise; the choice is a weak preference, not a measurement.", "",
             f"| s_gap | cka_gap | mean | {' | '.join(names)} |", "|---:|---:|---:|" + "---:|" * len(names)]
    for mean, s_w, c_w, per in sorted(table, key=lambda t: -t[0]):
        lines.append(f"| {s_w:g} | {c_w:g} | {mean:.3f} | {' | '.join(f'{per[n]:.3f}' for n in names)} |")
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "correlation_calibration.md").write_text(text)
    return text
