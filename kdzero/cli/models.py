"""``kdzero models``: the zoo's model names and the other forms a --teacher/--student spec may take."""
from __future__ import annotations

import argparse

from rich.markup import escape
from rich.table import Table

from kdzero.cli._display import console


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``models`` sub-command."""
    parser = subparsers.add_parser(
        "models", help="list the model names and spec forms --teacher/--student accept",
        description="The zoo's model names (built for the dataset's classes and channels) and the spec forms for\n"
                    "any torchvision or timm model and for your own factory functions.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plain", action="store_true", help="one zoo name per line, nothing else")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the zoo names, then the spec forms."""
    from kdzero.models import list_models
    from kdzero.models.specs import SPEC_FORMS

    names = list_models()
    if args.plain:
        print("\n".join(names))
        return 0
    console.print(f"[bold]zoo models[/bold] ({len(names)}): {escape(', '.join(names))}", highlight=False)
    table = Table(title="model specs (--teacher, --student, train-teacher --model)", title_justify="left")
    table.add_column("form", no_wrap=True)
    table.add_column("meaning")
    for form, meaning in SPEC_FORMS:
        table.add_row(escape(form), escape(meaning))
    console.print(table)
    return 0
