"""Do the proxy metrics predict the accuracy a distiller reaches after full training? (KD-Zero supp. Table 1)

N random genomes of ``SHRUNK_SPACE`` (seeded; statically valid for the teacher/student pair and not rejected by
the proxy: rejected ones are counted and replaced by fresh draws) plus the presets that the proxy accepts are
proxy-scored (``kdzero.proxy.evaluate``: ``val_ce``, ``s_gap``, ``cka_gap``), then each genome trains a fresh,
identically initialised student with CE + UnifiedLoss(genome) for a longer budget (``kdzero.train.train_model``).
Printed and written to ``<out>/correlation_<dataset>.{csv,md}``: per genome the proxy metrics and the final
top-1; and the Pearson, Spearman and Kendall correlations between final top-1 and each of -CE, -S-gap,
-CKA-gap, -(CE+S-gap), -(CE+CKA-gap), -(all three), the sums weighted by the ``ScoreWeights`` in force.

Sign convention: every proxy metric is lower-is-better, so it is negated before correlating; a positive
coefficient means "a lower metric goes with a higher final accuracy", i.e. the metric predicts accuracy.

Pairs and budgets:

* ``digits``: teacher resnet20 (trained once by ``ensure_teacher``), student resnet8; proxy (default 40 steps,
  ~2 epochs) on the full digits train split; full training ``--train-epochs`` epochs (default 10, the CRD
  schedule shape; the 30-epoch digits default puts nearly every distiller at 99-100 % on the 300 test images,
  which leaves nothing to rank) on all of it; top-1 on the test split. 10-20 minutes on one busy CPU thread.
* ``cifar10jpeg``: akamaster's pretrained ResNet-56 teacher (``resnet56a``), student ``resnet20a``, ImageNet
  normalisation; a REDUCED CPU budget: proxy on ``--proxy-subset`` training images (class-balanced), validation
  metrics on ``--proxy-val`` validation images; full training for ``--train-epochs`` epochs on a
  ``--train-subset``-image class-balanced training subset (CRD schedule shape scaled to those epochs, batch 64,
  crop + flip), top-1 on a ``--test-subset``-image class-balanced test subset. The budget is written into the
  markdown output.

Partial results are written as they come: ``correlation_<dataset>_proxy.json`` holds the sampled genomes and
their proxy results, the CSV gets one row per trained genome, and a rerun with the same settings skips what is
already done (``--fresh`` starts over); ``--genomes`` may be raised on a rerun to add genomes.
Three studies reuse the trained genomes' final accuracies (each resumable, each a table in the markdown):
``--budgets 240 480`` proxy-scores the genomes again at other step budgets (does a longer proxy predict
better?); ``--proxy-seeds 1 2`` again with other proxy seeds (how much of a metric's ranking is proxy noise, and
does averaging seeds help?); ``--retrain N`` trains the first N genomes again with another training seed (how
noisy is the final accuracy itself, and what Spearman would a perfect predictor reach through that noise?).
``--calibrate A.csv B.csv`` instead grid-searches ``ScoreWeights`` (ce fixed at 1) for the largest mean
Spearman between -score and final top-1 over the given runs.

    python experiments/correlation.py --dataset digits --genomes 12
    python experiments/correlation.py --dataset cifar10jpeg --genomes 6 --proxy-steps 60 --proxy-subset 1000 \\
        --proxy-val 500 --train-subset 3000 --train-epochs 2 --test-subset 1000
    python experiments/correlation.py --calibrate experiments/results/correlation_digits.csv \\
        experiments/results/correlation_cifar10jpeg.csv
"""
from __future__ import annotations

