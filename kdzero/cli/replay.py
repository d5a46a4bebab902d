"""``kdzero replay``: full distillation training of a student with a genome, a classical method or a run's top-K."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from kdzero.cli._display import console
from kdzero.cli.train_teacher import add_training_options, config_from_args, log_line, set_threads
from kdzero.errors import ConfigError

EPILOG = """\
examples:
  kdzero replay --genome 'logit[no,no,no]|kl|no|T4|x1' --student resnet8 --dataset digits
      digits trains (once per training data) and reuses its own teacher, runs/teachers/resnet20-digits-KEY/best.pt
  kdzero replay --method ce --student resnet8 --seeds 3
      the CE-only baseline over seeds 0, 1, 2: mean and std of best-epoch and last-epoch top-1
  kdzero replay runs/r56-r20 --rank 1 --device cuda
      the best distiller of a search run, on that run's teacher, student and data (its pair.json), full
      240-epoch CRD protocol; an option that contradicts the run (--student, --dataset, ...) is an error
  kdzero replay --method kd --teacher resnet56a --teacher-ckpt resnet56-4bfd9763.th --student resnet20 \\
      --dataset imagefolder:/data/cifar10-jpeg --normalize imagenet --train-subset 5000 --epochs 15
      CIFAR-10 JPEGs with an akamaster teacher (trained with ImageNet normalisation)

Both the best-epoch and the last-epoch test top-1 are reported: the field's tables mix the two. Each seed trains
in OUT/seed<k>/ (best.pt, last.pt, results.json); OUT/results.json holds the summary. Without --out, a new
folder is used (RUN/replay-rank<K>, or runs/replay/<student>-<data>-<distiller>, with -2, -3, ... appended when
taken), so a replay never overwrites an earlier one; --resume without --out continues the latest.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``replay`` sub-command."""
    parser = subparsers.add_parser(
        "replay", help="fully train a student with a genome, a classical method or a search run's top-K",
        description="Distil a student from a teacher over a full training schedule (the CRD protocol by default)\n"
                    "with a genome (--genome), a classical method (--method) or the K-th best genome of a search\n"
                    "run (RUN --rank K), and report its best-epoch and last-epoch test top-1.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_path", nargs="?", metavar="RUN", help="a search run folder; use with --rank")
    which = parser.add_argument_group("distiller (one of)")
    which.add_argument("--genome", metavar="TEXT", help="genome text, e.g. 'logit[no,no,no]|kl|no|T4|x1'")
    which.add_argument("--method", metavar="NAME",
                       help="ce (the student alone: the CE baseline) or a classical method of kdzero.methods: "
                            "kd, ls (KD+LS), dkd, dkd_ls (DKD+LS), at, sp, ofd, rkd, pkt, cc, fitnet, ickd, cwd, crd, "
                            "alpha, tfkd")
    which.add_argument("--rank", type=int, metavar="K", help="with RUN: the K-th best genome of its leaderboard")
    models = parser.add_argument_group("models")
    models.add_argument("--student", help="student model: a zoo name, torchvision:NAME, timm:NAME or "
                                           "package.module:function (default resnet8; with RUN: the run's)")
    models.add_argument("--teacher", metavar="MODEL",
                        help="teacher model; on digits without --teacher-ckpt, resnet20 trained once into "
                             "runs/teachers/")
    models.add_argument("--teacher-ckpt", metavar="PATH", help="teacher checkpoint, loaded strictly")
    models.add_argument("--seeds", type=int, default=1, metavar="N",
                        help="train N seeds from --seed on (0..N-1 by default), report mean and std")
    add_training_options(parser)
    parser.set_defaults(func=run, dataset=None, normalize=None)  # None: not given (a run's own, or the default)


def _distiller(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(genome, method) from the options, exactly one of them set."""
    if args.rank is not None and not args.run_path:
        raise ConfigError("--rank K needs a search run folder: kdzero replay RUN --rank K")
    if args.run_path and args.rank is None:
        raise ConfigError(f"which genome of {args.run_path}? add --rank K (1 = best)")
    given = [flag for flag, value in (("--genome", args.genome), ("--method", args.method), ("RUN --rank", args.rank))
             if value is not None]
    if len(given) != 1:
        raise ConfigError(f"give exactly one of --genome TEXT, --method NAME or RUN --rank K (got "
                          f"{', '.join(given) or 'none'})")
    if args.rank is not None:
        from kdzero.leaderboard import genome_at

        return genome_at(args.run_path, args.rank), None
    return args.genome, args.method


