"""``kdzero student-search``: training-free search for the student architecture that suits a teacher (DisWOT)."""
from __future__ import annotations

import argparse
import re
import shlex

from rich import box
from rich.markup import escape
from rich.table import Table

from kdzero.cli._display import console, err_console
from kdzero.cli.train_teacher import log_line, set_threads
from kdzero.diswot import DEFAULT_BUDGET_RATIO
from kdzero.errors import ConfigError

EPILOG = """\
examples:
  kdzero student-search
      digits: trains its resnet20 teacher once (runs/teachers/), scores 20 + 100 students in about a minute,
      each at most half the teacher's parameters and half its FLOPs (the default budget, 0.5x), then the
      verdict: the top 3, the hand pick and the largest student distilled with KD, 2 seeds each
  kdzero student-search --budget-params 0.1M --budget-flops 0.25x
      an absolute parameter bound and a quarter of the teacher's FLOPs
  kdzero student-search --teacher resnet56a --teacher-ckpt resnet56-4bfd9763.th --budget-params 0.3M \\
      --budget-flops 40M --dataset imagefolder:/data/cifar10-jpeg --normalize imagenet
      CIFAR-10 students for akamaster's pretrained ResNet-56
  kdzero student-search --random-teacher --population 4 --cycles 4 --name tiny
      a randomly initialised teacher (no training at all)

Students are CIFAR ResNets with free blocks and width per stage, 'resnet[3,3,3]x[16,32,64]', and Wide ResNets,
'wrn_d16_w2'. Each is scored once, at initialisation, on one batch: DisWOT = relation + semantic similarity to
the teacher (higher is better; the study stores -score, so lower is better there as everywhere in kdzero).
Results: runs/NAME/study.db; 'kdzero leaderboard runs/NAME' lists them.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``student-search`` sub-command."""
    parser = subparsers.add_parser(
        "student-search", help="find the student architecture that suits a teacher, without training (DisWOT)",
        description="Aging evolution over student architectures under a parameter/FLOPs budget, every student\n"
                    "scored at initialisation by its DisWOT similarity to the teacher on one batch.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    teacher = parser.add_argument_group("teacher")
    teacher.add_argument("--teacher", metavar="MODEL",
                         help="teacher zoo model (digits default: resnet20, trained once into runs/teachers/)")
    which = teacher.add_mutually_exclusive_group()
    which.add_argument("--teacher-ckpt", metavar="PATH", help="teacher checkpoint, loaded strictly")
    which.add_argument("--random-teacher", action="store_true", help="use the teacher at random initialisation")
    space = parser.add_argument_group("students")
    space.add_argument("--budget-params", metavar="N", default=f"{DEFAULT_BUDGET_RATIO}x",
                       help="most parameters: a count (0.3M, 250k) or a fraction of the teacher's "
                            f"(0.25x); default {DEFAULT_BUDGET_RATIO}x")
    space.add_argument("--budget-flops", metavar="N", default=f"{DEFAULT_BUDGET_RATIO}x",
                       help="most FLOPs (multiply-accumulates per image): a count (40M) or a fraction of the "
                            f"teacher's (0.25x); default {DEFAULT_BUDGET_RATIO}x")
    space.add_argument("--families", default="resnet,wrn", help="student families (default resnet,wrn)")
    search = parser.add_argument_group("search (aging evolution)")
    search.add_argument("--population", type=int, default=20, help="population size P (20)")
    search.add_argument("--cycles", type=int, default=100, help="children born, one per cycle (100)")
    search.add_argument("--sample", type=int, default=5, help="tournament size S: best of S is the parent (5)")
    search.add_argument("--batch-size", type=int, default=64, help="images in the one scoring batch (64)")
    search.add_argument("--seed", type=int, default=0, help="seed of the batch, the search and the students (0)")
    data = parser.add_argument_group("data and run")
    data.add_argument("--dataset", default="digits", help="digits (default), cifar10, cifar100 or imagefolder:PATH")
    data.add_argument("--data-root", metavar="DIR", help="folder holding the CIFAR files")
    data.add_argument("--normalize", choices=("dataset", "imagenet"), default="dataset",
                      help="input normalisation (imagenet for the akamaster resnet*a teachers)")
    data.add_argument("--name", help="run name: results in RUNS/NAME (default diswot-TEACHER-DATASET)")
    data.add_argument("--runs", default="runs", metavar="DIR", help="folder of run directories (runs)")
    data.add_argument("--top", type=int, default=5, help="students shown in the table (5)")
    data.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    data.add_argument("--threads", type=int, metavar="N", help="CPU threads (default 1 on digits)")
    data.add_argument("--no-progress", action="store_true", help="no progress bar")
    verdict = parser.add_argument_group("verdict (students distilled for real)")
    verdict.add_argument("--confirm", type=int, default=3, metavar="K",
                         help="after the search, distil the top K students, the hand pick (largest standard ResNet "
                              "within the budget) and the largest student with KD over seeds (default 3; 0: no)")
    verdict.add_argument("--confirm-epochs", type=int, metavar="E",
                         help="epochs per training (default: the dataset's replay default, 30 on digits)")
    verdict.add_argument("--confirm-seeds", type=int, default=2, metavar="S", help="seeds per student (default 2)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the data and the teacher, run the search, print the best students and how to replay the best."""
    from pathlib import Path

    import torch

    from kdzero.diswot import Budget, SearchSpace, StudentSearch, format_count, model_cost, parse_limit
    from kdzero.leaderboard.students import student_frame, student_table
    from kdzero.models import create_model
    from kdzero.train import DEFAULT_DIGITS_TEACHER, ensure_teacher, load_data, load_teacher

    for name in ("population", "cycles", "sample", "top"):
        if getattr(args, name) < (0 if name == "cycles" else 1):
            raise ConfigError(f"--{name} must be at least {0 if name == 'cycles' else 1}, got {getattr(args, name)}")
    if args.batch_size < 2:
        raise ConfigError(f"--batch-size must be at least 2, got {args.batch_size}")
    data = load_data(args.dataset, args.data_root, normalize=args.normalize)
    set_threads(args, data.name)
    teacher_name = args.teacher or (DEFAULT_DIGITS_TEACHER if data.name == "digits" else None)
    if teacher_name is None:
        raise ConfigError(f"searching students on {data.name} needs --teacher MODEL (with --teacher-ckpt PATH or "
                          "--random-teacher)")
    ckpt = args.teacher_ckpt
    if args.random_teacher:
        torch.manual_seed(args.seed)
        teacher = create_model(teacher_name, num_classes=data.num_classes, in_chans=data.in_chans)
    else:
        if ckpt is None:
            if data.name != "digits":
                raise ConfigError(f"on {data.name} give --teacher-ckpt PATH (only digits trains its own teacher) "
                                  "or --random-teacher")
            ckpt = ensure_teacher(teacher_name, data, progress=not args.no_progress, log=log_line)
        teacher = load_teacher(teacher_name, ckpt, data)
    teacher.to(args.device)

    split = data.train
    pick = torch.randperm(len(split), generator=torch.Generator().manual_seed(args.seed))[:args.batch_size]
    images, labels = split.normalize(split.images[pick]).to(args.device), split.labels[pick].to(args.device)
    teacher_cost = model_cost(teacher, data.in_chans, data.image_size)
    budget = Budget(params=parse_limit(args.budget_params, teacher_cost.params, "--budget-params"),
                    flops=parse_limit(args.budget_flops, teacher_cost.flops, "--budget-flops"))
    space = SearchSpace(families=tuple(f.strip() for f in args.families.split(",") if f.strip()))
    name = args.name or f"diswot-{teacher_name}-{re.sub(r'[^A-Za-z0-9._-]+', '_', data.name).strip('_')}"
    run_dir = Path(args.runs) / name
    settings = {"teacher": teacher_name, "teacher_ckpt": str(ckpt) if ckpt else None,
                "random_teacher": args.random_teacher, "dataset": data.name, "normalize": args.normalize}
    search = StudentSearch(teacher, images, labels, data.num_classes, data.in_chans, data.image_size, run_dir,
                           budget=budget, space=space, seed=args.seed, settings=settings)
    err_console.print(f"teacher {escape(teacher_name)} ({format_count(teacher_cost.params)} params, "
                      f"{format_count(teacher_cost.flops)} FLOPs); students within {budget.relative_to(teacher_cost)}; "
                      f"run {escape(str(run_dir))}",
                      highlight=False)
    result = _search(search, args)

    board = student_frame(search.study).head(args.top)
    console.print(student_table(board, title=f"best students for {teacher_name} on {data.name} "
                                             "(DisWOT, higher is better)"))
    console.print(f"{result.scored} students scored ({len(result.history)} births); leaderboard: "
                  f"kdzero leaderboard {escape(shlex.quote(str(run_dir)))}", highlight=False)
    if args.confirm > 0:
        _confirm(search, budget, data, teacher, teacher_name, args)
    note = ""
    if args.random_teacher:
        note = " (the search used a random teacher; replay distils from a trained one"
        note += ", trained once on digits)" if data.name == "digits" else ": add --teacher-ckpt PATH)"
    console.print(f"replay the best with KD{note}:", highlight=False)
    console.print(escape(replay_command(str(result.best(1)[0].arch), teacher_name, ckpt, args)),
                  highlight=False, soft_wrap=True)
    return 0


def replay_command(student: str, teacher: str, ckpt, args: argparse.Namespace) -> str:
    """The ``kdzero replay`` command that distils ``student`` from the searched teacher with KD."""
    parts = ["kdzero", "replay", "--method", "kd", "--teacher", teacher]
    if ckpt is not None:
        parts += ["--teacher-ckpt", str(ckpt)]
    parts += ["--student", student, "--dataset", args.dataset]
    if args.normalize != "dataset":
        parts += ["--normalize", args.normalize]
    if args.data_root:
        parts += ["--data-root", args.data_root]
    return " ".join(shlex.quote(p) for p in parts)


def _search(search, args: argparse.Namespace):
    """Run the evolution under a rich progress bar (births; best score so far)."""
    if args.no_progress:
        return search.run(population=args.population, cycles=args.cycles, sample=args.sample)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    best = [float("-inf")]
    with Progress(TextColumn("students"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task("search", total=args.population + args.cycles, info="")

        def on_birth(member, fresh: bool) -> None:
            best[0] = max(best[0], member.score)
            bar.update(task, advance=1, info=escape(f"best {best[0]:.5f}  last {member.arch}"))

        return search.run(population=args.population, cycles=args.cycles, sample=args.sample, on_birth=on_birth)


def _confirm(search, budget, data, teacher, teacher_name: str, args: argparse.Namespace) -> None:
    """Distil the top students, the hand pick and the largest student with KD over seeds; print the verdict."""
    from kdzero.confirm import ConfirmSettings
    from kdzero.leaderboard.students import student_frame
    from kdzero.student_confirm import confirm_students, hand_pick, student_entrants
    from kdzero.train import TrainConfig

    if args.random_teacher:
        console.print("no verdict: a random teacher distils nothing (give --teacher-ckpt, or leave both out on "
                      "digits, to distil the students for real)", highlight=False)
        return
    for name in ("confirm_epochs", "confirm_seeds"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    epochs = args.confirm_epochs or TrainConfig.for_dataset(teacher_name, data.name).epochs
    settings = ConfirmSettings(top=args.confirm, epochs=epochs, subset=None, seeds=args.confirm_seeds)
    entrants = student_entrants(student_frame(search.study), args.confirm, hand_pick(budget, data))
    console.print(f"distilling {len(entrants)} students with KD from {teacher_name}: {settings.seeds} seeds x "
                  f"{settings.epochs} epochs each", highlight=False)
    log = (lambda _m: None) if args.no_progress else (lambda m: err_console.print(m, markup=False, highlight=False))
    table = confirm_students(search.study, entrants, data, teacher, settings, search.run_dir, device=args.device,
                             log=log)
    console.print(verdict_table(table, title=f"verdict: students for {teacher_name} distilled with KD "
                                             f"(test top-1 %, {settings.seeds} seeds x {settings.epochs} epochs)"))
    line = verdict_line(table)
    if line:
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def verdict_table(table, title: str):
    """The confirmed students as a rich table: names never wrap; gains over the hand pick with their noise."""
    from kdzero.diswot import format_count

    out = Table(title=escape(title), title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for header in ("rank", "student", "role", "params", "FLOPs", "top-1 %", "vs hand pick"):
        out.add_column(header, justify="left" if header in ("student", "role") else "right", no_wrap=True)
    for row in table.itertuples(index=False):
        gain = "" if row.vs_hand == "" else (f"{row.gain_hand:+.2f} ±{row.noise_hand:.2f}"
                                              + (" noise" if row.vs_hand == "within noise" else ""))
        out.add_row(str(row.rank), escape(row.student), escape(row.role), format_count(int(row.params)),
                    format_count(int(row.flops)), f"{row.last_mean:.2f} ± {row.last_std:.2f}", gain,
                    style="green" if row.rank == 1 else "")
    return out


def verdict_line(table) -> str:
    """``DisWOT's pick S: 97.1 ± 0.3, +0.8 ± 0.6 over the hand pick resnet8, within noise``."""
    pick = table[table.role.str.contains("DisWOT #1")]
    hand = table[table.role.str.contains("hand pick")]
    if pick.empty or hand.empty:
        return ""
    p, h = pick.iloc[0], hand.iloc[0]
    if p.student == h.student:
        return f"DisWOT's pick is the hand pick, {p.student}: {p.last_mean:.2f} ± {p.last_std:.2f}"
    return (f"DisWOT's pick {p.student}: {p.last_mean:.2f} ± {p.last_std:.2f}, {p.gain_hand:+.2f} ± "
            f"{p.noise_hand:.2f} over the hand pick {h.student} ({h.last_mean:.2f}), {p.vs_hand}")
