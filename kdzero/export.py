"""A genome as a standalone PyTorch source file: the found distiller, usable without kdzero.

    source = export_source("feat[pow2,channel,norm_HW]|l2|no|T1|x100", run="runs/digits", rank=1)
    Path("my_distiller.py").write_text(source)

The file imports only torch (and ``math`` where an op needs it) and defines ``Distiller(nn.Module)`` with
``forward(student, teacher, target=None)``, computing exactly what ``UnifiedLoss`` computes for the genome: the
same connector (same module layout, so ``load_state_dict`` moves weights both ways), spatial pooling, transforms
(random ones share one draw per slot between both sides, from an optional generator, off in eval mode),
temperature, distance, weighting and magnitude x T^2. Only the ops the genome uses are emitted; each op's code
comes from a source template below, kept equal to the registered op by the test that compares both on random
genomes and on every op.
"""
from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

from kdzero.errors import GenomeError
from kdzero.genome import Genome
from kdzero.loss import pools_spatially
from kdzero.ops import DISTANCES, TRANSFORMS, WEIGHTS

Shapes = Mapping[str, Sequence[int]]

# Shapes used to decide whether a genome's result depends on the width (so that it needs a connector when
# widths differ) when the caller gives none: two different widths, a map large enough for every op.
_PROBE_WIDTHS = (16, 32)
_PROBE_MAP = (8, 8)
_PROBE_CLASSES = 10

# ------------------------------------------------------------------------------------------------ templates
# Each value is a function body (indented by the generator); the signature and docstring are generated.
# Transforms take ``x``; random ones also ``draws`` (one dict per slot and call, None in eval mode) and
# ``generator``. Distances take ``s, t``; weightings ``distances, student_logit, teacher_logit, target``.
TRANSFORM_BODIES: dict[str, str] = {
    "exp": "return torch.exp(torch.clamp(x, max=EXP_CLAMP))",
    "mish": "return F.mish(x)",
    "leaky_relu": "return F.leaky_relu(x, 0.01)",
    "relu": "return F.relu(x)",
    "tanh": "return torch.tanh(x)",
    "sigmoid": "return torch.sigmoid(x)",
    "swish": "return F.silu(x)",
    "abs": "return torch.abs(x)",
    "pow2": "return torch.clamp(x, -POW_CLAMP, POW_CLAMP).pow(2)",
    "pow4": "return torch.clamp(x, -POW_CLAMP, POW_CLAMP).pow(4)",
    "log": "return torch.sign(x) * torch.log1p(torch.abs(x))",
    "sqrt": "return torch.sign(x) * (torch.sqrt(torch.abs(x) + EPS) - math.sqrt(EPS))",
    "drop": """\
if draws is None:
    return x
keep = _shared_bernoulli(draws, tuple(x.shape), 1.0 - DROP_PROB, x, generator)
return x * keep / (1.0 - DROP_PROB)""",
    "mask": """\
if draws is None:
    return x
shape = tuple(x.shape) if x.dim() == 2 else (x.shape[0], 1, *x.shape[2:])
return x * _shared_bernoulli(draws, shape, MASK_KEEP, x, generator)""",
    "no": "return x",
    "satt": """\
flat = _positions(x)
weights = torch.softmax(flat.abs().mean(dim=1, keepdim=True), dim=2) * flat.shape[2]
return (flat * weights).reshape(x.shape)""",
    "catt": """\
strength = x.abs() if x.dim() == 2 else _positions(x).abs().mean(dim=2)
weights = torch.softmax(strength, dim=1) * x.shape[1]
return x * weights.reshape(*weights.shape, *([1] * (x.dim() - 2)))""",
    "natt": """\
weights = torch.softmax(_per_sample(x).abs().mean(dim=1), dim=0) * x.shape[0]
return x * _broadcast_per_sample(weights, x)""",
    "bmm": """\
flat = _positions(x)
return torch.bmm(flat, flat.transpose(1, 2)) / flat.shape[2]""",
    "mm": """\
flat = _per_sample(x)
return flat @ flat.t() / flat.shape[1]""",
    "batch": "return _per_sample(x)",
    "channel": "return x.mean(dim=1, keepdim=True)",
    "multi_scale_r1": "return _multi_scale(x, (1,))",
    "multi_scale_r2": "return _multi_scale(x, (1, 2))",
    "multi_scale_r4": "return _multi_scale(x, (1, 2, 4))",
    **{f"local_s{cells}": f"""\
avg_last = _cell_averaging(x.shape[-1], {cells}, x)
if x.dim() == 3:
    return x - x @ avg_last
avg_h = _cell_averaging(x.shape[-2], {cells}, x)
return x - avg_h @ x @ avg_last""" for cells in (1, 2, 4)},
    "norm_HW": "return F.normalize(_positions(x), dim=2, eps=EPS).reshape(x.shape)",
    "norm_C": "return F.normalize(x, dim=1, eps=EPS)",
    "norm_N": "return F.normalize(x, dim=0, eps=EPS)",
    "softmax_N": "return torch.softmax(x, dim=0)",
    "softmax_C": "return torch.softmax(x, dim=1)",
    "softmax_HW": "return torch.softmax(_positions(x), dim=2).reshape(x.shape)",
    "logsoftmax_N": "return torch.log_softmax(x, dim=0)",
    "logsoftmax_C": "return torch.log_softmax(x, dim=1)",
    "logsoftmax_HW": "return torch.log_softmax(_positions(x), dim=2).reshape(x.shape)",
    "scale": """\
rms = torch.sqrt(_per_sample(x).pow(2).mean(dim=1) + EPS)
return x / _broadcast_per_sample(rms, x)""",
    "min_max_normalize": """\
flat = _per_sample(x)
low = flat.min(dim=1).values
span = flat.max(dim=1).values - low
return (x - _broadcast_per_sample(low, x)) / _broadcast_per_sample(span + EPS, x)""",
    "batchnorm": """\
dims = [0, *range(2, x.dim())]
mean = x.mean(dim=dims, keepdim=True)
var = x.var(dim=dims, keepdim=True, unbiased=False)
return (x - mean) / torch.sqrt(var + 1e-5)""",
    "zscore_C": """\
peak = x.detach().abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
y = x / peak
centred = y - y.mean(dim=1, keepdim=True)
std = y.std(dim=1, keepdim=True, correction=1 if x.shape[1] > 1 else 0)
return centred / (std + ZSCORE_EPS / peak)""",
}

