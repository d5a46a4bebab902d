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

The script runs the study; ``correlation_proxy.py`` holds its proxy stage (sampling and proxy scores),
``correlation_stats.py`` its statistics and ``correlation_report.py`` its CSV rows, markdown report and weight
calibration.

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
import json
import subprocess
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

from kdzero.data import proxy_subset
from kdzero.genome import Genome
from kdzero.loss import UnifiedLoss
from kdzero.models import create_model, load_checkpoint
from kdzero.proxy import ProxyResult, ProxyTask
from kdzero.train import TrainConfig, ensure_teacher, load_data, train_model

# The study's helper modules live beside this script; the path also lets tests load the script by file name.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from correlation_proxy import bf16_check, budget_path, log, proxy_config, rescore, sample_and_score, seed_path
from correlation_report import RETRAIN_FIELDS, append_row, calibrate, read_rows, write_markdown
from correlation_stats import noise_ceiling, retrain_lines, seed_lines  # noqa: F401 - the tests' entry points

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TEACHER_CKPT = SHARED / "teachers" / "akamaster-cifar10" / "resnet56-4bfd9763.th"
ARCHIVE = SHARED / "cifar10-jpeg.tar.gz"


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




# ------------------------------------------------------------------------------------------------ training stage


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
