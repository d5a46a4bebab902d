"""The genome: text and JSON round trips, static validation, parse errors, canonical key, variation."""
from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdzero import PRESETS, Genome
from kdzero.errors import GenomeError
from kdzero.genome import FULL_SPACE, GENES, SHRUNK_SPACE, SearchSpace

SHAPE_SETS = [
    ({"feat": (16, 8, 8), "emb": (16,), "logit": (10,)}, {"feat": (64, 8, 8), "emb": (64,), "logit": (10,)}),
    ({"feat": (64, 7, 7), "emb": (64,), "logit": (100,)}, {"feat": (64, 7, 7), "emb": (64,), "logit": (100,)}),
    ({"feat": (8, 1, 1), "emb": (8,), "logit": (10,)}, {"feat": (16, 1, 1), "emb": (16,), "logit": (10,)}),
    ({"feat": (32, 4, 4), "emb": (32,), "logit": (10,)}, {"feat": (64, 8, 8), "emb": (128,), "logit": (100,)}),
]
AT_SHAPES = ({"feat": (16, 8, 8), "emb": (16,), "logit": (10,)}, {"feat": (64, 8, 8), "emb": (64,), "logit": (10,)})


def _one_line_genome_error(text) -> str:
    """Parse ``text`` expecting a GenomeError; any other exception fails the test. Returns the message."""
    try:
        Genome.parse(text)
    except GenomeError as exc:
        message = str(exc)
        assert message and "\n" not in message and len(message.splitlines()) == 1, repr(message)
        return message
    except Exception as exc:
        pytest.fail(f"{text!r} raised {type(exc).__name__}: {exc}")
    pytest.fail(f"{text!r} parsed without error")


# ----------------------------------------------------------------------------------------- 10,000 genomes
@pytest.mark.parametrize("space", [FULL_SPACE, SHRUNK_SPACE], ids=["full", "shrunk"])
def test_ten_thousand_random_genomes_round_trip_and_validate_with_genome_errors_only(space: SearchSpace):
    rng = random.Random(20231)
    valid_counts = [0] * len(SHAPE_SETS)
    for _ in range(10_000):
        genome = Genome.random(rng, space)
        text = str(genome)
        parsed = Genome.parse(text)
        assert parsed == genome and str(parsed) == text and parsed.key == genome.key
        assert Genome.from_json(genome.to_json()) == genome
        for index, (student, teacher) in enumerate(SHAPE_SETS):
            try:
                genome.validate(student, teacher)
                genome.needs_connector(student, teacher)
            except GenomeError as exc:
                assert "\n" not in str(exc)
            except Exception as exc:
                pytest.fail(f"{genome} on shape set {index} raised {type(exc).__name__}: {exc}")
            else:
                valid_counts[index] += 1
    assert all(0 < count < 10_000 for count in valid_counts), valid_counts


def test_genome_drawn_from_space_uses_only_its_choices():
    rng = random.Random(7)
    for _ in range(500):
        genome = Genome.random(rng, SHRUNK_SPACE)
        for gene in GENES:
            assert genome.gene(gene) in SHRUNK_SPACE.choices(gene)


def test_random_genomes_are_reproducible_from_the_seed():
    first = [Genome.random(random.Random(3)) for _ in range(5)]
    second = [Genome.random(random.Random(3)) for _ in range(5)]
    assert first == second


def test_text_form_is_the_documented_grammar():
    genome = Genome("feat", ("pow2", "channel", "norm_HW"), "l2", "no", 1, 100)
    assert str(genome) == "feat[pow2,channel,norm_HW]|l2|no|T1|x100"
    assert Genome.parse(" feat [ pow2 , channel , norm_HW ] | l2 | no | T1 | x100 ") == genome
    assert str(Genome("logit", ("no",) * 3, "kl", "no", 4, 0.01)) == "logit[no,no,no]|kl|no|T4|x0.01"


def test_json_form_is_a_plain_object():
    genome = PRESETS["kd"]
    assert json.loads(genome.to_json()) == {"input": "logit", "transforms": ["no", "no", "no"], "distance": "kl",
                                            "weight": "no", "temperature": 4, "magnitude": 1.0}