DISTANCE_BODIES: dict[str, str] = {
    "l1": "return (s - t).abs().reshape(s.shape[0], -1).mean(dim=1)",
    "l2": "return (s - t).pow(2).reshape(s.shape[0], -1).mean(dim=1)",
    "smooth_l1": 'return F.smooth_l1_loss(s, t, reduction="none", beta=1.0).reshape(s.shape[0], -1).mean(dim=1)',
    "kl": """\
log_p_s = torch.log_softmax(_as_rows(s).float(), dim=-1)
log_p_t = torch.log_softmax(_as_rows(t).float(), dim=-1)
per_row = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(dim=-1)
return per_row.mean(dim=1).to(s.dtype)""",
    "hard": """\
rows_s = _as_rows(s).float()
target = _as_rows(t).argmax(dim=-1)
per_row = F.cross_entropy(rows_s.transpose(1, 2), target, reduction="none")
return per_row.mean(dim=1).to(s.dtype)""",
    "cosine": "return (1.0 - F.cosine_similarity(_as_rows(s), _as_rows(t), dim=-1, eps=COS_EPS)).mean(dim=1)",
    "pearson": """\
rows_s, rows_t = _as_rows(s), _as_rows(t)
centred_s = rows_s - rows_s.mean(dim=-1, keepdim=True)
centred_t = rows_t - rows_t.mean(dim=-1, keepdim=True)
return (1.0 - F.cosine_similarity(centred_s, centred_t, dim=-1, eps=COS_EPS)).mean(dim=1)""",
    "batch_congruence": """\
flat_s = F.normalize(s.reshape(s.shape[0], -1), dim=1, eps=COS_EPS)
flat_t = F.normalize(t.reshape(t.shape[0], -1), dim=1, eps=COS_EPS)
return (flat_s @ flat_s.t() - flat_t @ flat_t.t()).pow(2).mean(dim=1)""",
}

