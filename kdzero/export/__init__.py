"""A genome as a standalone PyTorch source file: the found distiller, usable without kdzero.

    source = export_source("feat[pow2,channel,norm_HW]|l2|no|T1|x100", run="runs/digits", rank=1)
    Path("my_distiller.py").write_text(source)

The file imports only torch (and ``math`` where an op needs it) and defines ``Distiller(nn.Module)`` with
``forward(student, teacher, target=None)``, computing exactly what ``UnifiedLoss`` computes for the genome: the
same connector (same module layout, so ``load_state_dict`` moves weights both ways), spatial pooling, transforms
(random ones share one draw per slot between both sides through the same ``OpContext``, from an optional
generator, off in eval mode), temperature, distance, weighting and magnitude x T^2. Only the ops the genome uses
are emitted, and each is the registered op's own source (``kdzero.export.sources``): an op is written once, in
``kdzero.ops``. This module writes the ``Distiller`` class around them; ``docstring`` writes the file's docstring.
"""
from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

from kdzero.errors import GenomeError
from kdzero.export.docstring import module_docstring, wrap
from kdzero.export.runtime import _logits, _select
from kdzero.export.sources import SourceSet
from kdzero.genome import Genome
from kdzero.loss import align_spatial, map_connector, pools_spatially, vector_connector
from kdzero.ops import DISTANCES, TRANSFORMS, WEIGHTS, OpContext

Shapes = Mapping[str, Sequence[int]]

# Shapes used to decide whether a genome's result depends on the width (so that it needs a connector when
# widths differ) when the caller gives none: two different widths, a map large enough for every op.
_PROBE_WIDTHS = (16, 32)
_PROBE_MAP = (8, 8)
_PROBE_CLASSES = 10


def may_need_connector(genome: Genome, student_shapes: Shapes | None = None,
                       teacher_shapes: Shapes | None = None) -> bool:
    """Whether the genome's compared tensors depend on the input's width, so that UnifiedLoss builds a connector
    whenever student and teacher widths differ. Channel pooling or a batch Gram make the answer no; logits never
    get one. Decided on the given shapes with their widths replaced by two different ones (or on probe shapes)."""
    if genome.input == "logit":
        return False

    def probe(shapes: Shapes | None, width: int) -> dict[str, tuple[int, ...]]:
        rest = (tuple(shapes["feat"])[1:] if shapes else _PROBE_MAP) if genome.input == "feat" else ()
        return {genome.input: (width, *rest)}

    return genome.needs_connector(probe(student_shapes, _PROBE_WIDTHS[0]), probe(teacher_shapes, _PROBE_WIDTHS[1]))


def _check_shapes(genome: Genome, student_shapes: Shapes | None, teacher_shapes: Shapes | None) -> None:
    if (student_shapes is None) != (teacher_shapes is None):
        raise GenomeError("give both student and teacher shapes, or neither")
    if student_shapes is not None:
        genome.validate(student_shapes, teacher_shapes)
        return
    width = {"feat": (_PROBE_WIDTHS[1], *_PROBE_MAP), "emb": (_PROBE_WIDTHS[1],), "logit": (_PROBE_CLASSES,)}
    try:
        genome.validate(width, width)
    except GenomeError as exc:
        raise GenomeError(f"{exc} (checked on probe shapes {width[genome.input]}; give the real shapes)") from None


def _init(genome: Genome, connector: bool, widths: tuple[int, int] | None) -> str:
    random_ops = any(TRANSFORMS[n].random for n in genome.transforms)
    params = []
    if connector:
        params += [f"student_width: int = {widths[0]}", f"teacher_width: int = {widths[1]}"] if widths else \
            ["student_width: int", "teacher_width: int"]
    if random_ops:
        params.append("generator: torch.Generator | None = None")
    doc = []
    if connector:
        doc.append("``student_width``/``teacher_width``: the input's channels (feat) or size (emb) on each side; "
                   "a connector is built when they differ.")
    if random_ops:
        doc.append("``generator`` seeds the random transforms.")
    body = ["super().__init__()"]
    if connector:
        body += ["self.student_width, self.teacher_width = student_width, teacher_width",
                 "self.connector = _make_connector(student_width, teacher_width)"]
    if random_ops:
        body.append("self.generator = generator")
    signature = f"def __init__(self{''.join(', ' + p for p in params)}) -> None:"
    if len(signature) > 112:
        signature = f"def __init__(self, {', '.join(params[:-1])},\n{' ' * 13}{params[-1]}) -> None:"
    lines = [signature]
    if doc:
        lines.append('    """' + wrap(" ".join(doc), "    ").strip() + '"""')
    lines += ["    " + b for b in body]
    return textwrap.indent("\n".join(lines), "    ")