# ------------------------------------------------------------------------------------------- parse errors
@pytest.mark.parametrize("text,token,field,suggestion", [
    ("feat[pow3,no,no]|l2|no|T1|x1", "pow3", "transform1", "pow2"),
    ("feat[no,sofmax_C,no]|l2|no|T1|x1", "sofmax_C", "transform2", "softmax_C"),
    ("feat[no,no,bachnorm]|l2|no|T1|x1", "bachnorm", "transform3", "batchnorm"),
    ("feet[no,no,no]|l2|no|T1|x1", "feet", "input", "feat"),
    ("feat[no,no,no]|l3|no|T1|x1", "l3", "distance", "l2"),
    ("feat[no,no,no]|l2|focall|T1|x1", "focall", "weight", "focal"),
])
def test_unknown_name_error_names_token_field_and_suggestion(text, token, field, suggestion):
    message = _one_line_genome_error(text)
    assert repr(token) in message and f"'{field}'" in message and suggestion in message


@pytest.mark.parametrize("slots", ["no,no", "no", "no,no,no,no", ""])
def test_wrong_number_of_transforms_is_rejected(slots):
    message = _one_line_genome_error(f"feat[{slots}]|l2|no|T1|x1")
    assert "exactly 3 transforms" in message


@pytest.mark.parametrize("token", ["T0", "T-4", "T+4", "T0.0", "T1e-9", "Tfoo", "Tnan", "Tinf", "T1e9", "T1e400",
                                   "T", "Tx", "t4", "4", "T4_0", "T\u0664", "T\uff14", "T4\u00b2", "T 4e", "T0x10"])
def test_bad_temperature_says_what_a_temperature_is(token):
    message = _one_line_genome_error(f"logit[no,no,no]|kl|no|{token}|x1")
    assert "temperature" in message and "T4" in message


@pytest.mark.parametrize("token", ["x0", "x-1", "x+1", "x1e7", "x1e-400", "xabc", "xnan", "x", "x1O", "X1",
                                   "x\u0661", "x1,5"])
def test_bad_magnitude_says_what_a_magnitude_is(token):
    message = _one_line_genome_error(f"logit[no,no,no]|kl|no|T4|{token}")
    assert "magnitude" in message and "x1" in message


@pytest.mark.parametrize("text, canonical", [
    ("logit[no,no,no]|kl|no|T3|x9", "logit[no,no,no]|kl|no|T3|x9"),
    ("logit[no,no,no]|kl|no|T2.5|x0.25", "logit[no,no,no]|kl|no|T2.5|x0.25"),
    ("logit[no,no,no]|kl|no|T4.0|x1.000", "logit[no,no,no]|kl|no|T4|x1"),
    ("logit[no,no,no]|kl|no|T.5|x1e-3", "logit[no,no,no]|kl|no|T0.5|x0.001"),
    ("logit[no,no,no]|kl|no|T1E1|x1e-06", "logit[no,no,no]|kl|no|T10|x1e-06"),
    ("logit[no,no,no]|kl|no|T0.07|x30000", "logit[no,no,no]|kl|no|T0.07|x30000"),
    ("logit[no,no,no]|kl|no|T3.14159265358979|x0.1", "logit[no,no,no]|kl|no|T3.14159265358979|x0.1"),
])
def test_any_positive_temperature_and_magnitude_has_one_canonical_text(text, canonical):
    genome = Genome.parse(text)
    assert str(genome) == canonical and Genome.parse(canonical) == genome
    assert Genome.from_json(genome.to_json()) == genome


def test_off_grid_numbers_round_trip_exactly():
    rng = random.Random(5)
    for _ in range(2000):
        genome = Genome("logit", ("no", "no", "no"), "kl", "no", 10 ** rng.uniform(-2, 3), 10 ** rng.uniform(-6, 6))
        assert Genome.parse(str(genome)) == genome and str(Genome.parse(str(genome))) == str(genome)


@pytest.mark.parametrize("field, value", [("temperature", 0), ("temperature", -4), ("temperature", float("nan")),
                                          ("temperature", float("inf")), ("magnitude", 0.0), ("magnitude", -1),
                                          ("magnitude", float("nan")), ("temperature", "4"), ("magnitude", None),
                                          ("temperature", True)])