# "no" is written inline in forward (distances.mean()), so that it needs no logits.
WEIGHT_BODIES: dict[str, str] = {
    "entropy": """\
with torch.no_grad():
    log_p = torch.log_softmax(teacher_logit.float(), dim=1)
    weights = -(log_p.exp() * log_p).sum(dim=1) / math.log(max(teacher_logit.shape[1], 2))
return _weighted_mean(distances, weights)""",
    "focal": """\
with torch.no_grad():
    p_true = torch.softmax(student_logit.float(), dim=1).gather(
        1, _labels(teacher_logit, target).view(-1, 1)).squeeze(1)
    weights = (1.0 - p_true).pow(FOCAL_GAMMA)
return _weighted_mean(distances, weights)""",
    "sim": """\
with torch.no_grad():
    weights = 1.0 - F.cosine_similarity(torch.softmax(student_logit.float(), dim=1),
                                        torch.softmax(teacher_logit.float(), dim=1), dim=1)
return _weighted_mean(distances, weights)""",
    "conf": """\
with torch.no_grad():
    weights = torch.softmax(teacher_logit.float(), dim=1).gather(
        1, _labels(teacher_logit, target).view(-1, 1)).squeeze(1)
return _weighted_mean(distances, weights)""",
}

# Helpers and constants the templates call; each is emitted only when the emitted code mentions its name.
HELPERS: dict[str, str] = {
    "_positions": '''\
def _positions(x: torch.Tensor) -> torch.Tensor:
    """(N, C, *positions) -> (N, C, L)."""
    return x.reshape(x.shape[0], x.shape[1], -1)''',
    "_per_sample": '''\
def _per_sample(x: torch.Tensor) -> torch.Tensor:
    """(N, ...) -> (N, D)."""
    return x.reshape(x.shape[0], -1)''',
    "_broadcast_per_sample": '''\
def _broadcast_per_sample(stat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N, 1, ..., 1) matching the rank of ``like``."""
    return stat.reshape(stat.shape[0], *([1] * (like.dim() - 1)))''',
    "_shared_bernoulli": '''\
def _shared_bernoulli(draws: dict, shape: tuple, keep_prob: float, like: torch.Tensor,
                      generator: torch.Generator | None) -> torch.Tensor:
    """A 0/1 tensor of ``shape`` with P(1) = keep_prob, drawn once per slot and shape: the student side draws it,
    the teacher side gets the same one."""
    if shape not in draws:
        device = generator.device if generator is not None else like.device
        uniform = torch.rand(shape, generator=generator, device=device)
        draws[shape] = (uniform < keep_prob).to(device=like.device)
    return draws[shape].to(like.dtype)''',
    "_multi_scale": '''\
def _multi_scale(x: torch.Tensor, levels: tuple[int, ...]) -> torch.Tensor:
    """Average-pool to each grid of ``levels`` and concatenate the cells: (N, C, L)."""
    if x.dim() == 4:
        pooled = [F.adaptive_avg_pool2d(x, level).flatten(2) for level in levels]
    else:
        pooled = [F.adaptive_avg_pool1d(x, level) for level in levels]
    return torch.cat(pooled, dim=2)''',
    "_cell_averaging": '''\
def _cell_averaging(size: int, cells: int, like: torch.Tensor) -> torch.Tensor:
    """(size, size) matrix replacing every position by the mean of its cell; position i lies in cell
    floor(i * cells / size)."""
    cell_of = torch.arange(size, device=like.device) * cells // size
    same = (cell_of[:, None] == cell_of[None, :]).to(like.dtype)
    return same / same.sum(dim=1, keepdim=True)''',
    "_as_rows": '''\
def _as_rows(x: torch.Tensor) -> torch.Tensor:
    """(N, K) -> (N, 1, K); (N, C, ...) -> (N, C, positions): the rows a distance compares."""
    if x.dim() == 2:
        return x.unsqueeze(1)
    return x.reshape(x.shape[0], x.shape[1], -1)''',
    "_weighted_mean": '''\
def _weighted_mean(distances: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of the distances under weights rescaled to mean 1 (a weighting moves emphasis, not scale)."""
    weights = (weights.detach().float() + WEIGHT_EPS)
    weights = weights / weights.mean()
    return (distances * weights.to(distances.dtype)).mean()''',
    "_labels": '''\
def _labels(teacher_logit: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """The labels, or the teacher's arg-max when none are given."""
    return teacher_logit.argmax(dim=1) if target is None else target''',
    "_align_spatial": '''\
def _align_spatial(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-average-pool the larger of two maps to the smaller's height and width."""
    if student.dim() != 4 or student.shape[2:] == teacher.shape[2:]:
        return student, teacher
    size = (min(student.shape[2], teacher.shape[2]), min(student.shape[3], teacher.shape[3]))
    if tuple(student.shape[2:]) != size:
        student = F.adaptive_avg_pool2d(student, size)
    if tuple(teacher.shape[2:]) != size:
        teacher = F.adaptive_avg_pool2d(teacher, size)
    return student, teacher''',
    "_select": '''\
def _select(x, name: str) -> torch.Tensor:
    """The tensor ``x`` itself, or its attribute ``name`` (feat, emb or logit) for a features object."""
    return x if isinstance(x, torch.Tensor) else getattr(x, name)''',
    "_logits": '''\
def _logits(x) -> torch.Tensor:
    """The logits of a features object; the weighting needs them even though the distilled input is another."""
    if isinstance(x, torch.Tensor):
        raise TypeError("this distiller's weighting reads the logits: pass objects with .feat, .emb and .logit")
    return x.logit''',
}

