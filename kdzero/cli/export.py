"""``kdzero export``: a genome, given or taken from a search run, as a standalone PyTorch source file."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kdzero.cli._display import err_console, parse_shapes
from kdzero.errors import ConfigError

EPILOG = """\
examples:
  kdzero export runs/digits --rank 1 -o my_distiller.py    # the run's recorded shapes size any connector
  kdzero export --genome 'feat[pow2,channel,norm_HW]|l2|no|T1|x100' -o at_distiller.py
  kdzero export --genome 'feat[no,no,no]|l2|no|T1|x100' --student-shapes feat=64x8x8 --teacher-shapes feat=256x8x8

The file imports only torch and defines Distiller(nn.Module): loss = Distiller(...)(student, teacher, target).
With shapes, a needed connector's widths become Distiller's defaults; without, pass them to Distiller.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` sub-command."""
    parser = subparsers.add_parser(
        "export", help="write a genome as a standalone PyTorch file (class Distiller)",
        description="Write the distiller of a genome (--genome TEXT, or the K-th best of a search run) as a\n"
                    "standalone PyTorch source file that computes exactly what kdzero's UnifiedLoss computes.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_path", nargs="?", metavar="RUN", help="a search run folder (runs/NAME)")
    parser.add_argument("--rank", type=int, metavar="K", help="with RUN: the K-th best genome (default 1)")
    parser.add_argument("--storage", metavar="URL", help="read the run from this storage URL instead of RUN")
    parser.add_argument("--study", metavar="NAME", help="study name in --storage")
    parser.add_argument("--genome", metavar="TEXT", help="genome text, e.g. 'logit[no,no,no]|kl|no|T4|x1'")
    parser.add_argument("--student-shapes", metavar="SHAPES", help="student per-sample shapes, e.g. feat=64x8x8")
    parser.add_argument("--teacher-shapes", metavar="SHAPES", help="teacher per-sample shapes, e.g. feat=256x8x8")
    parser.add_argument("-o", "--output", metavar="FILE", help="write here (default: standard output)")
    parser.set_defaults(func=run)


def _run_shapes(run_path: str) -> tuple[dict | None, dict | None]:
    """The student and teacher feature shapes a run recorded (pair.json), so that a connector's widths
    become the exported Distiller's defaults; (None, None) for a run without them."""
    from kdzero.search.record import load_pair

    pair = load_pair(run_path)
    if pair is None or not pair.student_shapes or not pair.teacher_shapes:
        return None, None
    return ({k: tuple(v) for k, v in pair.student_shapes.items()},
            {k: tuple(v) for k, v in pair.teacher_shapes.items()})


def run(args: argparse.Namespace) -> int:
    """Resolve the genome, generate the source, write or print it."""
    from kdzero.export import export_source

    from_run = args.run_path is not None or args.storage is not None or args.study is not None
    if from_run == (args.genome is not None):
        raise ConfigError("give either --genome TEXT, or a run (RUN, or --storage URL --study NAME) with --rank K")
    if args.rank is not None and not from_run:
        raise ConfigError("--rank K needs a search run: kdzero export RUN --rank K")
    student = parse_shapes(args.student_shapes, "--student-shapes")
    teacher = parse_shapes(args.teacher_shapes, "--teacher-shapes")
    if (student is None) != (teacher is None):
        raise ConfigError("give both --student-shapes and --teacher-shapes, or neither")
    genome, origin, rank = args.genome, None, None
    if from_run:
        from kdzero.leaderboard import genome_at

        rank = 1 if args.rank is None else args.rank
        genome = genome_at(args.run_path, rank, storage=args.storage, study=args.study)
        origin = args.run_path or f"study {args.study}"
        if student is None and args.run_path is not None:
            student, teacher = _run_shapes(args.run_path)
    source = export_source(genome, run=origin, rank=rank, student_shapes=student, teacher_shapes=teacher)
    if args.output is None:
        sys.stdout.write(source)
        return 0
    path = Path(args.output)
    try:
        path.write_text(source)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    err_console.print(f"wrote {path}", highlight=False, markup=False)
    return 0
