"""``kdzero genome check``: validate a genome text and print its canonical form."""
from __future__ import annotations

import argparse
import json

from rich.markup import escape

from kdzero.cli._display import console, parse_shapes
from kdzero.genome import Genome


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``genome`` sub-command group."""
    parser = subparsers.add_parser("genome", help="work with genome texts (check)",
                                   description="Genome texts: INPUT[T1,T2,T3]|DISTANCE|WEIGHT|T<temp>|x<magnitude>")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check", help="validate a genome text and print its canonical form and key",
        description="Validate a genome text, optionally against the feature shapes of a student and a teacher, "
                    "and print its canonical form. Example: kdzero genome check 'logit[no,no,no]|kl|no|T4|x1'")
    check.add_argument("genome", help="genome text, e.g. 'feat[pow2,channel,norm_HW]|l2|no|T1|x100'")
    check.add_argument("--student-shapes", metavar="SHAPES",
                       help="student per-sample shapes, e.g. feat=64x8x8,emb=64,logit=100")
    check.add_argument("--teacher-shapes", metavar="SHAPES",
                       help="teacher per-sample shapes, e.g. feat=256x8x8,emb=256,logit=100")
    check.add_argument("--json", action="store_true", help="print the genome as JSON, and nothing else (with shapes: a "
                                                                "'check' entry with the output shapes)")
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    """Parse, optionally validate against shapes, print."""
    genome = Genome.parse(args.genome)
    student = parse_shapes(args.student_shapes, "--student-shapes")
    teacher = parse_shapes(args.teacher_shapes, "--teacher-shapes")
    if (student is None) != (teacher is None):
        from kdzero.errors import ConfigError

        raise ConfigError("give both --student-shapes and --teacher-shapes, or neither")
    shapes = genome.output_shapes(student, teacher) if student is not None else None
    connector = genome.needs_connector(student, teacher) if student is not None else None
    if args.json:
        # JSON only, uncoloured, so that the output pipes into jq or json.loads as it is.
        payload = json.loads(genome.to_json())
        if shapes is not None:
            payload["check"] = {"valid": True, "output_shapes": [list(s) for s in shapes], "connector": connector}
        print(json.dumps(payload, indent=2))
        return 0
    console.print(f"[bold]canonical[/bold] {escape(str(genome))}", highlight=False)
    console.print(f"[bold]key[/bold]       {escape(genome.key)}", highlight=False)
    if shapes is not None:
        console.print(f"[green]valid[/green] for these shapes: {' -> '.join(map(str, shapes))}; "
                      f"student connector: {'yes' if connector else 'no'}", highlight=False)
    return 0