CONSTANTS: dict[str, str] = {
    "EPS": "EPS = 1e-6",
    "EXP_CLAMP": "EXP_CLAMP = 20.0  # exp(20) ~ 4.9e8: its square and fourth power stay inside float32",
    "POW_CLAMP": "POW_CLAMP = 1e4  # (1e4)^4 = 1e16: finite in float32 and bfloat16",
    "DROP_PROB": "DROP_PROB = 0.1",
    "MASK_KEEP": "MASK_KEEP = 0.5",
    "COS_EPS": "COS_EPS = 1e-8",
    "WEIGHT_EPS": "WEIGHT_EPS = 1e-6",
    "FOCAL_GAMMA": "FOCAL_GAMMA = 2.0",
    "ZSCORE_EPS": "ZSCORE_EPS = 1e-7  # Sun et al. 2024's epsilon, added to the standard deviation",
}

_INPUT_TEXT = {
    "feat": "the last stage's feature map before pooling, (N, C, H, W)",
    "emb": "the pooled embedding that feeds the classifier, (N, D)",
    "logit": "the classifier output, (N, K)",
}


def _function_name(kind: str, name: str) -> str:
    return f"{kind}_{name}"


def _wrap(text: str, first: str, rest: str | None = None, width: int = 116) -> str:
    """``text`` (whitespace runs collapsed) filled to ``width`` with hanging indentation ``rest`` (default: as
    wide as ``first``)."""
    return textwrap.fill(" ".join(text.split()), width=width, initial_indent=first,
                         subsequent_indent=" " * len(first) if rest is None else rest)


def _op_function(kind: str, name: str, signature: str, body: str) -> str:
    """One op's generated function: signature, a docstring with its formula, the template body."""
    op = {"transform": TRANSFORMS, "distance": DISTANCES, "weight": WEIGHTS}[kind][name]
    doc = _wrap(f"{name}: {op.formula}. {op.doc}", '    """', "    ")
    return (f"def {_function_name(kind, name)}({signature}) -> torch.Tensor:\n"
            f'{doc}"""\n{textwrap.indent(body, "    ")}')


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


def _docstring(genome: Genome, run: str | Path | None, rank: int | None, connector: bool,
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
        _wrap(inputs, ""),
        "",
        "The loss, step by step:",
        f"1. input {genome.input}: {_INPUT_TEXT[genome.input]}.",
        _wrap("2. align: " + "; ".join(align) + ".", "", "   "),
        "3. transforms, in order, identically on both sides:",
    ]
    for slot, name in enumerate(genome.transforms, start=1):
        op = TRANSFORMS[name]
        lines.append(_wrap("empty" if name == "no" else f"{op.formula}. {op.doc}", f"   slot {slot} {name}: ",
                           "       "))
    distance, weight = DISTANCES[genome.distance], WEIGHTS[genome.weight]
    lines += [
        f"4. divide both by the temperature T = {genome.temperature}.",
        _wrap(f"5. distance {genome.distance}: {distance.formula}, one value per sample. {distance.doc}", "", "   "),
        _wrap(f"6. weight {genome.weight}: {weight.formula}. {weight.doc}", "", "   "),
        f"7. multiply by magnitude x T^2 = {genome.magnitude:g} x {genome.temperature ** 2} = "
        f"{genome.magnitude * genome.temperature ** 2:g}.",
    ]
    return '"""' + "\n".join(lines) + '\n"""'


