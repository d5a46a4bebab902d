"""The ``kdzero`` command: a thin shell over the library.

Each sub-command lives in its own module (``kdzero/cli/<name>.py``) exposing ``register(subparsers)``, which adds
its parser and sets ``func`` to a callable taking the parsed namespace and returning an exit code. This module only
collects them, runs the chosen one, and turns user errors into one line on stderr with exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from kdzero.errors import KdzeroError

# Sub-command modules, in the order ``kdzero --help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "ops",
    "genome",
    "evaluate",
    "search",
    "worker",
    "leaderboard",
    "replay",
    "export",
    "train_teacher",
    "student_search",
    "models",
)


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line like every other error (its default prints the whole usage
    first, a dozen lines for ``search``). Sub-command parsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every sub-command that is installed."""
    parser = _Parser(
        prog="kdzero",
        description=(
            "Search the best knowledge-distillation loss for a teacher-student pair (KD-Zero), "
            "replay it, and inspect the population."
        ),
        epilog="Run 'kdzero COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="print the kdzero, torch and Python versions (and the git commit) and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"kdzero.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"kdzero.cli.{name}":
                continue
            raise
        module.register(subparsers)
    return parser


class _Version(argparse.Action):
    """``--version``, worked out only when asked (it reads the git commit and imports the run record)."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit(0)


def version_text() -> str:
    """``kdzero 0.1.0 (commit 1feb4d2, torch 2.14.1, Python 3.11.7)``: what a bug report needs."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from kdzero import __version__
    from kdzero.search.record import git_commit

    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "not installed"
    commit = git_commit()
    where = f"commit {commit[:7]}, " if commit else ""
    return f"kdzero {__version__} ({where}torch {torch_version}, Python {platform.python_version()})"


def one_line(message: str) -> str:
    """``message`` on one line: a library error may list details on further lines (a checkpoint that does not
    fit lists its missing and unexpected keys); the command line joins them so that stderr holds one line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    text = lines[0] if lines else "unknown error"
    for line in lines[1:]:
        text += (" " if text.endswith((":", "?", ".")) else "; ") + line
    return text


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KdzeroError as exc:
        print(f"kdzero {args.command}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (``kdzero leaderboard ... | head``): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"kdzero {args.command}: interrupted; finished work is saved, re-run the command to resume.",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