def _forward(genome: Genome, connector: bool, names: dict[str, str]) -> str:
    """The generated ``forward``: the steps of ``UnifiedLoss.forward`` calling the exported op functions
    ``names`` (op text -> function name)."""
    name = genome.input
    needs_logits = genome.weight != "no"
    tensor_note = f"{name} tensors or objects with .{name}" if not needs_logits or name == "logit" else \
        f"objects with .logit and .{name}"
    lines = [
        "def forward(self, student, teacher, target: torch.Tensor | None = None) -> torch.Tensor:",
        '    """The scalar loss of ``student`` against ``teacher``, labels ``target`` optional.',
        f'    Both sides are {tensor_note}."""',
        f'    s = _select(student, "{name}")',
        f'    t = _select(teacher, "{name}").detach()',
    ]
    if connector:
        lines += [
            "    if s.shape[1] != self.student_width or t.shape[1] != self.teacher_width:",
            '        raise ValueError(f"this distiller was built for widths {self.student_width} (student) and "',
            '                         f"{self.teacher_width} (teacher), got {s.shape[1]} and {t.shape[1]}")',
            "    if self.connector is not None:",
            "        s = self.connector(s)",
        ]
    if pools_spatially(genome):
        lines.append("    s, t = align_spatial(s, t)")
    random_ops = any(TRANSFORMS[n].random for n in genome.transforms)
    if any(n != "no" for n in genome.transforms):
        generator = ", generator=self.generator" if random_ops else ""
        lines.append(f"    ctx = OpContext(training=self.training{generator})  # one draw per slot, both sides")
    for slot, op_name in enumerate(genome.transforms):
        if op_name == "no":
            continue
        if TRANSFORMS[op_name].random:
            lines.append(f"    ctx.share({slot}, tuple(s.shape), tuple(t.shape))")
        lines += [f"    s = {names[op_name]}(s, ctx)", f"    t = {names[op_name]}(t, ctx)"]
    lines += ["    s, t = s / TEMPERATURE, t / TEMPERATURE",
              f"    distances = {names['distance']}(s, t)"]
    if genome.weight == "no":
        lines.append("    value = distances.mean()")
    else:
        logits = "_select(student, \"logit\"), _select(teacher, \"logit\")" if name == "logit" else \
            "_logits(student), _logits(teacher)"
        lines += [f"    student_logit, teacher_logit = {logits}",
                  f"    value = {names['weight']}(distances, student_logit, teacher_logit.detach(), target)"]
    lines.append("    return value * (MAGNITUDE * TEMPERATURE ** 2)")
    return textwrap.indent("\n".join(lines), "    ")


def export_source(genome: Genome | str, *, run: str | Path | None = None, rank: int | None = None,
                  student_shapes: Shapes | None = None, teacher_shapes: Shapes | None = None) -> str:
    """Python source of a standalone module defining ``Distiller``, the loss of ``genome`` (see the module
    docstring). ``run``/``rank`` are recorded in its docstring. With shapes, the genome is validated for them
    and a needed connector's widths become the constructor's defaults; without, the widths are required
    arguments when the genome may need a connector. Raises GenomeError for a bad or invalid genome."""
    genome = Genome.parse(genome) if isinstance(genome, str) else genome
    if not isinstance(genome, Genome):
        raise GenomeError(f"export_source takes a Genome or its text, got {type(genome).__name__}")
    _check_shapes(genome, student_shapes, teacher_shapes)
    connector = may_need_connector(genome, student_shapes, teacher_shapes)
    widths = (int(student_shapes[genome.input][0]), int(teacher_shapes[genome.input][0])) \
        if connector and student_shapes is not None else None

    sources = SourceSet()
    sources.add_import("torch")
    sources.add_import("torch.nn")
    sources.add(_select)
    if genome.weight != "no" and genome.input != "logit":
        sources.add(_logits)
    if connector:
        sources.add(map_connector if genome.input == "feat" else vector_connector, "_make_connector")
    if pools_spatially(genome):
        sources.add(align_spatial)
    if any(n != "no" for n in genome.transforms):
        sources.add(OpContext)
    names = {n: sources.add_op(TRANSFORMS[n]) for n in genome.transforms if n != "no"}
    names["distance"] = sources.add_op(DISTANCES[DISTANCES.canonical(genome.distance)])
    if genome.weight != "no":
        names["weight"] = sources.add_op(WEIGHTS[genome.weight])
    cls = (f"class Distiller(nn.Module):\n"
           '    """The distillation loss of ``GENOME`` (see the module docstring), student first."""\n\n'
           f"{_init(genome, connector, widths)}\n\n{_forward(genome, connector, names)}")
    header = [module_docstring(genome, run, rank, connector, widths), "from __future__ import annotations", "",
              *_grouped(sources.imports()), "", f'GENOME = "{genome}"', *sources.constants(),
              f"TEMPERATURE = {genome.temperature}", f"MAGNITUDE = {genome.magnitude!r}", "",
              '__all__ = ["Distiller"]']
    return "\n".join(header) + "\n\n\n" + "\n\n\n".join([*sources.definitions(), cls]) + "\n"


def _grouped(imports: list[str]) -> list[str]:
    """Import lines with the standard library (math) apart from torch, as isort would write them."""
    standard = [line for line in imports if not line.split()[1].startswith("torch")]
    rest = [line for line in imports if line not in standard]
    return [*standard, "", *rest] if standard else rest


__all__ = ["export_source", "may_need_connector"]
