"""DisWOT: metrics against the published formulas, architecture texts, evolution, budget, and the CLI."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdzero.cli import main
from kdzero.diswot import (
    Budget,
    Cost,
    SearchSpace,
    StudentArch,
    aging_evolution,
    arch_cost,
    count_flops,
    create_student,
    diswot_score,
    model_cost,
    parse_count,
    parse_limit,
    relation_similarity,
    semantic_similarity,
)
from kdzero.errors import ConfigError, KdzeroError
from kdzero.models import create_model


def _np_gram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The published form, written out: row-L2-normalised Gram matrices, squared Frobenius distance / n^2."""
    def gram(x: np.ndarray) -> np.ndarray:
        x = x.reshape(x.shape[0], -1).astype(np.float64)
        g = x @ x.T
        return g / np.linalg.norm(g, axis=1, keepdims=True)

    n = a.shape[0]
    return float(((gram(a) - gram(b)) ** 2).sum() / n**2)


def test_relation_similarity_matches_the_sp_gram_formula_across_widths_and_sizes():
    torch.manual_seed(0)
    feat_s, feat_t = torch.randn(7, 5, 3, 3), torch.randn(7, 11, 2, 2)
    expected = -_np_gram_distance(feat_s.numpy(), feat_t.numpy())
    assert float(relation_similarity(feat_s, feat_t)) == pytest.approx(expected, rel=1e-5)
    assert float(relation_similarity(feat_t, feat_t)) == pytest.approx(0.0, abs=1e-7)


def test_diswot_score_matches_a_real_backward_pass_and_numpy_grams():
    torch.manual_seed(1)
    teacher = create_model("wrn_16_1", num_classes=4, in_chans=1).eval()
    student = create_student("resnet[1,2,1]x[8,16,24]", num_classes=4, in_chans=1)
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    running_before = student.bn1.running_mean.clone()
    score = diswot_score(teacher, student, x, y)
    assert torch.equal(student.bn1.running_mean, running_before)  # scoring leaves running statistics alone

    grads, feats = [], []
    for model, training in ((teacher, False), (student, True)):  # student: batch statistics; teacher: its own
        model.train(training)
        model.zero_grad()
        out = model(x)
        F.cross_entropy(out.logit, y).backward()
        grads.append(model.get_classifier().weight.grad.numpy())
        feats.append(out.feat.detach().numpy())
    assert grads[0].shape[1] != grads[1].shape[1]  # widths differ: 64 vs 24
    relation = -_np_gram_distance(feats[1], feats[0])
    semantic = -_np_gram_distance(grads[1], grads[0])
    assert score.relation == pytest.approx(relation, rel=1e-4)
    assert score.semantic == pytest.approx(semantic, rel=1e-4)
    assert score.score == pytest.approx(relation + semantic, rel=1e-4)


@pytest.mark.parametrize("n", [2, 3, 17])
def test_any_batch_size_works(n):
    torch.manual_seed(n)
    teacher, student = create_model("resnet8", num_classes=10, in_chans=1), create_student("wrn_d10_w1", 10, 1)
    score = diswot_score(teacher, student, torch.randn(n, 1, 8, 8), torch.randint(0, 10, (n,)))
    assert all(np.isfinite(score)) and score.score <= 0


def test_a_single_image_is_refused():
    with pytest.raises(ConfigError, match="at least 2"):
        relation_similarity(torch.randn(1, 4, 2, 2), torch.randn(1, 8, 2, 2))


def test_class_mismatch_is_a_clean_error():
    with pytest.raises(KdzeroError, match="teacher has 10 classes, student 100: semantic similarity needs the same"):
        semantic_similarity(torch.randn(100, 16), torch.randn(10, 64))
    teacher, student = create_model("resnet8", num_classes=10, in_chans=1), create_student("wrn_d10_w1", 100, 1)
    with pytest.raises(KdzeroError, match="teacher has 10 classes, student 100"):
        diswot_score(teacher, student, torch.randn(4, 1, 8, 8), torch.arange(4))


