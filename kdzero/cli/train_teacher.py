"""``kdzero train-teacher``: train a teacher from scratch with the CRD protocol and save it for distillation."""
from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from kdzero.cli._display import console, err_console
from kdzero.errors import ConfigError

if TYPE_CHECKING:
    from kdzero.train import TrainConfig

EPILOG = """\
examples:
  kdzero train-teacher --model resnet8 --dataset digits
      the offline default: 30 epochs on scikit-learn's 8x8 digits, ~97% test top-1 in about a minute on a CPU
  kdzero train-teacher --model resnet56 --dataset cifar100 --data-root ~/data --device cuda
      the CRD/RepDistiller protocol: 240 epochs, batch 64, SGD lr 0.05 (x0.1 at 150/180/210), wd 5e-4
  kdzero train-teacher --model resnet32x4 --dataset cifar100 --epochs 120 --out runs/teachers/r32x4
      a shorter schedule: the milestones scale with it (75/90/105)
  kdzero train-teacher --model resnet56 --dataset cifar100 --out runs/teachers/r56 --resume
      continue an interrupted run from its last.pt, exactly where it stopped

The teacher is written to OUT/best.pt (best test epoch, weights only), OUT/last.pt (everything needed to resume)
and OUT/results.json; pass OUT/best.pt to 'kdzero replay --teacher-ckpt'.
"""


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """The schedule, data and device options shared by ``train-teacher`` and ``replay``."""
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="digits",
                      help="digits (bundled, default), cifar10, cifar100 or imagefolder:PATH")
    data.add_argument("--data-root", metavar="DIR",
                      help="folder holding the CIFAR files (default ~/.cache/kdzero/data)")
    data.add_argument("--normalize", choices=("dataset", "imagenet"), default="dataset",
                      help="input normalisation: the dataset's own statistics (default) or the ImageNet mean/std "
                           "(what the akamaster CIFAR-10 teachers, resnet*a, were trained with)")
    data.add_argument("--train-subset", type=int, metavar="N",
                      help="train on a seeded class-balanced subset of N images (quick experiments)")
    schedule = parser.add_argument_group("schedule (default: CRD protocol; digits: 30 epochs)")
    schedule.add_argument("--epochs", type=int, help="epochs (240; 30 on digits); milestones scale with it")
    schedule.add_argument("--lr", type=float, help="initial learning rate (0.05; 0.01 for MobileNet/ShuffleNet)")
    schedule.add_argument("--batch-size", type=int, help="mini-batch size (64)")
    schedule.add_argument("--milestones", type=_int_list, metavar="E1,E2,...",
                          help="epochs at which the lr is multiplied by 0.1 (default 150/180/210 of 240, scaled)")
    schedule.add_argument("--weight-decay", type=float, help="SGD weight decay (5e-4)")
    schedule.add_argument("--seed", type=int, default=0, help="seed of initialisation, order and augmentation (0)")
    run = parser.add_argument_group("run")
    run.add_argument("--out", metavar="DIR", help="output folder (checkpoints and results.json)")
    run.add_argument("--resume", action="store_true", help="continue from OUT/last.pt if it exists")
    run.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    run.add_argument("--eval-every", type=int, metavar="N",
                     help="evaluate the test split every N epochs and after the last (default 1)")
    run.add_argument("--amp", action="store_true", help="bf16 autocast: CUDA, or a CPU with AMX "
                     "(dense CNNs 2-3.5x faster there; MobileNet/ShuffleNet slower)")
    run.add_argument("--threads", type=int, metavar="N",
                     help="CPU threads for torch (default 1 on digits, whose 8x8 images are too small to share "
                          "across threads, and torch's own choice elsewhere)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars (the per-epoch lines remain)")
    run.add_argument("--json", action="store_true", help="print the results as JSON on stdout")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected epochs like 150,180,210, got {text!r}") from None


def config_from_args(args: argparse.Namespace, model_name: str, dataset: str) -> TrainConfig:
    """The TrainConfig of the parsed options: ``TrainConfig.for_dataset`` with every given option applied."""
    from kdzero.train import TrainConfig

    return TrainConfig.for_dataset(model_name, dataset, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                   milestones=args.milestones, weight_decay=args.weight_decay, seed=args.seed,
                                   device=args.device, amp=args.amp or None, eval_every=args.eval_every)


def set_threads(args: argparse.Namespace, dataset: str) -> None:
    """Apply ``--threads``, or its digits default of 1: on 8x8 images extra threads only add synchronisation,
    and on a busy machine two threads ran a resnet8 step ~15x slower than one."""
    import torch

    threads = args.threads if args.threads is not None else (1 if dataset == "digits" else None)
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)


def log_line(line: str) -> None:
    """Print a training line (one per epoch, and notes such as a resume) on stderr, keeping stdout for results."""
    err_console.print(escape(line), highlight=False, soft_wrap=True)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train-teacher`` sub-command."""
    parser = subparsers.add_parser(
        "train-teacher", help="train a teacher from scratch (CRD protocol) and save best.pt/last.pt",
        description="Train a zoo model from scratch on a dataset with the CRD/RepDistiller protocol (every knob\n"
                    "overridable) and save it as a teacher for 'kdzero replay' and 'kdzero search'.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="zoo model name, e.g. resnet8, resnet56, resnet32x4, wrn_40_2")
    add_training_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train, save, print the final numbers."""
    from kdzero.train import load_data, teacher_dir, train_teacher

    data = load_data(args.dataset, args.data_root, normalize=args.normalize, train_subset=args.train_subset)
    set_threads(args, data.name)
    config = config_from_args(args, args.model, data.name)
    out = args.out or teacher_dir(args.model, data, config)
    result = train_teacher(args.model, data, config=config, out=out, resume=args.resume,
                           progress=not (args.no_progress or args.json), log=log_line)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    table = Table(title=f"teacher {escape(args.model)} on {escape(data.name)}", show_header=False)
    table.add_row("best test top-1", f"{result.best_acc:.2f}% (epoch {result.best_epoch})")
    table.add_row("last test top-1", f"{result.last_acc:.2f}% (epoch {len(result.history)})")
    table.add_row("schedule", f"{config.epochs} epochs, batch {config.batch_size}, lr {config.lr:g}, "
                              f"milestones {','.join(map(str, config.milestones))}")
    table.add_row("time", f"{result.seconds:.1f} s")
    table.add_row("saved", escape(f"{out}/best.pt (use with --teacher-ckpt), {out}/last.pt, {out}/results.json"))
    console.print(table)
    return 0
