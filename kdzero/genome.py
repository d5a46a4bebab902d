"""The genome: a symbolic distiller, written as one line of text.

Grammar (the canonical form that ``str(genome)`` prints and ``Genome.parse`` reads)::

    INPUT[T1,T2,T3]|DISTANCE|WEIGHT|T<temperature>|x<magnitude>

    logit[no,no,no]|kl|no|T4|x1              Hinton KD
    feat[pow2,channel,norm_HW]|l2|no|T1|x100  attention transfer

INPUT is the knowledge input (feat, emb, logit); T1..T3 are three transforms applied in order to both sides;
DISTANCE compares them per sample; WEIGHT turns per-sample values into the loss; the temperature divides both
sides after the transforms, and the loss is multiplied by magnitude x temperature^2. Spaces are ignored.
Parsing is strict and its errors name the bad token, its field and the closest valid choices.

The genome knows nothing of Optuna or models: it is data plus the rules that make it valid.
"""
from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

from kdzero.errors import GenomeError, suggest
from kdzero.genome_key import canonical_key
from kdzero.genome_numbers import MAGNITUDE_RANGE as MAGNITUDE_RANGE  # re-exported: part of this module's API
from kdzero.genome_numbers import TEMPERATURE_RANGE as TEMPERATURE_RANGE
from kdzero.genome_numbers import clipped, format_number, number_value, parse_number, shown_text
from kdzero.ops import DISTANCES, INPUT_RANKS, INPUTS, MAGNITUDES, TEMPERATURES, TRANSFORMS, WEIGHTS
from kdzero.ops.checks import ACTIVATION_BOUND, overflow_reason, student_gradient_vanishes

GRAMMAR = "INPUT[T1,T2,T3]|DISTANCE|WEIGHT|T<temperature>|x<magnitude>"
EXAMPLE = "logit[no,no,no]|kl|no|T4|x1"
NUM_SLOTS = 3
# The genes a mutation can change, in the order the paper lists them.
GENES: tuple[str, ...] = ("input", "transform1", "transform2", "transform3", "distance", "weight",
                          "temperature", "magnitude")
_PROBE_BATCH = 8  # stand-in batch size for shape propagation; any value >= 2 gives the same verdicts


@dataclass(frozen=True)
class SearchSpace:
    """The choices for every gene; ``slots`` gives each transform slot its own list (static shrinkage)."""

    inputs: tuple[str, ...] = INPUTS
    slots: tuple[tuple[str, ...], ...] = (TRANSFORMS.names(),) * NUM_SLOTS
    distances: tuple[str, ...] = DISTANCES.names()
    weights: tuple[str, ...] = WEIGHTS.names()
    temperatures: tuple[float, ...] = TEMPERATURES
    magnitudes: tuple[float, ...] = MAGNITUDES

    def choices(self, gene: str) -> tuple:
        """The valid values of one gene (names as in ``GENES``)."""
        if gene.startswith("transform"):
            return self.slots[int(gene[-1]) - 1]
        return {"input": self.inputs, "distance": self.distances, "weight": self.weights,
                "temperature": self.temperatures, "magnitude": self.magnitudes}[gene]

    def size(self) -> int:
        """Number of distinct genomes in the space (before validity and deduplication)."""
        return math.prod(len(self.choices(gene)) for gene in GENES)

    def including(self, genomes: Sequence[Genome]) -> SearchSpace:
        """A copy whose choices also hold every gene value of ``genomes`` (so enqueued presets fit the space)."""
        space = self
        for genome in genomes:
            for gene in GENES:
                value = genome.gene(gene)
                if value not in space.choices(gene):
                    space = space._with_choices(gene, (*space.choices(gene), value))
        return space

    def _with_choices(self, gene: str, values: tuple) -> SearchSpace:
        if gene.startswith("transform"):
            slots = list(self.slots)
            slots[int(gene[-1]) - 1] = tuple(values)
            return replace(self, slots=tuple(slots))
        return replace(self, **{{"input": "inputs", "distance": "distances", "weight": "weights",
                                 "temperature": "temperatures", "magnitude": "magnitudes"}[gene]: tuple(values)})

    def without(self, gene: str, values: Sequence) -> SearchSpace:
        """A copy with ``values`` removed from ``gene`` (never emptying it): adaptive shrinkage."""
        kept = tuple(v for v in self.choices(gene) if v not in set(values)) or self.choices(gene)[:1]
        return self._with_choices(gene, kept)