@pytest.mark.parametrize("text, canonical", [
    ("resnet[3,3,3]x[16,32,64]", "resnet[3,3,3]x[16,32,64]"),
    (" ResNet[1, 9, 2] x [8,16,64] ", "resnet[1,9,2]x[8,16,64]"),
    ("resnet[2]x[32]", "resnet[2]x[32]"),
    ("wrn_d16_w2", "wrn_d16_w2"),
    ("WRN_d40_w1", "wrn_d40_w1"),
])
def test_architecture_text_round_trips(text, canonical):
    arch = StudentArch.parse(text)
    assert str(arch) == canonical
    assert StudentArch.parse(str(arch)) == arch


@pytest.mark.parametrize("text, needle", [
    ("resnet[3,x,3]x[16,32,64]", "'x'"),
    ("resnet[3,3]x[16,32,64]", "2 stage depths but 3 widths"),
    ("resnet[3,0,3]x[16,32,64]", "'0'"),
    ("resnt[3,3,3]x[16,32,64]", "did you mean resnet"),
    ("wrn_d15_w2", "WRN depth 15"),
    ("wrn_d16_wide", "'ide'"),
    ("resnet[3,3,3]", "malformed resnet"),
    ("", "unknown family ''"),
])
def test_bad_architecture_text_names_the_token_on_one_line(text, needle):
    with pytest.raises(ConfigError) as err:
        StudentArch.parse(text)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_student_built_as_resnet20_is_resnet20():
    student = create_student("resnet[3,3,3]x[16,32,64]", num_classes=100)
    reference = create_model("resnet20", num_classes=100)
    assert model_cost(student, 3, (32, 32)) == model_cost(reference, 3, (32, 32))
    out = student(torch.randn(2, 3, 32, 32))
    assert out.feat.shape == (2, 64, 8, 8) and out.emb.shape == (2, 64) and out.logit.shape == (2, 100)


def test_closed_form_cost_equals_the_built_model():
    space, rng = SearchSpace(), random.Random(3)
    for _ in range(15):
        arch = space.random(rng)
        for classes, chans, size in ((10, 1, (8, 8)), (100, 3, (32, 32)), (7, 3, (9, 7))):
            assert arch_cost(arch, classes, chans, size) == model_cost(arch.build(classes, chans), chans, size)


def test_flops_count_multiply_accumulates_of_convs_and_linears():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 8 * 8, 5))
    assert count_flops(model, 3, (8, 8)) == 8 * 8 * 8 * 3 * 9 + 8 * 8 * 8 * 5
    assert count_flops(create_model("resnet20", num_classes=10), 3, (32, 32)) == 40_813_184  # the "41M" of papers


def test_counts_parse_and_budget_filters():
    assert parse_count("0.3M") == 300_000 and parse_count("40M") == 40_000_000 and parse_count("250k") == 250_000
    with pytest.raises(ConfigError, match=r"like 0\.3M, 40M"):
        parse_count("lots")
    assert Budget(params=1000).fits(Cost(1000, 10**12)) and not Budget(params=1000).fits(Cost(1001, 1))
    assert Budget(flops=50).fits(Cost(10**9, 50)) and not Budget(params=10, flops=50).fits(Cost(5, 51))


def test_a_budget_is_a_count_or_a_fraction_of_the_teacher():
    assert parse_limit("0.5x", 272_474) == 136_237 and parse_limit("0.25X", 41_000_000) == 10_250_000
    assert parse_limit("40k", 10**9) == 40_000  # absolute counts ignore the teacher
    for bad in ("0x", "-1x", "x", "2y", "half"):
        with pytest.raises(ConfigError, match=r"fraction of the teacher like 0\.5x, got"):
            parse_limit(bad, 1000)
    budget = Budget(params=136_237, flops=1_266_000)
    assert budget.relative_to(Cost(272_474, 2_532_000)) == \
        "params <= 136.2k (0.50x teacher), FLOPs <= 1.27M (0.50x teacher)"


