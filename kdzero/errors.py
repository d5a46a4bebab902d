"""Errors a user can cause and fix.

Everything raised for bad input derives from ``KdzeroError``: the CLI prints its message on one line and exits
with code 2; library users catch one type. Messages say what is wrong and what would be right.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class KdzeroError(Exception):
    """Bad input from the user: a one-line, actionable message."""


class GenomeError(KdzeroError, ValueError):
    """A genome text, JSON or field value that is malformed, or a genome that is invalid for given shapes."""


class ConfigError(KdzeroError, ValueError):
    """A configuration file or command-line option with a wrong key, type or value."""


class DataError(KdzeroError):
    """A dataset that is missing, empty or unreadable."""


class CheckpointError(KdzeroError):
    """A checkpoint that cannot be read or does not fit the model."""


def suggest(token: str, choices: Iterable[str], n: int = 3) -> str:
    """A ' (did you mean a, b?)' hint for ``token`` among ``choices``, or a short list of valid choices."""
    choices = list(choices)
    close = difflib.get_close_matches(str(token), choices, n=n, cutoff=0.5)
    if close:
        return f"did you mean {', '.join(close)}?"
    shown = ", ".join(choices[:12]) + (", ..." if len(choices) > 12 else "")
    return f"valid: {shown}"
