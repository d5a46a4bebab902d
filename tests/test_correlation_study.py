"""The statistics of experiments/correlation.py's reliability studies, against hand computations."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from kdzero.scoring import ScoreWeights

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "correlation.py"
# Only CE varies in these rows: the other predictors are constant, and scipy warns that their coefficient is NaN.
pytestmark = pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("correlation_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(genome: str, last_acc: float, val_ce: float, s_gap: float = 0.5, cka_gap: float = 0.5,
        val_acc: float = 0.5) -> dict:
    return {"name": "random", "genome": genome, "val_ce": val_ce, "val_acc": val_acc, "s_gap": s_gap,
            "cka_gap": cka_gap, "score": val_ce + 2 * s_gap + cka_gap, "last_acc": last_acc}


def test_noise_ceiling_is_one_without_noise_and_falls_with_it(study):
    acc = [60.0, 62.0, 65.0, 67.0, 70.0, 71.0, 74.0, 78.0]
    assert study.noise_ceiling(acc, 0.0, draws=10) == pytest.approx(1.0)
    ceilings = [study.noise_ceiling(acc, sigma, draws=300) for sigma in (0.5, 2.0, 8.0)]
    assert ceilings[0] > ceilings[1] > ceilings[2]
    assert ceilings[2] < 0.8


def test_retrain_sigma_is_the_rms_difference_over_root_two(study):
    rows = [row("a", 70.0, 1.0), row("b", 72.0, 1.1), row("c", 74.0, 1.2)]
    retrained = [{"name": "random", "genome": "a", "train_seed": 1, "best_acc": 71.0, "last_acc": 71.0},
                 {"name": "random", "genome": "b", "train_seed": 1, "best_acc": 70.0, "last_acc": 70.0}]
    text = "\n".join(study.retrain_lines(rows, retrained))
    sigma = math.sqrt((1.0 ** 2 + 2.0 ** 2) / (2 * 2))  # deltas +1 and -2
    assert f"sigma = sqrt(mean(delta^2) / 2) = {sigma:.2f} points" in text
    assert "| `a` | 70.00 | 71.00 | +1.00 |" in text and "| `b` | 72.00 | 70.00 | -2.00 |" in text
    assert "Spearman(-score" not in text  # two pairs are too few to rank


def test_retrain_compares_the_score_with_one_and_with_both_trainings(study):
    # Scores rank a > b > c (lower is better); the first training ranks b > a > c, the mean of both a > b > c.
    rows = [row("a", 71.0, 1.0), row("b", 72.0, 1.1), row("c", 60.0, 1.2)]
    retrained = [{"name": "random", "genome": g, "train_seed": 1, "best_acc": acc, "last_acc": acc}
                 for g, acc in (("a", 75.0), ("b", 72.0), ("c", 60.0))]
    text = "\n".join(study.retrain_lines(rows, retrained))
    assert "is 0.500 against the first training and 1.000 against the mean of both" in text


def test_seed_study_reports_agreement_and_the_averaged_metric(study):
    # Final accuracy falls with CE. Seed 0 ranks a and b the wrong way round, seed 1 ranks b and c the wrong way
    # round; averaged, CE ranks all four right.
    rows = [row("a", 80.0, 1.0), row("b", 75.0, 0.9), row("c", 70.0, 1.3), row("d", 65.0, 1.6)]
    seed1 = {"a": 0.8, "b": 1.25, "c": 1.2, "d": 1.7}
    seeds = {1: {r["genome"]: {**r, "val_ce": seed1[r["genome"]]} for r in rows}}
    lines = study.seed_lines(rows, seeds, 0, ScoreWeights())
    ce = next(line for line in lines if line.startswith("| -CE |"))
    cells = [float(c) for c in ce.strip("|").split("|")[1:]]
    # Spearman of -CE with final: seed 0 ranks (b, a, c, d) -> 0.8; seed 1 (a, c, b, d) -> 0.8; between seeds 0.4;
    # averaged CE (0.9, 1.075, 1.25, 1.65) ranks a, b, c, d -> 1.0
    assert cells == pytest.approx([0.8, 0.8, 0.4, 1.0])
    assert "n=4" in lines[0]


def test_seed_study_needs_a_second_seed(study):
    rows = [row("a", 80.0, 1.0), row("b", 75.0, 0.9), row("c", 70.0, 1.3)]
    assert study.seed_lines(rows, {}, 0, ScoreWeights()) == []
