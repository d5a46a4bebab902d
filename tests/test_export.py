"""export: the generated standalone source computes exactly what UnifiedLoss computes, imports no kdzero, and the
``kdzero export`` command writes it or fails with one line."""
from __future__ import annotations

import ast
import random

import pytest
import torch

from kdzero import Features, Genome, UnifiedLoss
from kdzero.cli import main
from kdzero.errors import GenomeError
from kdzero.export import export_source, may_need_connector
from kdzero.genome import FULL_SPACE
from kdzero.ops import DISTANCES, TRANSFORMS, WEIGHTS

N = 6
NARROW = {"feat": (8, 4, 4), "emb": (8,), "logit": (10,)}
WIDE = {"feat": (16, 4, 4), "emb": (16,), "logit": (10,)}
SAME = {"feat": (8, 5, 5), "emb": (8,), "logit": (10,)}
SPATIAL = {"feat": (8, 6, 6), "emb": (8,), "logit": (10,)}  # a larger map than WIDE's: pooled to 4x4


def _features(shapes: dict, seed: int) -> Features:
    gen = torch.Generator().manual_seed(seed)
    return Features(*(torch.randn(N, *shapes[name], generator=gen) for name in Features._fields))


def _code_without_docstring(source: str) -> str:
    tree = ast.parse(source)
    assert isinstance(tree.body[0], ast.Expr) and isinstance(tree.body[0].value, ast.Constant)
    return ast.unparse(ast.Module(body=tree.body[1:], type_ignores=[]))


def _load(source: str) -> type:
    namespace: dict = {"__name__": "exported_distiller"}
    exec(compile(source, "<exported>", "exec"), namespace)
    return namespace["Distiller"]


def _check_equal(genome: Genome, student_shapes: dict, teacher_shapes: dict, seed: int) -> None:
    source = export_source(genome, student_shapes=student_shapes, teacher_shapes=teacher_shapes)
    assert "kdzero" not in _code_without_docstring(source)
    reference = UnifiedLoss(genome, student_shapes, teacher_shapes, generator=torch.Generator().manual_seed(seed))
    exported = _load(source)(generator=torch.Generator().manual_seed(seed)) \
        if any(TRANSFORMS[n].random for n in genome.transforms) else _load(source)()
    exported.load_state_dict(reference.state_dict())
    student, teacher = _features(student_shapes, seed), _features(teacher_shapes, seed + 1)
    target = torch.randint(0, 10, (N,), generator=torch.Generator().manual_seed(seed))
    for training in (True, False):
        reference.train(training)
        exported.train(training)
        for labels in (target, None):  # a second call also checks that random draws advance identically
            expected = reference(student, teacher, labels)
            got = exported(student, teacher, labels)
            assert torch.isfinite(expected), genome
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6, msg=lambda m: f"{genome}: {m}")


def _random_valid_genomes(count: int, student_shapes: dict, teacher_shapes: dict, seed: int) -> list[Genome]:
    rng = random.Random(seed)
    found: list[Genome] = []
    while len(found) < count:
        genome = Genome.random(rng, FULL_SPACE)
        if genome.is_valid(student_shapes, teacher_shapes):
            found.append(genome)
    return found


def test_exported_source_matches_unified_loss_on_100_random_genomes():
    cases = [(g, NARROW, WIDE) for g in _random_valid_genomes(70, NARROW, WIDE, seed=0)]
    cases += [(g, SAME, SAME) for g in _random_valid_genomes(15, SAME, SAME, seed=1)]
    cases += [(g, SPATIAL, WIDE) for g in _random_valid_genomes(15, SPATIAL, WIDE, seed=2)]
    for index, (genome, student_shapes, teacher_shapes) in enumerate(cases):
        _check_equal(genome, student_shapes, teacher_shapes, seed=index)


def _single_op_genomes() -> list[Genome]:
    """One genome per op (a transform in slot 2 on every input it accepts; each distance and weight)."""
    genomes = []
    for name in TRANSFORMS.names():
        for input_name in ("feat", "emb", "logit"):
            genome = Genome(input_name, ("no", name, "no"), "l2", "no", 4, 1)
            if genome.is_valid(NARROW, WIDE):
                genomes.append(genome)
    genomes += [Genome("feat", ("no", "no", "no"), name, "no", 4, 1) for name in DISTANCES.names()]
    genomes += [Genome("logit", ("no", "no", "no"), "kl", name, 4, 1) for name in WEIGHTS.names()]
    return genomes


@pytest.mark.parametrize("genome", _single_op_genomes(), ids=str)
def test_every_op_template_matches_its_registered_op(genome):
    _check_equal(genome, NARROW, WIDE, seed=7)


def test_random_ops_share_one_draw_per_slot_and_differ_between_slots():
    genome = Genome.parse("feat[mask,drop,no]|l2|no|T1|x1")
    _check_equal(genome, NARROW, WIDE, seed=3)
    _check_equal(genome, SAME, SAME, seed=4)


def test_only_the_ops_the_genome_uses_are_emitted():
    source = export_source("logit[no,no,no]|kl|no|T4|x1")
    assert "def distance_kl" in source
    assert "def transform_" not in source and "def weight_" not in source
    assert "_make_connector" not in source and "import math" not in source
    assert "_align_spatial" not in source
    assert "def transform_pow2" in export_source("feat[pow2,channel,norm_HW]|l2|no|T1|x100")