def _use_run_pair(args: argparse.Namespace) -> None:
    """Fill the pair options from the run's recorded pair; a given option that contradicts it is an error.
    A run folder that records nothing (a study copied without its config) leaves the options as given."""
    from kdzero.search.record import PAIR_FILE, apply_pair, run_pair

    run_dir = Path(args.run_path)
    if not (run_dir / PAIR_FILE).is_file() and not (run_dir / "config.json").is_file():
        return
    pair = run_pair(run_dir)
    given = {"student": args.student, "teacher": args.teacher, "teacher_ckpt": args.teacher_ckpt,
             "dataset": args.dataset, "data_root": args.data_root, "normalize": args.normalize}
    resolved = apply_pair(pair, args.run_path, given, warn=log_line)
    pair.check_teacher()
    for name, value in resolved.items():
        setattr(args, name, value)


def _new_out_dir(args: argparse.Namespace, student: str, dataset: str, label: str) -> Path:
    """A replay folder no earlier replay used (``--resume``: the latest one, to continue it)."""
    from kdzero.train import replay_dir

    base = Path(args.run_path) / f"replay-rank{args.rank}" if args.run_path else replay_dir(student, dataset, label)
    taken = [base, *(base.with_name(f"{base.name}-{k}") for k in range(2, 1000))]
    existing = [path for path in taken if path.exists()]
    if args.resume:
        return existing[-1] if existing else base
    return next(path for path in taken if not path.exists())


def run(args: argparse.Namespace) -> int:
    """Resolve the distiller, train every seed, print the table (or JSON)."""
    from kdzero.genome import Genome
    from kdzero.train import load_data, replay

    if args.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {args.seeds}")
    genome, method = _distiller(args)
    if args.run_path is not None:
        _use_run_pair(args)
    student = args.student or "resnet8"
    data = load_data(args.dataset or "digits", args.data_root, normalize=args.normalize or "dataset",
                     train_subset=args.train_subset)
    set_threads(args, data.name)
    label = str(Genome.parse(genome)) if genome is not None else method
    out = args.out or _new_out_dir(args, student, data.name, label)
    result = replay(student, data, genome=genome, method=method, teacher=args.teacher,
                    teacher_ckpt=args.teacher_ckpt, config=config_from_args(args, student, data.name),
                    seeds=range(args.seed, args.seed + args.seeds), out=out, resume=args.resume,
                    progress=not (args.no_progress or args.json), log=log_line)
    summary = result.to_dict()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    table = Table(title=escape(f"{student} distilled with {result.label} on {data.name}"))
    for column in ("seed", "best top-1 (epoch)", "last top-1", "time"):
        table.add_column(column, justify="right")
    for r in result.runs:
        table.add_row(str(r.config.seed), f"{r.best_acc:.2f}% ({r.best_epoch})", f"{r.last_acc:.2f}%",
                      f"{r.seconds:.0f} s")
    if len(result.runs) > 1:
        table.add_row("mean ± std", f"{summary['best_acc_mean']:.2f} ± {summary['best_acc_std']:.2f}%",
                      f"{summary['last_acc_mean']:.2f} ± {summary['last_acc_std']:.2f}%", "", style="bold")
    console.print(table)
    out = result.runs[0].run_dir.parent if result.runs[0].run_dir else None
    if out is not None:
        console.print(f"results: {escape(str(out / 'results.json'))}", highlight=False)
    return 0
