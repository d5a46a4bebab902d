"""The distance formerly called ``correlation`` is ``batch_congruence``: what it computes (by hand), and the old
name still loading everywhere a genome text or a study's parameters can carry it."""
from __future__ import annotations

import math

import torch

from kdzero import Features, Genome, UnifiedLoss
from kdzero.export import export_source
from kdzero.genome import FULL_SPACE, SHRUNK_SPACE
from kdzero.ops import DISTANCES
from kdzero.search.space import genome_from_params, genome_to_params


def test_batch_congruence_on_hand_computed_vectors() -> None:
    # Student samples (1, 0), (0, 1): cosine matrix I. Teacher (1, 0), (1, 0): all ones. Each sample's row differs
    # by (0, 1) or (1, 0): mean of squares 0.5 per sample.
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    torch.testing.assert_close(DISTANCES["batch_congruence"](s, t), torch.tensor([0.5, 0.5]))


def test_old_name_is_the_same_op_but_no_search_samples_it() -> None:
    assert "correlation" in DISTANCES and DISTANCES["correlation"] is DISTANCES["batch_congruence"]
    assert "correlation" not in DISTANCES.names() and len(DISTANCES) == 8
    assert DISTANCES.canonical("correlation") == "batch_congruence"
    assert "correlation" not in FULL_SPACE.distances and "batch_congruence" in SHRUNK_SPACE.distances


def test_genome_text_and_study_params_with_the_old_name_still_load() -> None:
    old = Genome.parse("emb[no,no,no]|correlation|no|T1|x1")
    assert Genome.parse(str(old)) == old
    assert genome_from_params(genome_to_params(old)) == old  # a study holding "correlation" resumes
    new = Genome.parse("emb[no,no,no]|batch_congruence|no|T1|x1")
    g = torch.Generator().manual_seed(0)
    student = Features(torch.randn(6, 4, 2, 2, generator=g), torch.randn(6, 8, generator=g), torch.randn(6, 3))
    teacher = Features(torch.randn(6, 4, 2, 2, generator=g), torch.randn(6, 8, generator=g), torch.randn(6, 3))
    values = [UnifiedLoss(genome)(student=student, teacher=teacher) for genome in (old, new)]
    assert math.isclose(values[0].item(), values[1].item(), rel_tol=1e-7) and values[0].item() > 0


def test_exporting_an_old_genome_emits_the_renamed_distance() -> None:
    namespace: dict = {"__name__": "exported_distiller"}
    source = export_source("emb[no,no,no]|correlation|no|T1|x1")
    exec(compile(source, "<exported>", "exec"), namespace)
    assert "def distance_batch_congruence" in source
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    expected = DISTANCES["batch_congruence"](s, t).mean()
    torch.testing.assert_close(namespace["Distiller"](student_width=8, teacher_width=8)(s, t), expected)