import argparse
import csv
import fcntl
import itertools
import json
import math
import random
import subprocess
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from kdzero.data import proxy_subset
from kdzero.genome import SHRUNK_SPACE, Genome
from kdzero.loss import UnifiedLoss
from kdzero.models import create_model, load_checkpoint
from kdzero.presets import PRESETS
from kdzero.proxy import CPU_GROUP, ProxyConfig, ProxyResult, ProxyTask, evaluate
from kdzero.scoring import ScoreWeights
from kdzero.train import TrainConfig, ensure_teacher, load_data, train_model

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TEACHER_CKPT = SHARED / "teachers" / "akamaster-cifar10" / "resnet56-4bfd9763.th"
ARCHIVE = SHARED / "cifar10-jpeg.tar.gz"
CSV_FIELDS = ["name", "genome", "val_ce", "val_acc", "sharpness", "s_gap", "cka_gap", "score", "proxy_s",
              "best_acc", "last_acc", "train_s"]
RETRAIN_FIELDS = ["name", "genome", "train_seed", "best_acc", "last_acc", "train_s"]
PREDICTORS = [("-CE", ("val_ce",)), ("-S-gap", ("s_gap",)), ("-CKA-gap", ("cka_gap",)),
              ("-(CE+S-gap)", ("val_ce", "s_gap")), ("-(CE+CKA-gap)", ("val_ce", "cka_gap")),
              ("-(CE+S-gap+CKA-gap)", ("val_ce", "s_gap", "cka_gap"))]
WEIGHT_FIELD = {"val_ce": "ce", "s_gap": "s_gap", "cka_gap": "cka_gap"}
GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------------------------ setup


def ensure_cifar10_jpeg(folder: Path) -> Path:
    """Extract the shared CIFAR-10 JPEG archive into ``folder`` (train/<class>/, test/<class>/) unless present."""
    if not (folder / "train").is_dir() or not (folder / "test").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "xzf", str(ARCHIVE), "-C", str(folder)], check=True)
    return folder


def budget_label(args: argparse.Namespace) -> str:
    """How the markdown names the budget: CRD's full protocol on all of CIFAR-10, or a reduced one, and where."""
    full = args.train_epochs >= 240 and args.train_subset >= 50000
    where = f"{args.threads} CPU thread{'s' if args.threads > 1 else ''}" if args.device == "cpu" else args.device
    return f"{'full' if full else 'REDUCED'} budget on {where}"