def test_mutation_copies_the_parent_and_changes_exactly_one_gene():
    space, rng = SearchSpace(), random.Random(0)
    for _ in range(200):
        parent = space.random(rng)
        child = space.mutate(parent, rng)
        assert child.family == parent.family and space.contains(child)
        assert sum(a != b for a, b in zip(parent.genes, child.genes)) == 1


def _fake_score(arch: StudentArch) -> float:
    """Deterministic and unique enough: more blocks and width is better, with a tie-breaker per gene position."""
    return float(sum(g * (1 + 1e-3 * i) for i, g in enumerate(arch.genes)))


def test_aging_evolution_takes_the_best_of_the_sample_and_removes_the_oldest():
    calls: list[StudentArch] = []

    def score(arch: StudentArch) -> float:
        calls.append(arch)
        return _fake_score(arch)

    population = 6
    result = aging_evolution(SearchSpace(), score, population=population, cycles=40, sample=population,
                             rng=random.Random(1))
    history = result.history
    assert len(history) == population + 40
    for j in range(40):
        alive = history[j:population + j]  # the population just before cycle j's birth
        assert len({m.arch for m in alive}) == population  # never two copies of one architecture
        child = history[population + j]
        if child.origin == "mutation":  # sample = population: the parent must be the best alive
            assert child.parent == str(max(alive, key=lambda m: m.score).arch)
    assert [m.arch for m in result.population] == [m.arch for m in history[-population:]]  # oldest removed
    assert len(calls) == len(set(calls)) == result.scored  # each architecture scored once
    assert result.best(1)[0].score == max(m.score for m in history)


def test_aging_evolution_improves_on_its_random_start_and_keeps_the_budget():
    budget = Budget(params=60_000)

    def fits(arch: StudentArch) -> bool:
        return budget.fits(arch_cost(arch, 10, 1, (8, 8)))

    result = aging_evolution(SearchSpace(), _fake_score, population=8, cycles=60, sample=3, fits=fits,
                             rng=random.Random(2))
    assert all(fits(m.arch) for m in result.history)
    assert max(m.score for m in result.population) > max(m.score for m in result.history[:8])


