"""The exported file's module docstring: the genome, where it came from, how to call it, and every step's formula.

The formulas and descriptions are the registered ops' own (``Op.formula``, ``Op.doc``), so they never drift from
the code the file carries.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

from kdzero.genome import Genome
from kdzero.loss import pools_spatially
from kdzero.ops import DISTANCES, TRANSFORMS, WEIGHTS

_INPUT_TEXT = {
    "feat": "the last stage's feature map before pooling, (N, C, H, W)",
    "emb": "the pooled embedding that feeds the classifier, (N, D)",
    "logit": "the classifier output, (N, K)",
}



def wrap(text: str, first: str, rest: str | None = None, width: int = 116) -> str:
    """``text`` (whitespace runs collapsed) filled to ``width`` with hanging indentation ``rest`` (default: as
    wide as ``first``)."""
    return textwrap.fill(" ".join(text.split()), width=width, initial_indent=first,
                         subsequent_indent=" " * len(first) if rest is None else rest)


def module_docstring(genome: Genome, run: str | Path | None, rank: int | None, connector: bool,
               widths: tuple[int, int] | None) -> str:
    """The generated module's docstring: genome, origin, usage and the formula of every step and op."""
    origin = f"rank {rank} of search run {run}" if run is not None else "given as text"
    if connector:
        args = "" if widths else "student_width=64, teacher_width=256"
        usage = [f"    distiller = Distiller({args})  # optimise its parameters with the student"]
    else:
        usage = ["    distiller = Distiller()"]
    tensors_ok = genome.weight == "no" or genome.input == "logit"
    inputs = ("``student`` and ``teacher``: objects with .feat, .emb and .logit (kdzero's Features or any "
              "NamedTuple of the three)"
              + (f", or the {genome.input} tensors themselves. " if tensors_ok else
                 "; the weighting reads the logits, so plain tensors are not enough. ")
              + "The student comes first; the teacher side is detached. ``target``: the labels, optional"
              + ("; without them the teacher's arg-max stands in." if genome.weight in ("focal", "conf") else "."))
    if connector:
        layer = "a 1x1 conv + batch norm" if genome.input == "feat" else "a linear layer"
        built = f" (built for {widths[0]} -> {widths[1]})" if widths and widths[0] != widths[1] else ""
        align = [f"{layer} on the student side maps its width to the teacher's when they differ{built}; its "
                 f"parameters are learned with the student"]
    elif genome.input == "logit":
        align = ["none (student and teacher predict the same classes)"]
    else:
        align = ["no connector (the transforms make any two widths comparable)"]
    if pools_spatially(genome):
        align.append("the larger map is average-pooled to the smaller's height and width")
    elif genome.input == "feat":
        align.append("maps of any two spatial sizes are compared as they are (the transforms make them comparable)")
    lines = [
        "A knowledge distiller exported by kdzero as standalone PyTorch: the file needs torch only.",
        "",
        f"Genome:  {genome}",
        f"Origin:  {origin}",
        "",
        "Usage::",
        "",
        *usage,
        "    loss = distiller(student, teacher, target)  # add it to the student's cross-entropy",
        "",
        wrap(inputs, ""),
        "",
        "The loss, step by step:",
        f"1. input {genome.input}: {_INPUT_TEXT[genome.input]}.",
        wrap("2. align: " + "; ".join(align) + ".", "", "   "),
        "3. transforms, in order, identically on both sides:",
    ]
    for slot, name in enumerate(genome.transforms, start=1):
        op = TRANSFORMS[name]
        lines.append(wrap("empty" if name == "no" else f"{op.formula}. {op.doc}", f"   slot {slot} {name}: ",
                           "       "))
    distance, weight = DISTANCES[genome.distance], WEIGHTS[genome.weight]
    lines += [
        f"4. divide both by the temperature T = {genome.temperature}.",
        wrap(f"5. distance {genome.distance}: {distance.formula}, one value per sample. {distance.doc}", "", "   "),
        wrap(f"6. weight {genome.weight}: {weight.formula}. {weight.doc}", "", "   "),
        f"7. multiply by magnitude x T^2 = {genome.magnitude:g} x {genome.temperature ** 2} = "
        f"{genome.magnitude * genome.temperature ** 2:g}.",
    ]
    return '"""' + "\n".join(lines) + '\n"""'