def test_constructor_refuses_non_positive_or_non_numeric_numbers(field, value):
    with pytest.raises(GenomeError, match=field):
        Genome("logit", ("no", "no", "no"), "kl", **{field: value})


@pytest.mark.parametrize("text", ["", "   ", "\n\t", "feat", "feat[no,no,no]", "feat[no,no,no]|l2|no|T1",
                                  "feat[no,no,no]|l2|no|T1|x1|extra", "feat(no,no,no)|l2|no|T1|x1",
                                  "feat[[no,no,no]]|l2|no|T1|x1", "[no,no,no]|l2|no|T1|x1", "||||",
                                  "feat[no,no,no]|l2|no|T1|x1\nfeat[no,no,no]|l2|no|T1|x1"])
def test_malformed_text_raises_one_line_genome_error(text):
    _one_line_genome_error(text)


def test_empty_text_error_shows_the_grammar():
    message = _one_line_genome_error("")
    assert "empty" in message and "INPUT[T1,T2,T3]" in message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
def test_random_text_never_raises_anything_but_one_line_genome_error(text):
    try:
        genome = Genome.parse(text)
    except GenomeError as exc:
        assert "\n" not in str(exc) and len(str(exc).splitlines()) == 1
    else:
        assert Genome.parse(str(genome)) == genome


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary().map(lambda b: b.decode("latin-1")))
def test_random_bytes_never_raise_anything_but_one_line_genome_error(text):
    try:
        genome = Genome.parse(text)
    except GenomeError as exc:
        assert "\n" not in str(exc) and len(str(exc).splitlines()) == 1
    else:
        assert Genome.parse(str(genome)) == genome


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
def test_random_json_text_never_raises_anything_but_genome_error(text):
    try:
        Genome.from_json(text)
    except GenomeError as exc:
        assert "\n" not in str(exc)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                       max_size=3),
                           max_leaves=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({"input": st.sampled_from(["feat", "emb", "logit"]) | JSON_VALUES,
                              "transforms": st.lists(st.sampled_from(["no", "relu"]) | JSON_VALUES, max_size=4),
                              "distance": st.just("l2") | JSON_VALUES, "weight": st.just("no") | JSON_VALUES,
                              "temperature": st.sampled_from([1, 4]) | JSON_VALUES,
                              "magnitude": st.sampled_from([1, 0.1]) | JSON_VALUES}))
def test_json_with_wrongly_typed_fields_raises_genome_error(data):
    try:
        genome = Genome.from_json(json.dumps(data))
    except GenomeError as exc:
        assert "\n" not in str(exc)
    else:
        assert Genome.from_json(genome.to_json()) == genome


_JSON_BODY = '"transforms": ["no", "no", "no"], "distance": "l2", "weight": "no", "temperature": 1, "magnitude": 1'
MALFORMED_JSON = [
    "{", "[]", "null", '"feat"', '{"input": "feat"}',
    '{"input": "feat", ' + _JSON_BODY + ', "colour": 1}',
    '{"input": "feat", ' + _JSON_BODY.replace('["no", "no", "no"]', '"no"') + "}",
    '{"input": "feat", ' + _JSON_BODY.replace('["no", "no", "no"]', '[["no"], "no", "no"]') + "}",
    '{"input": "feat", ' + _JSON_BODY.replace('"l2"', "{}") + "}",
    '{"input": "feat", ' + _JSON_BODY.replace('"temperature": 1', '"temperature": true') + "}",
    '{"input": ["feat"], ' + _JSON_BODY + "}",
]


@pytest.mark.parametrize("text", MALFORMED_JSON)
def test_malformed_json_raises_genome_error(text):
    with pytest.raises(GenomeError):
        Genome.from_json(text)


# ------------------------------------------------------------------------------------------ canonical key
def test_key_ignores_where_the_no_slots_are():
    keys = {Genome.parse(f"feat[{slots}]|l2|no|T1|x1").key
            for slots in ("pow2,channel,no", "pow2,no,channel", "no,pow2,channel")}
    assert len(keys) == 1
    assert Genome.parse("feat[channel,pow2,no]|l2|no|T1|x1").key not in keys


