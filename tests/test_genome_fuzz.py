"""Fuzz the genome text and JSON readers: whatever comes in, the only outcomes are a genome that round-trips or
one GenomeError (never RecursionError, TypeError, KeyError, OverflowError or a plain ValueError from deep inside).

Inputs come from seeded generators (reproducible, a few seconds): 10,000 mutations of valid genome texts and
10,000 JSON documents built from valid genome objects by breaking them.
"""
from __future__ import annotations

import json
import random

import pytest

from kdzero import PRESETS, Genome
from kdzero.errors import GenomeError
from kdzero.genome import FULL_SPACE, SHRUNK_SPACE

# Characters a mutation inserts: grammar symbols, ASCII and non-ASCII digits (Arabic-Indic, fullwidth,
# superscript, Devanagari, mathematical bold), signs, exponents, whitespace, letters that look like others.
ALPHABET = ("[]|,.+-eExXTt_ 0123456789\t\n\u0664\u0661\uff14\uff11\u00b2\u0967\U0001d7d2\u2212\u2024"
            "\u0422\u217c\u00a0\u200bnoalgitfembsoftmax")
NUMBERS = ["4", "2.5", "1e400", "1" * 400, "9" * 30, "0", "-1", "+4", "1e-400", "nan", "inf", ".", "1.", ".5",
           "1e", "e1", "0x1p3", "1_000", "\u0664", "\uff14", "1e+2", "4" * 5000]


def _valid_texts(rng: random.Random, count: int) -> list[str]:
    texts = [str(g) for g in PRESETS.values()]
    while len(texts) < count:
        genome = Genome.random(rng, rng.choice((FULL_SPACE, SHRUNK_SPACE)))
        texts.append(str(genome))
    return texts


def _mutate(text: str, rng: random.Random) -> str:
    """One to four random edits: insert, delete or replace a character, swap a number, empty or repeat a field."""
    for _ in range(rng.randint(1, 4)):
        move = rng.randrange(7)
        at = rng.randrange(len(text) + 1)
        if move == 0:
            text = text[:at] + rng.choice(ALPHABET) + text[at:]
        elif move == 1 and text:
            text = text[:at] + text[at + 1:]
        elif move == 2 and text:
            text = text[:at] + rng.choice(ALPHABET) + text[at + 1:]
        elif move == 3:
            fields = text.split("|")
            index = rng.randrange(len(fields))
            fields[index] = fields[index][:1] + rng.choice(NUMBERS)
            text = "|".join(fields)
        elif move == 4:
            fields = text.split("|")
            fields[rng.randrange(len(fields))] = ""
            text = "|".join(fields)
        elif move == 5:
            fields = text.split("|")
            fields.insert(rng.randrange(len(fields) + 1), rng.choice(fields))
            text = "|".join(fields)
        else:
            text = text.replace(",", rng.choice([",,", "", ", ", ",no,"]), 1)
    return text


def _outcome(read, payload):
    """Run ``read(payload)``: the genome, or None on GenomeError; any other exception fails the test."""
    try:
        return read(payload)
    except GenomeError as exc:
        assert str(exc) and "\n" not in str(exc), repr(str(exc))
        return None
    except Exception as exc:  # any other type is the failure this test looks for
        pytest.fail(f"{payload!r:.200} raised {type(exc).__name__}: {str(exc)[:200]}")


def test_ten_thousand_mutated_genome_texts_parse_or_raise_genome_error_only():
    rng = random.Random(2024)
    bases = _valid_texts(rng, 500)
    accepted = 0
    for _ in range(10_000):
        text = _mutate(rng.choice(bases), rng)
        genome = _outcome(Genome.parse, text)
        if genome is not None:
            accepted += 1
            assert Genome.parse(str(genome)) == genome and str(Genome.parse(str(genome))) == str(genome)
            assert str(genome).isascii()
    assert 100 < accepted < 9_500  # the mutations reach both outcomes


def _nested(depth: int, leaf) -> object:
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


WRONG_VALUES = [None, True, False, 0, -1, 4, 2.5, 10**400, -(10**30), 1e308, float("nan"), float("inf"), "", "4",
                "T4", "\u0664", [], ["no"], ["no", "no", "no", "no"], [1, 2, 3], [None, "no", "no"], {}, {"a": 1},
                [["no"], "no", "no"], "no" * 10_000]


def _json_document(rng: random.Random, base: dict) -> str:
    """A broken variant of a valid genome object, as JSON text (or raw text around it)."""
    data = dict(base)
    for _ in range(rng.randint(1, 3)):
        move = rng.randrange(7)
        key = rng.choice(list(base))
        if move == 0:
            data[key] = rng.choice(WRONG_VALUES)
        elif move == 1:
            data.pop(key, None)
        elif move == 2:
            data[rng.choice(["colour", "", "Input", "transforms ", "\u0664"])] = rng.choice(WRONG_VALUES)
        elif move == 3:
            data[key] = _nested(rng.choice([3, 10, 200]), data.get(key))
        elif move == 4:
            data = rng.choice([[data], "genome", 4, None, _nested(100, data)])
            break
        elif move == 5 and isinstance(data.get("transforms"), list) and data["transforms"]:
            slots = list(data["transforms"])
            slots[rng.randrange(len(slots))] = rng.choice(WRONG_VALUES)
            data["transforms"] = slots
        else:
            data[key] = rng.choice([1e-300, 1e300, 0.01, 1000.0, 1e-6, 1e6, 5e-7, 2e6])
    text = json.dumps(data)
    if rng.random() < 0.05:  # nesting deeper than Python's recursion limit, written as text
        depth = rng.choice([1_000, 5_000])
        text = rng.choice(['{"input": ' * depth + text + "}" * depth, "[" * depth + text + "]" * depth,
                           "[" * depth])
    elif rng.random() < 0.1:  # raw-text damage: truncation, a stray byte, JSON's own NaN literal
        text = rng.choice([text[: rng.randrange(len(text) + 1)], text + "}", text.replace("1", "NaN", 1),
                           "\ud800" + text, text.replace('"', "'", 1)])
    return text


def test_ten_thousand_broken_json_documents_load_or_raise_genome_error_only():
    rng = random.Random(7)
    bases = [json.loads(Genome.parse(text).to_json()) for text in _valid_texts(rng, 200)]
    accepted = 0
    for _ in range(10_000):
        genome = _outcome(Genome.from_json, _json_document(rng, rng.choice(bases)))
        if genome is not None:
            accepted += 1
            assert Genome.from_json(genome.to_json()) == genome
    assert 20 < accepted < 9_000  # both outcomes are reached


@pytest.mark.parametrize("payload", [b'{"input": "feat"}', bytearray(b"\xff\xfe"), None, 4, ["x"]])
def test_json_reader_refuses_non_text_and_bad_bytes_with_genome_error(payload):
    assert _outcome(Genome.from_json, payload) is None