def setup(args: argparse.Namespace):
    """(proxy data, full-training data, teacher, student name, budget note) of the chosen pair."""
    if args.dataset == "digits":
        data = load_data("digits")
        checkpoint = ensure_teacher("resnet20", data, progress=False, log=log)
        teacher = create_model("resnet20", num_classes=data.num_classes, in_chans=data.in_chans)
        load_checkpoint(teacher, checkpoint)
        student = "resnet8"
        proxy_data, train_data = data, data
        if args.train_subset:
            train_data = replace(data, train=proxy_subset(data.train, per_class=args.train_subset // 10))
        note = (f"digits, teacher resnet20 (trained by ensure_teacher), student resnet8; proxy: "
                f"{args.proxy_steps} steps, batch 64, {len(data.train)} train / {len(data.val)} val images; full "
                f"training: {args.train_epochs} epochs of the CRD schedule shape (batch 64, lr 0.05, milestones "
                f"scaled{', bf16 autocast' if args.train_bf16 else ''}) on {len(train_data.train)} train images, "
                f"top-1 on {len(data.test)} test images")
    else:
        folder = ensure_cifar10_jpeg(args.data)
        data = load_data(f"imagefolder:{folder}", normalize="imagenet")
        teacher = create_model("resnet56a", num_classes=10)
        load_checkpoint(teacher, TEACHER_CKPT)
        student = "resnet20a"
        proxy_data = replace(data, val=proxy_subset(data.val, per_class=args.proxy_val // data.num_classes,
                                                    seed=args.seed))
        train_data = replace(data, train=proxy_subset(data.train, per_class=args.train_subset // data.num_classes,
                                                      seed=args.seed),
                             test=proxy_subset(data.test, per_class=args.test_subset // data.num_classes,
                                               seed=args.seed))
        note = (f"CIFAR-10 JPEG, teacher resnet56a (akamaster, pretrained), student resnet20a, ImageNet "
                f"normalisation; {budget_label(args)}: proxy {args.proxy_steps} steps at batch 64 on "
                f"{args.proxy_subset} class-balanced train images (2 augmented views), val metrics on "
                f"{len(proxy_data.val)} val images; full training {args.train_epochs} epochs (CRD schedule shape, "
                f"batch 64, lr 0.05, crop+flip{', bf16 autocast' if args.train_bf16 else ''}) on a "
                f"{len(train_data.train)}-image class-balanced train subset, "
                f"top-1 on a {len(train_data.test)}-image class-balanced test subset")
    return proxy_data, train_data, teacher, student, note


def proxy_config(args: argparse.Namespace, bf16: bool = False, steps: int | None = None,
                 seed: int | None = None) -> ProxyConfig:
    """The proxy of this run; ``steps`` and ``seed`` override the budget and the proxy's seed (initialisation,
    batch order, augmented views, proxy train images) for the budget and seed studies."""
    subset = None if args.dataset == "digits" or not args.proxy_subset else args.proxy_subset // 10
    return ProxyConfig(steps=steps or args.proxy_steps, num_views=args.views, train_subset=subset,
                       seed=args.seed if seed is None else seed, bf16=bf16, device=args.device)


def bf16_check(task: ProxyTask, plan: list[tuple[str, ProxyResult]], state: dict, state_path: Path) -> None:
    """Proxy-score every planned genome again with bf16 autocast (``state["bf16"]``): does the faster proxy rank
    genomes as the fp32 one does, and predict final accuracy as well?"""
    scores = state.setdefault("bf16", {})
    todo = [Genome.parse(r.genome) for _, r in plan if r.genome not in scores]
    for genome, result in zip(todo, evaluate(task, todo) if todo else []):
        scores[str(genome)] = result.to_dict()
    state_path.write_text(json.dumps(state, indent=1) + "\n")


def budget_path(stem: Path, steps: int) -> Path:
    return stem.with_name(f"{stem.name}_proxy{steps}steps.json")


def seed_path(stem: Path, seed: int) -> Path:
    return stem.with_name(f"{stem.name}_proxyseed{seed}.json")


def rescore(make_task, plan: list[tuple[str, ProxyResult]], path: Path, identity: dict, label: str) -> dict:
    """Proxy-score every planned genome again with another proxy (``make_task()``: another step budget or seed),
    saving after each group to ``path`` so an interrupted study resumes; returns {genome: result dict}.
    The final accuracies do not depend on the proxy, so one training stage serves every variant."""
    saved = json.loads(path.read_text()) if path.is_file() else {}
    if saved.get("identity") != identity:
        saved = {"identity": identity, "variant": label, "results": {}}
    results = saved["results"]
    todo = [Genome.parse(r.genome) for _, r in plan if r.genome not in results]
    if todo:
        task = make_task()
        log(f"proxy {label}: {len(todo)} genomes to score")
        for i in range(0, len(todo), CPU_GROUP):
            group = todo[i:i + CPU_GROUP]
            for genome, result in zip(group, evaluate(task, group)):
                results[str(genome)] = result.to_dict()
            path.write_text(json.dumps(saved, indent=1) + "\n")
    return results


# ------------------------------------------------------------------------------------------------ proxy stage


def sample_and_score(task: ProxyTask, args: argparse.Namespace, state: dict, state_path: Path) -> None:
    """Fill ``state`` with the presets' and ``args.genomes`` accepted random genomes' proxy results."""
    def save() -> None:
        state_path.write_text(json.dumps(state, indent=1) + "\n")

    shapes = task.student_shapes, task.teacher_shapes
    if "baseline" not in state:
        base = task.baseline()
        state["baseline"] = base.to_dict()
        save()
        log(f"CE-only student: val CE {base.val_ce:.4f} s_gap {base.s_gap:.4f} cka_gap {base.cka_gap:.4f}")
    if "presets" not in state:
        names = [n for n, g in PRESETS.items() if g.is_valid(*shapes)]
        state["static_invalid_presets"] = [n for n in PRESETS if n not in names]
        results = evaluate(task, [PRESETS[n] for n in names])
        state["presets"] = {n: r.to_dict() for n, r in zip(names, results)}
        save()
        for n, r in zip(names, results):
            log(f"preset {n:7s} {r.status:9s} score {r.score:.4f} {r.reason}")
    rng = random.Random(args.seed)
    seen = set(map(str, PRESETS.values()))
    state.setdefault("random", [])
    state.setdefault("rejected", [])
    state.setdefault("static_invalid", 0)
    # Replay the draws already made, so a resumed run continues the same sequence.
    drawn = state.get("drawn", 0)
    for _ in range(drawn):
        seen.add(str(Genome.random(rng, SHRUNK_SPACE)))
    state.setdefault("spare", [])
    while state["spare"] and len(state["random"]) < args.genomes:  # accepted earlier beyond the count asked for
        state["random"].append(state["spare"].pop(0))
    while len(state["random"]) < args.genomes:
        need = args.genomes - len(state["random"])
        group: list[Genome] = []
        while len(group) < need + 1:  # one spare: some will be rejected
            genome = Genome.random(rng, SHRUNK_SPACE)
            state["drawn"] = state.get("drawn", 0) + 1
            text = str(genome)
            if text in seen:
                continue
            seen.add(text)
            if not genome.is_valid(*shapes):
                state["static_invalid"] += 1
                continue
            group.append(genome)
        for genome, result in zip(group, evaluate(task, group)):
            if result.rejected:
                state["rejected"].append(result.to_dict())
                log(f"rejected ({result.stage}): {genome} -- {result.reason}")
            else:
                state["random" if len(state["random"]) < args.genomes else "spare"].append(result.to_dict())
                log(f"accepted: {genome} score {result.score:.4f} ({result.seconds:.0f} s)")
        save()


# ------------------------------------------------------------------------------------------------ training stage


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


def train_one(genome: Genome, data, teacher, student_name: str, shapes, args: argparse.Namespace,
              seed: int | None = None) -> tuple:
    """(best, last top-1, seconds) of one full training; ``seed`` (default ``--seed``) sets the initialisation,
    batch order, augmentation and the loss's masks, never the data subsets."""
    seed = args.seed if seed is None else seed
    torch.manual_seed(seed)
    student = create_model(student_name, num_classes=data.num_classes, in_chans=data.in_chans)
    generator = torch.Generator().manual_seed(seed)
    loss = UnifiedLoss(genome, *shapes, generator=generator)
    config = TrainConfig.crd_protocol(student_name, epochs=args.train_epochs, eval_every=args.train_epochs,
                                      seed=seed, amp=args.train_bf16, device=args.device)
    started = time.perf_counter()
    result = train_model(student, data, config, teacher=teacher, distill_loss=loss, progress=False)
    return result.best_acc, result.last_acc, time.perf_counter() - started


# ------------------------------------------------------------------------------------------------ statistics


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


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("digits", "cifar10jpeg"), default="digits")
    parser.add_argument("--genomes", type=int, default=12, help="random genomes (presets come on top)")
    parser.add_argument("--proxy-steps", type=int, default=None, help="proxy SGD steps (40 digits, 60 cifar10jpeg)")
    parser.add_argument("--views", type=int, default=2, help="augmented views the proxy's teacher cache holds")
    parser.add_argument("--proxy-subset", type=int, default=1000, help="cifar10jpeg: proxy train images")
    parser.add_argument("--proxy-val", type=int, default=500, help="cifar10jpeg: proxy validation images")
    parser.add_argument("--train-epochs", type=int, default=None, help="full training (10 digits, 2 cifar10jpeg)")
    parser.add_argument("--train-subset", type=int, default=None,
                        help="full-training images, class-balanced (digits: all; cifar10jpeg: 3000)")
    parser.add_argument("--test-subset", type=int, default=1000, help="cifar10jpeg: test images for final top-1")
    parser.add_argument("--no-presets", action="store_true", help="random genomes only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=Path("/tmp/cifar10jpeg"))
    parser.add_argument("--out", type=Path, default=REPO / "experiments" / "results")
    parser.add_argument("--cache", type=Path, default=REPO / "runs" / "correlation", help="teacher-output cache")
    parser.add_argument("--fresh", action="store_true", help="ignore results of an earlier run with these settings")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N], for the proxy and the full trainings "
                                                        "(the tables' numbers do not depend on it beyond rounding)")
    parser.add_argument("--train-bf16", action="store_true",
                        help="full training under bf16 autocast (CUDA, or a CPU with AMX: 2-3.5x faster)")
    parser.add_argument("--bf16-check", action="store_true",
                        help="also proxy-score every genome with bf16 autocast and report how it ranks")
    parser.add_argument("--budgets", type=int, nargs="+", default=[], metavar="STEPS",
                        help="proxy budget study: also proxy-score the genomes with these step budgets and report "
                             "how well each predicts the (shared) final accuracies; one process per budget can run "
                             "side by side with --proxy-only")
    parser.add_argument("--proxy-seeds", type=int, nargs="+", default=[], metavar="SEED",
                        help="proxy reliability study: also proxy-score the genomes with these proxy seeds (another "
                             "initialisation, batch order, views and proxy train images) and report how much each "
                             "metric's ranking moves between seeds and how well the seed-averaged metric predicts")
    parser.add_argument("--retrain", type=int, default=0, metavar="N",
                        help="final-accuracy reproducibility: train the first N planned genomes again with training "
                             "seed --seed + 1 and report the training noise and the Spearman it allows at best")
    parser.add_argument("--proxy-only", action="store_true", help="stop after the proxy stage")
    parser.add_argument("--shard", default="0/1", metavar="K/N",
                        help="train only genomes K, K+N, K+2N, ... (run N processes side by side after one "
                             "--proxy-only run; they share the CSV; a final run without --shard writes the table)")
    parser.add_argument("--calibrate", type=Path, nargs="+", help="CSV files of earlier runs: calibrate weights")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.calibrate:
        print(calibrate(args.calibrate, args.out))
        return
    if args.train_epochs is None:
        args.train_epochs = 10 if args.dataset == "digits" else 2
    if args.proxy_steps is None:
        args.proxy_steps = 40 if args.dataset == "digits" else 60
    if args.train_subset is None and args.dataset == "cifar10jpeg":
        args.train_subset = 3000
    began = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"correlation_{args.dataset}"
    state_path, csv_path, md_path = (stem.with_name(stem.name + "_proxy.json"), stem.with_suffix(".csv"),
                                     stem.with_suffix(".md"))
    retrain_path = stem.with_name(stem.name + "_retrain.csv")
    identity = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k in ("dataset", "proxy_steps", "views", "proxy_subset", "proxy_val", "train_epochs",
                         "train_subset", "test_subset", "seed", "no_presets", "train_bf16")}
    state: dict = {}
    if state_path.is_file() and not args.fresh:
        state = json.loads(state_path.read_text())
        saved = {k: v for k, v in state.get("identity", {}).items() if k != "genomes"}  # older state files
        saved.setdefault("train_bf16", False)
        if saved != identity:
            raise SystemExit(f"{state_path} holds a run with other settings ({state.get('identity')}); "
                             "use --fresh or another --out")
        state["identity"] = identity
        log(f"resuming from {state_path} and {csv_path}")
    else:
        studies = [*stem.parent.glob(f"{stem.name}_proxy*steps.json"),  # --budgets, --proxy-seeds
                   *stem.parent.glob(f"{stem.name}_proxyseed*.json")]
        for path in (state_path, csv_path, md_path, retrain_path, *studies):
            path.unlink(missing_ok=True)
        state = {"identity": identity}

    proxy_data, train_data, teacher, student_name, note = setup(args)
    log(note)
    factory = partial(create_model, student_name, num_classes=proxy_data.num_classes, in_chans=proxy_data.in_chans)
    def cache_folder(seed: int) -> Path:
        return args.cache / f"{args.dataset}-s{seed}-v{args.views}-p{args.proxy_subset}"

    cache_dir = cache_folder(args.seed)
    task = ProxyTask(teacher, factory, proxy_data, proxy_config(args), cache_dir, log=log)
    weights = task.config.weights
    if "proxy_seconds" not in state or len(state.get("random", [])) < args.genomes:
        t0 = time.perf_counter()
        sample_and_score(task, args, state, state_path)
        state["proxy_seconds"] = state.get("proxy_seconds", 0) + time.perf_counter() - t0
        state_path.write_text(json.dumps(state, indent=1) + "\n")
    plan = [] if args.no_presets else [(n, ProxyResult.from_dict(r)) for n, r in state["presets"].items()
                                       if r["status"] == "complete"]
    plan += [("random", ProxyResult.from_dict(r)) for r in state["random"]]
    if args.bf16_check:
        bf16_task = ProxyTask(teacher, factory, proxy_data, proxy_config(args, bf16=True), cache_dir, log=log)
        bf16_check(bf16_task, plan, state, state_path)
    def make_task(steps: int | None = None, seed: int | None = None) -> ProxyTask:
        config = proxy_config(args, steps=steps, seed=seed)
        return ProxyTask(teacher, factory, proxy_data, config, cache_folder(config.seed), log=log)

    budgets = {steps: rescore(partial(make_task, steps=steps), plan, budget_path(stem, steps), identity,
                              f"budget {steps} steps")
               for steps in args.budgets if steps != args.proxy_steps}
    seeds = {seed: rescore(partial(make_task, seed=seed), plan, seed_path(stem, seed), identity, f"seed {seed}")
             for seed in args.proxy_seeds if seed != args.seed}
    if args.proxy_only:
        log(f"proxy stage done: {len(plan)} genomes planned ({state_path})")
        return
    shard, shards = (int(x) for x in args.shard.split("/"))

    rows = read_rows(csv_path)
    retrained = read_rows(retrain_path, RETRAIN_FIELDS)
    done = {r["genome"] for r in rows}
    shapes = task.student_shapes, task.teacher_shapes
    for position, (name, result) in enumerate(plan):
        if result.genome in done or position % shards != shard:
            continue
        best, last, seconds = train_one(Genome.parse(result.genome), train_data, teacher, student_name, shapes, args)
        row = {"name": name, "genome": result.genome, "val_ce": result.val_ce, "val_acc": result.val_acc,
               "sharpness": result.sharpness, "s_gap": result.s_gap, "cka_gap": result.cka_gap,
               "score": result.score, "proxy_s": round(result.seconds, 1), "best_acc": best, "last_acc": last,
               "train_s": round(seconds, 1)}
        append_row(csv_path, row)
        rows = read_rows(csv_path)
        log(f"trained {name:7s} {result.genome:45s} score {result.score:.4f} -> top-1 {last:.2f}% ({seconds:.0f} s)")
        write_markdown(md_path, rows, state, note, args, weights, len(plan), time.perf_counter() - began,
                       budgets, seeds, retrained)
    again = {r["genome"] for r in retrained}
    for position, (name, result) in enumerate(plan[:args.retrain]):
        if result.genome in again or position % shards != shard:
            continue
        best, last, seconds = train_one(Genome.parse(result.genome), train_data, teacher, student_name, shapes, args,
                                        seed=args.seed + 1)
        append_row(retrain_path, {"name": name, "genome": result.genome, "train_seed": args.seed + 1,
                                  "best_acc": best, "last_acc": last, "train_s": round(seconds, 1)}, RETRAIN_FIELDS)
        retrained = read_rows(retrain_path, RETRAIN_FIELDS)
        log(f"retrained {name:7s} {result.genome:45s} with training seed {args.seed + 1}: top-1 {last:.2f}%")
    print(write_markdown(md_path, rows, state, note, args, weights, len(plan), time.perf_counter() - began,
                       budgets, seeds, retrained))


if __name__ == "__main__":
    main()