FULL_SPACE = SearchSpace()
# Static shrinkage from the KD-Zero paper: each slot draws from one family of ops.
SHRUNK_SPACE = SearchSpace(slots=(
    ("no", "satt", "natt", "catt", "mask"),
    ("no", "multi_scale_r1", "multi_scale_r2", "multi_scale_r4", "local_s1", "local_s2", "local_s4", "scale"),
    ("no", "batch", "channel", "norm_HW", "norm_C", "norm_N", "softmax_N", "softmax_C", "softmax_HW",
     "logsoftmax_N", "logsoftmax_C", "logsoftmax_HW", "min_max_normalize", "batchnorm", "zscore_C"),
))


@dataclass(frozen=True)
class Genome:
    """A distiller: knowledge input, three transforms, distance, weighting, temperature, magnitude.

    Construction validates every field against the registries; ``str(g)`` is the canonical text and
    ``Genome.parse(str(g)) == g`` always holds.
    """

    input: str
    transforms: tuple[str, str, str]
    distance: str
    weight: str = "no"
    temperature: float = 1
    magnitude: float = 1.0
    _key: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.input, str) or self.input not in INPUTS:
            raise GenomeError(f"unknown input {clipped(self.input)} in field 'input'; "
                              f"{suggest(shown_text(self.input), INPUTS)}")
        if isinstance(self.transforms, str):
            transforms: tuple = (self.transforms,)
        elif isinstance(self.transforms, (list, tuple)):
            transforms = tuple(self.transforms)
        else:
            raise GenomeError(f"transforms must be a list of {NUM_SLOTS} transform names, "
                              f"got {clipped(self.transforms)}")
        if len(transforms) != NUM_SLOTS:
            raise GenomeError(f"a genome has exactly {NUM_SLOTS} transforms (use 'no' for an empty slot), "
                              f"got {len(transforms)}: {clipped(','.join(map(shown_text, transforms)))}")
        for slot, name in enumerate(transforms, start=1):
            if name not in TRANSFORMS:
                raise GenomeError(f"unknown transform {clipped(name)} in field 'transform{slot}'; "
                                  f"{suggest(shown_text(name), TRANSFORMS)}")
        object.__setattr__(self, "transforms", transforms)
        if self.distance not in DISTANCES:
            raise GenomeError(f"unknown distance {clipped(self.distance)} in field 'distance'; "
                              f"{suggest(shown_text(self.distance), DISTANCES)}")
        if self.weight not in WEIGHTS:
            raise GenomeError(f"unknown weight {clipped(self.weight)} in field 'weight'; "
                              f"{suggest(shown_text(self.weight), WEIGHTS)}")
        object.__setattr__(self, "temperature", number_value(self.temperature, "temperature"))
        object.__setattr__(self, "magnitude", float(number_value(self.magnitude, "magnitude")))
        object.__setattr__(self, "_key", canonical_key(self.input, transforms, self.distance, self.weight,
                                                       self.temperature, self.magnitude))

    # ------------------------------------------------------------------------------------------ text form
    def __str__(self) -> str:
        return (f"{self.input}[{','.join(self.transforms)}]|{self.distance}|{self.weight}|"
                f"T{format_number(self.temperature)}|x{format_number(self.magnitude)}")

    @classmethod
    def parse(cls, text: str) -> Genome:
        """Read the canonical text form; raises GenomeError naming the bad token and the closest choices."""
        if not isinstance(text, str):
            raise GenomeError(f"a genome text must be a string, got {type(text).__name__}")
        compact = "".join(text.split())
        if not compact:
            raise GenomeError(f"empty genome text; expected {GRAMMAR}, e.g. {EXAMPLE}")
        parts = compact.split("|")
        if len(parts) != 5:
            raise GenomeError(f"genome text {clipped(text)} has {len(parts)} '|'-separated fields, expected 5: "
                              f"{GRAMMAR}, e.g. {EXAMPLE}")
        head, distance, weight, temp_token, mag_token = parts
        if "[" not in head or not head.endswith("]") or head.count("[") != 1:
            raise GenomeError(f"bad knowledge field {clipped(head)}; expected INPUT[T1,T2,T3], "
                              f"e.g. logit[no,no,no]")
        input_name, slot_text = head[:-1].split("[")
        transforms = tuple(slot_text.split(",")) if slot_text else ()
        temperature = parse_number(temp_token, "T", "temperature")
        magnitude = parse_number(mag_token, "x", "magnitude")
        return cls(input_name, transforms, distance, weight, temperature, magnitude)

    def to_dict(self) -> dict:
        """Plain-data form (the JSON object)."""
        return {"input": self.input, "transforms": list(self.transforms), "distance": self.distance,
                "weight": self.weight, "temperature": self.temperature, "magnitude": self.magnitude}

    def to_json(self) -> str:
        """JSON text of ``to_dict()``."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping) -> Genome:
        """Inverse of ``to_dict``; unknown or missing keys raise GenomeError."""
        if not isinstance(data, Mapping):
            raise GenomeError(f"a genome JSON must be an object, got {type(data).__name__}")
        expected = ("input", "transforms", "distance", "weight", "temperature", "magnitude")
        unknown = [k for k in data if k not in expected]
        if unknown:
            raise GenomeError(f"unknown genome key {clipped(unknown[0])}; "
                              f"{suggest(shown_text(unknown[0]), expected)}")
        missing = [k for k in expected if k not in data]
        if missing:
            raise GenomeError(f"genome JSON lacks {', '.join(missing)}")
        if not isinstance(data["transforms"], (list, tuple)):
            raise GenomeError("genome JSON 'transforms' must be a list of 3 transform names")
        return cls(data["input"], tuple(data["transforms"]), data["distance"], data["weight"],
                   data["temperature"], data["magnitude"])

    @classmethod
    def from_json(cls, text: str) -> Genome:
        """Inverse of ``to_json``."""
        if not isinstance(text, (str, bytes, bytearray)):
            raise GenomeError(f"a genome JSON must be text, got {type(text).__name__}")
        try:
            data = json.loads(text)
        except RecursionError:
            raise GenomeError("genome JSON is nested too deeply; a genome is one flat object") from None
        except ValueError as exc:  # JSONDecodeError, bad UTF-8, an integer with too many digits
            raise GenomeError(f"genome JSON is not valid JSON: {clipped(str(exc), 120)}") from None
        return cls.from_dict(data)

    # ----------------------------------------------------------------------------------------- identity
    @property
    def key(self) -> str:
        """Canonical key: equal for genomes that compute the same loss (no-op slots anywhere, exact idempotents,
        redundant signs, shifts and scales, what the distance cannot see, temperature x magnitude pairs of
        homogeneous distances; ``kdzero.genome_key`` lists the rules). The search never pays twice for one key."""
        return self._key

    def gene(self, name: str):
        """The value of one gene by its name in ``GENES``."""
        if name.startswith("transform"):
            return self.transforms[int(name[-1]) - 1]
        return getattr(self, name)

    def with_gene(self, name: str, value) -> Genome:
        """A copy with one gene replaced."""
        if name.startswith("transform"):
            transforms = list(self.transforms)
            transforms[int(name[-1]) - 1] = value
            return replace(self, transforms=tuple(transforms))
        return replace(self, **{name: value})

    # ------------------------------------------------------------------------------------------- shapes
    def output_shapes(self, student_shapes: Mapping[str, Sequence[int]],
                      teacher_shapes: Mapping[str, Sequence[int]]) -> tuple[tuple[int, ...], ...]:
        """Propagate per-sample shapes through the pipeline; returns the shape after alignment and after each
        transform (batch axis included, as a stand-in of 8). Raises GenomeError where the genome is invalid
        for these shapes: an op undefined for its input's rank, classes that differ, a distance comparing
        along an axis too short to mean anything."""
        shape = (_PROBE_BATCH, *aligned_shape(self.input, student_shapes, teacher_shapes))
        shapes = [shape]
        for slot, name in enumerate(self.transforms, start=1):
            try:
                shape = TRANSFORMS[name].output_shape(shape)
            except GenomeError as exc:
                raise GenomeError(f"transform{slot} of {self}: {exc}") from None
            shapes.append(shape)
        compare_len = shape[-1] if len(shape) <= 3 else math.prod(shape[2:])
        distance = DISTANCES[self.distance]
        if compare_len < distance.min_compare_len:
            raise GenomeError(f"distance {self.distance!r} compares along an axis of length {compare_len} "
                              f"after the transforms of {self} (shape {shape}); it needs at least "
                              f"{distance.min_compare_len}")
        reason = distance.degenerate(shape) if distance.degenerate is not None else ""
        if reason:
            raise GenomeError(f"distance {self.distance!r} carries no information after the transforms of {self} "
                              f"(shape {shape}): {reason}")
        return tuple(shapes)

    def needs_connector(self, student_shapes: Mapping[str, Sequence[int]],
                        teacher_shapes: Mapping[str, Sequence[int]]) -> bool:
        """Whether the student side needs a learned width connector: only when its width differs from the
        teacher's and the transforms do not already make both sides comparable (channel pooling, a batch Gram:
        AT and SP work across widths without one, as in their papers)."""
        name = self.input
        student, teacher = tuple(student_shapes[name]), tuple(teacher_shapes[name])
        if student[0] == teacher[0]:
            return False
        unconnected = (student[0], *aligned_shape(name, student_shapes, teacher_shapes)[1:])
        try:
            final = self._propagate((_PROBE_BATCH, *unconnected))
        except GenomeError:
            return True
        return final != self.output_shapes(student_shapes, teacher_shapes)[-1]

    def _propagate(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        for name in self.transforms:
            shape = TRANSFORMS[name].output_shape(shape)
        return shape

    def validate(self, student_shapes: Mapping[str, Sequence[int]],
                 teacher_shapes: Mapping[str, Sequence[int]]) -> None:
        """Raise GenomeError if this genome cannot run on these teacher/student shapes, could overflow float32
        there on activations up to ``ACTIVATION_BOUND``, or could not train the student because its loss is
        constant in the student's input (no training needed)."""
        shapes = self.output_shapes(student_shapes, teacher_shapes)
        overflow = overflow_reason(self.transforms, self.distance, self.temperature, self.magnitude, shapes[0])
        if overflow:
            raise GenomeError(f"{self} can overflow float32 on activations up to {ACTIVATION_BOUND:.0e}: {overflow}; "
                              f"drop a power, exp or Gram product, or normalise "
                              f"before the distance")
        if student_gradient_vanishes(self.transforms, self.distance, shapes[0]):
            raise GenomeError(f"{self} is constant in the student's {self.input} for these shapes (its transforms "
                              f"and distance leave nothing that depends on it, e.g. relu after logsoftmax), so it "
                              f"could not train the student")

    def is_valid(self, student_shapes: Mapping[str, Sequence[int]],
                 teacher_shapes: Mapping[str, Sequence[int]]) -> bool:
        """``validate`` as a boolean."""
        try:
            self.validate(student_shapes, teacher_shapes)
        except GenomeError:
            return False
        return True

    # ---------------------------------------------------------------------------------------- variation
    @classmethod
    def random(cls, rng: random.Random, space: SearchSpace = FULL_SPACE) -> Genome:
        """A genome with every gene drawn uniformly from ``space``."""
        return cls(rng.choice(space.inputs), tuple(rng.choice(slot) for slot in space.slots),
                   rng.choice(space.distances), rng.choice(space.weights), rng.choice(space.temperatures),
                   rng.choice(space.magnitudes))

    def mutate(self, rng: random.Random, space: SearchSpace = FULL_SPACE, num_genes: int | None = None) -> Genome:
        """A copy of this genome with ``num_genes`` genes (default: 1 or 2) changed to other values of ``space``.
        Every other gene is inherited from the parent."""
        mutable = [g for g in GENES if len(space.choices(g)) > 1 or self.gene(g) not in space.choices(g)]
        count = num_genes if num_genes is not None else rng.choice((1, 1, 2))
        child = self
        for gene in rng.sample(mutable, min(count, len(mutable))):
            options = [v for v in space.choices(gene) if v != self.gene(gene)]
            child = child.with_gene(gene, rng.choice(options))
        return child

    def crossover(self, other: Genome, rng: random.Random) -> Genome:
        """Uniform crossover: each gene from one parent or the other with equal probability."""
        child = self
        for gene in GENES:
            if rng.random() < 0.5:
                child = child.with_gene(gene, other.gene(gene))
        return child


