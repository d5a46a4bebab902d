"""The genome's numbers and message texts: how a temperature or magnitude is written, read and bounded, and
how an arbitrary token (from text or JSON) is shown in an error without flooding it.

Split from ``kdzero.genome`` (which re-exports every public name here) so that the genome module holds the
genome itself; the search space's study parameters use the same ``format_number``/``parse_number``.
"""
from __future__ import annotations

import math
import re
import reprlib

from kdzero.errors import GenomeError

# Any positive temperature and magnitude is a valid gene; the bounds keep magnitude x T^2 and the division by T
# far from float32 overflow and underflow while covering every published setting (PKT's weight 3e4, CRD's T 0.07).
TEMPERATURE_RANGE = (0.01, 1000.0)
MAGNITUDE_RANGE = (1e-6, 1e6)
# The number grammar of the text form: ASCII digits only, no sign, no '_', no 'inf' or 'nan'.
_NUMBER = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)


def format_number(value: float) -> str:
    """The canonical text of a temperature or magnitude: an integer without a decimal point when the value is
    one (below 1e16), otherwise Python's shortest round-tripping repr without its exponent '+' (2.5, 0.01, 1e-05).
    Grid values print as before (4, 100, 0.1), so texts and study parameters written earlier still match."""
    value = float(value)
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value).replace("e+", "e")


def number_value(value: object, field_name: str) -> float:
    """A temperature or magnitude checked and normalised: a real number (not a bool, not text), finite, positive
    and inside its documented range; integral temperatures stay ints so that T4 stays ``4``."""
    low, high = TEMPERATURE_RANGE if field_name == "temperature" else MAGNITUDE_RANGE
    example = "T4, T2.5" if field_name == "temperature" else "x1, x9, x0.25"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GenomeError(f"bad {field_name} {clipped(value)} in field {field_name!r}; it must be a number from "
                          f"{format_number(low)} to {format_number(high)}, e.g. {example}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not (low <= number <= high):  # also refuses nan
        shown = format_number(number) if math.isfinite(number) else clipped(value)
        raise GenomeError(f"bad {field_name} {shown} in field {field_name!r}; it must be positive, finite and "
                          f"from {format_number(low)} to {format_number(high)}, e.g. {example}")
    if field_name == "temperature" and number.is_integer():
        return int(number)
    return number


def parse_number(token: str, prefix: str, field_name: str) -> float:
    """Read ``T<number>`` or ``x<number>`` strictly (see ``_NUMBER``); the error names the token and an example."""
    example = f"{prefix}4, {prefix}2.5" if prefix == "T" else f"{prefix}1, {prefix}9, {prefix}0.25"
    body = token[1:] if token[:1] == prefix else None
    if body is None or _NUMBER.fullmatch(body) is None:
        raise GenomeError(f"bad {field_name} {clipped(token)}; write {prefix} and a positive number in ASCII digits, "
                          f"e.g. {example}")
    return number_value(float(body), field_name)


def shown_text(value: object) -> str:
    """A bounded text of any value read from JSON (reprlib caps the depth and length of nested lists)."""
    return value if isinstance(value, str) else reprlib.repr(value)


def clipped(token: object, limit: int = 40) -> str:
    """``token`` quoted, cut to ``limit`` characters with an ellipsis, for error messages."""
    token = shown_text(token)
    return repr(token if len(token) <= limit else token[:limit] + "...")