def _forward(genome: Genome, connector: bool) -> str:
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
        lines.append("    s, t = _align_spatial(s, t)")
    for slot, op_name in enumerate(genome.transforms, start=1):
        if op_name == "no":
            continue
        fn = _function_name("transform", op_name)
        if TRANSFORMS[op_name].random:
            lines += [f"    draws = {{}} if self.training else None  # slot {slot}: one draw shared by both sides",
                      f"    s = {fn}(s, draws, self.generator)",
                      f"    t = {fn}(t, draws, self.generator)"]
        else:
            lines += [f"    s = {fn}(s)", f"    t = {fn}(t)"]
    lines += ["    s, t = s / TEMPERATURE, t / TEMPERATURE",
              f"    distances = {_function_name('distance', DISTANCES.canonical(genome.distance))}(s, t)"]
    if genome.weight == "no":
        lines.append("    value = distances.mean()")
    else:
        logits = "_select(student, \"logit\"), _select(teacher, \"logit\")" if name == "logit" else \
            "_logits(student), _logits(teacher)"
        lines += [f"    student_logit, teacher_logit = {logits}",
                  f"    value = {_function_name('weight', genome.weight)}(distances, student_logit, "
                  f"teacher_logit.detach(), target)"]
    lines.append("    return value * (MAGNITUDE * TEMPERATURE ** 2)")
    return textwrap.indent("\n".join(lines), "    ")


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
        signature = f"def __init__(self, {', '.join(params[:-1])},\n                 {params[-1]}) -> None:"
    lines = [signature]
    if doc:
        lines.append('    """' + _wrap(" ".join(doc), "    ").strip() + '"""')
    lines += ["    " + b for b in body]
    return textwrap.indent("\n".join(lines), "    ")


def _connector_function(input_name: str) -> str:
    module = ("nn.Sequential(nn.Conv2d(student_width, teacher_width, kernel_size=1, bias=False),\n"
              "                         nn.BatchNorm2d(teacher_width))") if input_name == "feat" else \
        "nn.Linear(student_width, teacher_width)"
    return (f"def _make_connector(student_width: int, teacher_width: int) -> nn.Module | None:\n"
            f'    """The student-side module mapping its width to the teacher\'s, or None when they agree."""\n'
            f"    if student_width == teacher_width:\n"
            f"        return None\n"
            f"    return {module}")


def _mentions(code: str, name: str) -> bool:
    """Whether ``code`` uses ``name`` (a word, or a prefix like ``F.``) other than as part of a longer name."""
    end = "" if name.endswith(".") else r"\b"
    return re.search(rf"(?<![\w.]){re.escape(name)}{end}", code) is not None


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

    functions = []
    for op_name in dict.fromkeys(n for n in genome.transforms if n != "no"):
        signature = "x: torch.Tensor, draws: dict | None, generator: torch.Generator | None" \
            if TRANSFORMS[op_name].random else "x: torch.Tensor"
        functions.append(_op_function("transform", op_name, signature, TRANSFORM_BODIES[op_name]))
    distance = DISTANCES.canonical(genome.distance)
    functions.append(_op_function("distance", distance, "s: torch.Tensor, t: torch.Tensor", DISTANCE_BODIES[distance]))
    if genome.weight != "no":
        functions.append(_op_function(
            "weight", genome.weight, "distances: torch.Tensor, student_logit: torch.Tensor, "
            "teacher_logit: torch.Tensor,\n" + " " * (len(genome.weight) + 12) + "target: torch.Tensor | None",
            WEIGHT_BODIES[genome.weight]))
    if connector:
        functions.append(_connector_function(genome.input))
    cls = (f"class Distiller(nn.Module):\n"
           '    """The distillation loss of ``GENOME`` (see the module docstring), student first."""\n\n'
           f"{_init(genome, connector, widths)}\n\n{_forward(genome, connector)}")

    code = "\n\n\n".join([*functions, cls])
    used: set[str] = set()
    while True:  # helpers call helpers: add until nothing new is mentioned
        text = "\n".join([code, *(HELPERS[n] for n in used)])
        new = {n for n in HELPERS if n not in used and _mentions(text, n)}
        if not new:
            break
        used |= new
    helpers = [n for n in HELPERS if n in used]
    code = "\n\n\n".join([*(HELPERS[n] for n in helpers), code])
    constants = [CONSTANTS[n] for n in CONSTANTS if _mentions(code, n)]
    constants += [f"TEMPERATURE = {genome.temperature}", f"MAGNITUDE = {genome.magnitude!r}"]
    imports = ["import math", ""] if _mentions(code, "math.") else []
    imports += ["import torch"]
    if _mentions(code, "F."):
        imports.append("import torch.nn.functional as F")
    imports.append("from torch import nn")
    header = [_docstring(genome, run, rank, connector, widths), "from __future__ import annotations", "",
              *imports, "", f'GENOME = "{genome}"', *constants, "", '__all__ = ["Distiller"]']
    return "\n".join(header) + "\n\n\n" + code + "\n"


__all__ = ["export_source", "may_need_connector"]