def test_docstring_names_genome_origin_and_each_op_formula():
    genome = Genome.parse("feat[pow2,channel,norm_HW]|l2|entropy|T4|x25")
    source = export_source(genome, run="runs/digits", rank=3)
    docstring = ast.get_docstring(ast.parse(source))
    assert str(genome) in docstring and "rank 3 of search run runs/digits" in docstring
    for formula in (TRANSFORMS["pow2"].formula, TRANSFORMS["channel"].formula, DISTANCES["l2"].formula,
                    WEIGHTS["entropy"].formula):
        assert formula in docstring
    assert "25 x 16 = 400" in docstring


def test_plain_tensors_are_accepted_for_the_chosen_input():
    genome = Genome.parse("emb[scale,no,no]|cosine|no|T1|x10")
    source = export_source(genome, student_shapes=NARROW, teacher_shapes=WIDE)
    reference = UnifiedLoss(genome, NARROW, WIDE)
    exported = _load(source)()
    exported.load_state_dict(reference.state_dict())
    student, teacher = _features(NARROW, 0), _features(WIDE, 1)
    torch.testing.assert_close(exported(student.emb, teacher.emb), reference(student, teacher))


def test_weighting_by_logits_refuses_plain_feature_tensors():
    distiller = _load(export_source("feat[no,no,no]|l2|conf|T1|x1", student_shapes=SAME, teacher_shapes=SAME))()
    features = _features(SAME, 0)
    with pytest.raises(TypeError, match="reads the logits"):
        distiller(features.feat, features.feat)


def test_connector_widths_are_required_without_shapes_and_checked_at_call():
    source = export_source("feat[no,no,no]|l2|no|T1|x1")
    distiller_cls = _load(source)
    with pytest.raises(TypeError):
        distiller_cls()
    distiller = distiller_cls(student_width=8, teacher_width=16)
    assert sum(p.numel() for p in distiller.parameters()) == 8 * 16 + 2 * 16
    with pytest.raises(ValueError, match="built for widths 8"):
        distiller(_features(WIDE, 0), _features(WIDE, 1))


def test_channel_pooling_and_batch_gram_need_no_connector():
    assert not may_need_connector(Genome.parse("feat[pow2,channel,norm_HW]|l2|no|T1|x100"))
    assert not may_need_connector(Genome.parse("emb[mm,no,no]|l2|no|T1|x1"))
    assert not may_need_connector(Genome.parse("logit[no,no,no]|kl|no|T4|x1"))
    assert may_need_connector(Genome.parse("feat[bmm,no,no]|l2|no|T1|x1"))
    assert "_make_connector" not in export_source("feat[pow2,channel,norm_HW]|l2|no|T1|x100")


def test_invalid_genome_for_the_shapes_is_a_genome_error():
    with pytest.raises(GenomeError, match="satt"):
        export_source("emb[satt,no,no]|l2|no|T1|x1", student_shapes=NARROW, teacher_shapes=WIDE)


def test_cli_writes_the_file_and_prints_to_stdout_without_o(tmp_path, capsys):
    out = tmp_path / "my_distiller.py"
    assert main(["export", "--genome", "feat[pow2,channel,norm_HW]|l2|no|T1|x100", "-o", str(out)]) == 0
    assert "class Distiller(nn.Module)" in out.read_text()
    assert str(out) in capsys.readouterr().err
    assert main(["export", "--genome", "emb[no,no,no]|l2|no|T1|x1", "--student-shapes", "emb=8",
                 "--teacher-shapes", "emb=16"]) == 0
    printed = capsys.readouterr().out
    assert "student_width: int = 8" in printed
    _load(printed)


@pytest.mark.parametrize("argv", [
    ["export", "--genome", "feat[pow3,no,no]|l2|no|T1|x1"],
    ["export", "--genome", "logit[no,no,no]|kl|no|T4"],
    ["export"],
    ["export", "--genome", "logit[no,no,no]|kl|no|T4|x1", "--student-shapes", "logit=10"],
])
def test_cli_bad_input_is_one_line_and_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kdzero export: error:")


def test_each_exported_op_is_its_registered_source_renamed():
    """Every op is written once: the exported function is the registered function's own source, renamed."""
    import inspect
    import textwrap

    source = export_source("feat[pow2,channel,norm_HW]|pearson|entropy|T4|x25")
    for kind, op in (("transform", TRANSFORMS["pow2"]), ("transform", TRANSFORMS["norm_HW"]),
                     ("distance", DISTANCES["pearson"]), ("weight", WEIGHTS["entropy"])):
        own = textwrap.dedent(inspect.getsource(op.fn))
        body = own[own.index("\n", own.index(f"def {op.fn.__name__}(")):]  # after the signature's first line
        assert f"def {kind}_{op.name}(" in source and body.split(") -> torch.Tensor:\n", 1)[-1] in source


def test_an_op_reading_a_module_the_file_cannot_import_is_refused():
    from kdzero.export.sources import SourceSet

    def leaky(x):
        return x * random.random()  # this test module's ``random``: not torch, torch.nn, F or math

    with pytest.raises(ValueError, match="imports only"):
        SourceSet().add(leaky)
