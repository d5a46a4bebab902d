"""experiments/bench_fidelity.py's statistics: the Spearman it reports and the exact p-value beside it."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
bench_fidelity = pytest.importorskip("bench_fidelity")


def test_spearman_is_of_minus_score_so_a_lower_score_ranking_higher_accuracy_is_plus_one():
    # scores 1 < 2 < 3 < 4 (1 best) with accuracies 40 > 30 > 20 > 10: a perfect pick order
    rho, p = bench_fidelity.spearman_test([(1.0, 40.0), (2.0, 30.0), (3.0, 20.0), (4.0, 10.0)])
    assert rho == pytest.approx(1.0)
    # exact two-sided permutation test over the 4! = 24 pairings: only the identity and the reversal reach |rho| = 1
    assert p == pytest.approx(2 / 24)


def test_four_points_at_rho_point_eight_are_not_evidence():
    # one adjacent swap: rho = 1 - 6 * 2 / (4 * 15) = 0.8; of the 24 pairings, 4 reach rho >= 0.8 (one at 1,
    # three at 0.8) and 4 mirror them
    rho, p = bench_fidelity.spearman_test([(1.0, 40.0), (2.0, 30.0), (3.0, 10.0), (4.0, 20.0)])
    assert rho == pytest.approx(0.8)
    assert p == pytest.approx(8 / 24)


def test_under_three_points_there_is_no_correlation():
    assert all(math.isnan(v) for v in bench_fidelity.spearman_test([(1.0, 2.0), (2.0, 1.0)]))