def test_key_collapses_repeated_idempotent_op():
    assert Genome.parse("feat[relu,relu,no]|l2|no|T1|x1").key == Genome.parse("feat[relu,no,no]|l2|no|T1|x1").key
    assert Genome.parse("feat[relu,no,relu]|l2|no|T1|x1").key == Genome.parse("feat[no,no,relu]|l2|no|T1|x1").key
    assert Genome.parse("feat[pow2,pow2,no]|l2|no|T1|x1").key != Genome.parse("feat[pow2,no,no]|l2|no|T1|x1").key


def test_key_drops_batch_on_logit_but_not_on_feat():
    logit_no = Genome.parse("logit[no,no,no]|kl|no|T4|x1")
    assert Genome.parse("logit[batch,no,no]|kl|no|T4|x1").key == logit_no.key
    assert Genome.parse("logit[no,no,batch]|kl|no|T4|x1").key == logit_no.key
    assert Genome.parse("feat[batch,no,no]|kl|no|T4|x1").key != Genome.parse("feat[no,no,no]|kl|no|T4|x1").key
    assert Genome.parse("feat[batch,batch,no]|l2|no|T1|x1").key == Genome.parse("feat[batch,no,no]|l2|no|T1|x1").key


def test_key_distinguishes_every_other_gene():
    base = Genome.parse("feat[pow2,channel,norm_HW]|l2|no|T1|x100")
    variants = [base.with_gene("distance", name) for name in ("l1", "kl", "cosine")]
    variants += [base.with_gene("weight", "focal"), base.with_gene("distance", "smooth_l1").with_gene("temperature", 4),
                 base.with_gene("magnitude", 0.1), base.with_gene("input", "emb")]
    keys = {base.key, *(v.key for v in variants)}
    assert len(keys) == len(variants) + 1


def test_genomes_with_equal_key_are_still_distinct_genomes():
    first = Genome.parse("feat[pow2,channel,no]|l2|no|T1|x1")
    second = Genome.parse("feat[no,pow2,channel]|l2|no|T1|x1")
    assert first.key == second.key and first != second


# --------------------------------------------------------------------------------------------- variation
@pytest.mark.parametrize("space", [FULL_SPACE, SHRUNK_SPACE], ids=["full", "shrunk"])
def test_mutation_changes_exactly_k_genes_and_inherits_the_rest(space):
    rng = random.Random(11)
    for _ in range(300):
        parent = Genome.random(rng, space)
        for k in range(1, len(GENES) + 1):
            child = parent.mutate(rng, space, num_genes=k)
            changed = [gene for gene in GENES if child.gene(gene) != parent.gene(gene)]
            assert len(changed) == k, (parent, child, k)
            for gene in changed:
                assert child.gene(gene) in space.choices(gene)


def test_default_mutation_changes_one_or_two_genes():
    rng = random.Random(12)
    counts = set()
    for _ in range(300):
        parent = Genome.random(rng)
        child = parent.mutate(rng)
        counts.add(sum(child.gene(gene) != parent.gene(gene) for gene in GENES))
    assert counts == {1, 2}


def test_mutation_of_a_parent_outside_a_shrunk_space_moves_it_in():
    parent = Genome.parse("feat[pow4,pow4,pow4]|l2|no|T1|x1")
    rng = random.Random(13)
    for _ in range(100):
        child = parent.mutate(rng, SHRUNK_SPACE, num_genes=1)
        changed = [gene for gene in GENES if child.gene(gene) != parent.gene(gene)]
        assert len(changed) == 1


def test_crossover_takes_every_gene_from_one_of_the_parents():
    rng = random.Random(14)
    mixed = 0
    for _ in range(500):
        mother, father = Genome.random(rng), Genome.random(rng)
        child = mother.crossover(father, rng)
        for gene in GENES:
            assert child.gene(gene) in (mother.gene(gene), father.gene(gene))
        from_mother = sum(child.gene(g) == mother.gene(g) != father.gene(g) for g in GENES)
        from_father = sum(child.gene(g) == father.gene(g) != mother.gene(g) for g in GENES)
        mixed += from_mother > 0 and from_father > 0
    assert mixed > 400


def test_search_space_size_is_the_product_of_choice_counts():
    assert FULL_SPACE.size() == 3 * 41**3 * 8 * 5 * 4 * 8
    assert SHRUNK_SPACE.size() == 3 * (5 * 8 * 15) * 8 * 5 * 4 * 8