def test_cli_searches_digits_and_writes_a_study_the_leaderboard_reads(tmp_path, monkeypatch, capsys):
    from kdzero.leaderboard import load_leaderboard

    monkeypatch.chdir(tmp_path)
    argv = ["student-search", "--random-teacher", "--population", "4", "--cycles", "4", "--budget-params", "40k",
            "--name", "tiny", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "kdzero replay --method kd --teacher resnet20 --student 'resnet[" in printed
    board = load_leaderboard(tmp_path / "runs" / "tiny")
    assert 4 <= len(board) <= 8 and board["student"].is_unique
    assert list(board["rank"]) == list(range(1, len(board) + 1))
    assert list(board["diswot"]) == sorted(board["diswot"], reverse=True)  # higher is better, best first
    assert np.allclose(board["diswot"], board["relation"] + board["semantic"])
    for row in board.itertuples():
        cost = arch_cost(StudentArch.parse(row.student), 10, 1, (8, 8))
        assert cost.params == row.params <= 40_000 and cost.flops == row.flops

    assert main(argv) == 0  # the same command again resumes: nothing is scored or stored twice
    assert len(load_leaderboard(tmp_path / "runs" / "tiny")) == len(board)
    assert main([*argv[:-3], "--budget-params", "30k", "--name", "tiny", "--no-progress"]) == 2
    assert "other settings (budget)" in capsys.readouterr().err


def test_default_budget_keeps_every_student_smaller_and_cheaper_than_its_teacher(tmp_path, monkeypatch, capsys):
    from kdzero.leaderboard import load_leaderboard

    monkeypatch.chdir(tmp_path)
    assert main(["student-search", "--random-teacher", "--population", "6", "--cycles", "10", "--name", "d",
                 "--no-progress"]) == 0
    header = capsys.readouterr().err
    teacher = model_cost(create_model("resnet20", num_classes=10, in_chans=1), 1, (8, 8))
    assert "(0.50x teacher)" in header and f"{teacher.params / 1000:.1f}k params" in header
    board = load_leaderboard(tmp_path / "runs" / "d")
    assert len(board) >= 6
    assert (board["params"] <= teacher.params // 2).all() and (board["flops"] <= teacher.flops // 2).all()


def test_student_search_leaderboard_is_headed_student_plots_and_never_wraps_a_name(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["student-search", "--random-teacher", "--population", "5", "--cycles", "3", "--name", "s",
                 "--budget-params", "0.9x", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["leaderboard", "runs/s", "--plot", "s.png"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("rank"))
    assert header.split()[:3] == ["rank", "student", "DisWOT"] and "params" in header and "FLOPs" in header
    assert "genome" not in out
    students = [line.split()[1] for line in lines if line.strip()[:1].isdigit()]
    assert len(students) >= 5
    for text in students:  # whole names, one line each: every one parses back to an architecture
        StudentArch.parse(text)
    assert max(len(line) for line in lines) <= 80
    assert (tmp_path / "s.png").stat().st_size > 10_000
    assert main(["leaderboard", "runs/s", "--sort", "params", "--format", "csv"]) == 0
    import io

    import pandas as pd

    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(table.columns[:8]) == ["rank", "trial", "student", "diswot", "relation", "semantic", "params", "flops"]
    assert list(table["params"]) == sorted(table["params"])
    assert main(["replay", "runs/s", "--rank", "1"]) == 2
    assert "is a student search" in capsys.readouterr().err


def test_student_search_ends_with_a_verdict_of_students_distilled_over_seeds(tiny_run, tmp_path, monkeypatch,
                                                                             capsys):
    """The top students, the hand pick (largest standard ResNet within the budget) and the largest student, each
    distilled with KD over two seeds; the stored results are the table's, and a rerun trains nothing again."""
    from kdzero.leaderboard import load_leaderboard as kdzero_leaderboard
    from kdzero.leaderboard import open_study
    from kdzero.search import claims
    from kdzero.student_confirm import PREFIX, stored_verdict

    monkeypatch.chdir(tmp_path)
    ckpt = tiny_run["folder"] / "teacher.pt"  # a resnet8 teacher: at 1x its cost, resnet8 is the hand pick
    argv = ["student-search", "--teacher", "resnet8", "--teacher-ckpt", str(ckpt), "--budget-params", "1x",
            "--budget-flops", "1x", "--population", "3", "--cycles", "1", "--name", "v", "--no-progress",
            "--confirm", "1", "--confirm-epochs", "1", "--confirm-seeds", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    study = open_study(tmp_path / "runs" / "v")
    table = stored_verdict(study)
    roles = dict(zip(table.student, table.role))
    assert roles["resnet8"].endswith("hand pick") and any("DisWOT #1" in r for r in roles.values())
    assert any("largest" in r for r in roles.values()) and (table.seeds == 2).all()
    done = claims.entries(study, PREFIX)
    assert len(done) == 2 * len(table)
    for row in table.itertuples():
        accs = [e["last_acc"] for e in done.values() if e["student"] == row.student]
        assert row.last_mean == pytest.approx(sum(accs) / 2)
    assert "verdict: students for" in out
    assert "over the hand pick resnet8 (" in out or "DisWOT's pick is the hand pick, resnet8" in out
    board = kdzero_leaderboard(tmp_path / "runs" / "v")  # the leaderboard shows the confirmed top-1
    top = board.iloc[0]
    assert top.top1 == pytest.approx(table.set_index("student").loc[top.student, "last_mean"])
    assert main(argv) == 0  # the same command again: everything stored, nothing trained twice
    assert claims.entries(open_study(tmp_path / "runs" / "v"), PREFIX) == done
