"""``kdzero ops``: the search space as a table."""
from __future__ import annotations

import argparse

from rich.table import Table

from kdzero.cli._display import console
from kdzero.ops import DISTANCES, INPUTS, MAGNITUDES, TEMPERATURES, TRANSFORMS, WEIGHTS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``ops`` sub-command."""
    parser = subparsers.add_parser(
        "ops", help="list the search space: every transform, distance and weighting with its formula",
        description="Print every op a genome can use: its kind, the tensor ranks it applies to, and its formula.")
    parser.add_argument("--kind", choices=("transform", "distance", "weight"), help="only this kind of op")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the op table and the remaining genes."""
    table = Table(title="kdzero search space", show_lines=False)
    for column in ("name", "kind", "ranks", "formula", "description"):
        table.add_column(column, overflow="fold")
    for registry in (TRANSFORMS, DISTANCES, WEIGHTS):
        if args.kind and registry.kind != args.kind:
            continue
        for op in registry.values():
            ranks = ", ".join(f"{r}-D" for r in sorted(op.ranks)) if registry.kind == "transform" else "any"
            table.add_row(op.name, op.kind, ranks, op.formula, op.doc)
    console.print(table)
    if not args.kind:
        console.print(f"inputs: {', '.join(INPUTS)}   search grid: temperatures "
                      f"{', '.join(f'T{t}' for t in TEMPERATURES)}, magnitudes "
                      f"{', '.join(f'x{m:g}' for m in MAGNITUDES)} (a genome text takes any positive value)")
        console.print(f"{len(TRANSFORMS)} transforms, {len(DISTANCES)} distances, {len(WEIGHTS)} weightings. "
                      "Genome text: INPUT[T1,T2,T3]|DISTANCE|WEIGHT|T<temperature>|x<magnitude>")
    return 0