def test_search_space_without_removes_values_but_never_empties_a_gene():
    smaller = FULL_SPACE.without("distance", ["kl", "hard"])
    assert set(smaller.distances) == set(FULL_SPACE.distances) - {"kl", "hard"}
    assert smaller.size() == FULL_SPACE.size() // 8 * 6
    emptied = FULL_SPACE.without("input", ["feat", "emb", "logit"])
    assert len(emptied.inputs) == 1
    slot = FULL_SPACE.without("transform2", ["exp"])
    assert "exp" not in slot.slots[1] and "exp" in slot.slots[0]


# ------------------------------------------------------------------------------------ validation, connector
def test_needs_connector_for_fitnet_with_different_widths_only():
    student, teacher = AT_SHAPES
    assert PRESETS["fitnet"].needs_connector(student, teacher)
    assert not PRESETS["fitnet"].needs_connector(student, student)
    assert PRESETS["ickd"].needs_connector(student, teacher)


@pytest.mark.parametrize("name", ["at", "sp", "kd"])
def test_no_connector_for_at_sp_and_kd(name):
    assert not PRESETS[name].needs_connector(*AT_SHAPES)


def test_emb_connector_depends_on_width():
    student, teacher = AT_SHAPES
    assert Genome.parse("emb[no,no,no]|l2|no|T1|x1").needs_connector(student, teacher)
    assert not Genome.parse("emb[mm,no,no]|l2|no|T1|x1").needs_connector(student, teacher)


def test_validation_rejects_positional_op_on_vectors_with_slot_and_op_named():
    with pytest.raises(GenomeError, match=r"transform2 .*'satt'.*2-D"):
        Genome.parse("logit[no,satt,no]|l2|no|T1|x1").validate(*AT_SHAPES)


def test_validation_rejects_different_class_counts_for_logits():
    student, teacher = dict(AT_SHAPES[0]), dict(AT_SHAPES[1])
    teacher["logit"] = (100,)
    with pytest.raises(GenomeError, match="classes"):
        PRESETS["kd"].validate(student, teacher)
    PRESETS["fitnet"].validate(student, teacher)


def test_validation_rejects_distribution_distance_on_single_entry_axis():
    student = {"feat": (8, 1, 1), "emb": (8,), "logit": (10,)}
    with pytest.raises(GenomeError, match="at least 2"):
        Genome.parse("feat[no,no,no]|kl|no|T1|x1").validate(student, student)
    Genome.parse("feat[no,no,no]|l2|no|T1|x1").validate(student, student)


def test_output_shapes_follow_the_aligned_shape_through_every_slot():
    shapes = PRESETS["at"].output_shapes({"feat": (16, 8, 8)}, {"feat": (64, 4, 4)})
    assert shapes == ((8, 64, 4, 4), (8, 64, 4, 4), (8, 1, 4, 4), (8, 1, 4, 4))


def test_validation_reports_missing_input_shape():
    with pytest.raises(GenomeError, match="feat"):
        PRESETS["at"].validate({"logit": (10,)}, {"logit": (10,)})


def test_is_valid_mirrors_validate():
    assert PRESETS["at"].is_valid(*AT_SHAPES)
    assert not Genome.parse("logit[bmm,no,no]|l2|no|T1|x1").is_valid(*AT_SHAPES)


def test_temperature_drops_out_of_the_key_of_l2_genomes_whose_loss_it_cannot_change():
    import torch

    from kdzero.features import Features
    from kdzero.loss import UnifiedLoss

    cold, hot = (Genome.parse(f"feat[mm,norm_C,no]|l2|no|T{t}|x100") for t in (1, 8))
    assert cold.key == hot.key
    assert Genome.parse("logit[no,no,no]|kl|no|T1|x1").key != Genome.parse("logit[no,no,no]|kl|no|T4|x1").key
    torch.manual_seed(0)
    student = Features(torch.randn(6, 4, 3, 3), torch.randn(6, 4), torch.randn(6, 5))
    teacher = Features(torch.randn(6, 4, 3, 3), torch.randn(6, 4), torch.randn(6, 5))
    values = [UnifiedLoss(g)(student=student, teacher=teacher) for g in (cold, hot)]
    assert torch.allclose(values[0], values[1], rtol=1e-5)