def aligned_shape(input_name: str, student_shapes: Mapping[str, Sequence[int]],
                  teacher_shapes: Mapping[str, Sequence[int]]) -> tuple[int, ...]:
    """Per-sample shape both sides share after the loss's alignment step: teacher channels (the student gets a
    connector), the smaller spatial size (adaptive pooling). Logits must have the same class count."""
    for side, shapes in (("student", student_shapes), ("teacher", teacher_shapes)):
        if input_name not in shapes:
            raise GenomeError(f"no {input_name!r} shape given for the {side}; have {', '.join(shapes) or 'none'}")
    student, teacher = tuple(student_shapes[input_name]), tuple(teacher_shapes[input_name])
    if len(student) != len(teacher) or len(teacher) + 1 != INPUT_RANKS[input_name]:
        raise GenomeError(f"{input_name} shapes {student} (student) and {teacher} (teacher) are not both "
                          f"{INPUT_RANKS[input_name] - 1}-D per sample")
    if input_name == "logit" and student[0] != teacher[0]:
        raise GenomeError(f"student predicts {student[0]} classes but the teacher {teacher[0]}; logit "
                          f"distillation needs the same classes")
    if input_name == "feat":
        return (teacher[0], min(student[1], teacher[1]), min(student[2], teacher[2]))
    return teacher


GENOME_FIELDS = tuple(f.name for f in fields(Genome) if not f.name.startswith("_"))
