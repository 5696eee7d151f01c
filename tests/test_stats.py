"""McNemar, ECE / reliability bins and the paired bootstrap against hand computations and direct loops."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import chi2

from compaudit.stats import (
    MCNEMAR_EXACT_BELOW,
    expected_calibration_error,
    mcnemar,
    paired_bootstrap_ci,
    reliability_bins,
)


def paired(b01: int, b10: int, both_right: int = 5, both_wrong: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Correctness arrays of models A and B with the given discordant and concordant counts, shuffled."""
    a = np.array([1] * b01 + [0] * b10 + [1] * both_right + [0] * both_wrong, dtype=bool)
    b = np.array([0] * b01 + [1] * b10 + [1] * both_right + [0] * both_wrong, dtype=bool)
    perm = np.random.default_rng(0).permutation(len(a))
    return a[perm], b[perm]


# ---------------------------------------------------------------- McNemar


def test_mcnemar_small_case_is_the_exact_binomial() -> None:
    a, b = paired(10, 2)
    r = mcnemar(a, b)
    assert (r.b01, r.b10, r.method) == (10, 2, "exact")
    # 2 * P(X <= 2 | n=12, p=1/2) = 2 * (1 + 12 + 66) / 4096
    assert r.p_value == pytest.approx(0.03857421875, abs=1e-12)
    assert r.statistic == 2.0
    swapped = mcnemar(b, a)  # two-sided: symmetric in the models
    assert (swapped.b01, swapped.b10) == (2, 10) and swapped.p_value == pytest.approx(r.p_value)


def test_mcnemar_large_case_is_the_corrected_chi_square() -> None:
    a, b = paired(40, 20, both_right=100, both_wrong=7)
    r = mcnemar(a, b)
    assert (r.b01, r.b10, r.method) == (40, 20, "chi2")
    stat = (abs(40 - 20) - 1) ** 2 / 60  # 361 / 60
    assert r.statistic == pytest.approx(stat)
    assert r.p_value == pytest.approx(chi2.sf(stat, 1))
    assert 0.01 < r.p_value < 0.02  # chi2(1) sf of 6.0167 ~ 0.0142


def test_mcnemar_switches_rule_at_25_discordant_pairs() -> None:
    assert mcnemar(*paired(MCNEMAR_EXACT_BELOW - 1, 0)).method == "exact"
    assert mcnemar(*paired(MCNEMAR_EXACT_BELOW, 0)).method == "chi2"
    balanced = mcnemar(*paired(15, 15))  # chi2 with the correction floored: no evidence at all
    assert balanced.method == "chi2" and balanced.statistic == 0.0 and balanced.p_value == 1.0


def test_mcnemar_without_discordant_pairs_gives_p_one() -> None:
    a = np.array([True, True, False, False])
    r = mcnemar(a, a.copy())
    assert (r.b01, r.b10, r.p_value) == (0, 0, 1.0)
    assert mcnemar(np.array([], dtype=bool), np.array([], dtype=bool)).p_value == 1.0


def test_mcnemar_rejects_mismatched_or_non_boolean_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        mcnemar(np.ones(3, bool), np.ones(4, bool))
    with pytest.raises(ValueError, match="booleans"):
        mcnemar(np.array([0.5, 1.0]), np.array([1, 0]))


# ---------------------------------------------------------------- calibration


def ece_loop(conf: np.ndarray, correct: np.ndarray, bins: int) -> float:
    """Reference: Guo et al. 2017's loop over right-closed bins (lower < conf <= upper)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return total


@pytest.mark.parametrize("bins", [1, 10, 15])
def test_ece_matches_a_direct_loop_on_random_data(bins: int) -> None:
    rng = np.random.default_rng(bins)
    conf = rng.uniform(0.05, 1.0, 2000)
    correct = rng.random(2000) < conf**2  # overconfident
    conf[:10] = np.linspace(0.1, 1.0, 10)  # values on the bin edges
    assert expected_calibration_error(conf, correct, bins) == pytest.approx(ece_loop(conf, correct, bins))
    rows = reliability_bins(conf, correct, bins)
    assert len(rows) == bins and sum(r["count"] for r in rows) == 2000
    assert expected_calibration_error(conf, correct, bins) > 0.05


def test_ece_and_reliability_on_a_hand_case() -> None:
    conf = np.array([0.2, 0.25, 0.6, 0.9, 1.0])
    correct = np.array([0, 1, 1, 1, 0], dtype=bool)
    rows = reliability_bins(conf, correct, bins=5)
    # bins (0, .2] (.2, .4] (.4, .6] (.6, .8] (.8, 1]: 0.2 and 0.6 sit on right edges
    assert [r["count"] for r in rows] == [1, 1, 1, 0, 2]
    assert rows[0] == {"bin_low": 0.0, "bin_high": 0.2, "count": 1, "accuracy": 0.0, "confidence": 0.2}
    assert rows[3]["accuracy"] is None and rows[3]["confidence"] is None
    assert rows[4]["accuracy"] == 0.5 and rows[4]["confidence"] == pytest.approx(0.95)
    # 1/5 (|0 - .2| + |1 - .25| + |1 - .6| + 2 |.5 - .95|)
    expected = (0.2 + 0.75 + 0.4 + 2 * 0.45) / 5
    assert expected_calibration_error(conf, correct, bins=5) == pytest.approx(expected)
    assert expected_calibration_error(np.full(4, 0.75), np.array([1, 1, 1, 0], bool)) == pytest.approx(0.0)


def test_ece_of_nothing_is_nan() -> None:
    assert math.isnan(expected_calibration_error(np.array([]), np.array([], dtype=bool)))


# ---------------------------------------------------------------- bootstrap


def correctness(n: int, acc_a: float, acc_b: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.random(n) < acc_a
    b = a.copy()
    flip = rng.random(n) < 0.1
    b[flip] = rng.random(int(flip.sum())) < acc_b
    return a, b


def test_bootstrap_contains_the_estimate_and_is_deterministic() -> None:
    a, b = correctness(500, 0.9, 0.6, seed=1)
    estimate = b.mean() - a.mean()
    lo, hi = paired_bootstrap_ci(a, b, seed=7)
    assert lo < estimate < hi and lo < 0
    assert paired_bootstrap_ci(a, b, seed=7) == (lo, hi)
    assert paired_bootstrap_ci(a, b, seed=8) != (lo, hi)
    narrow = paired_bootstrap_ci(a, b, seed=7, level=0.5)
    assert lo < narrow[0] < narrow[1] < hi


def test_bootstrap_shrinks_with_more_samples() -> None:
    widths = []
    for n in (200, 5000):
        a, b = correctness(n, 0.9, 0.6, seed=2)
        lo, hi = paired_bootstrap_ci(a, b, seed=0)
        assert lo <= b.mean() - a.mean() <= hi
        widths.append(hi - lo)
    assert widths[1] < 0.4 * widths[0]  # ~ 1/sqrt(25) = 0.2


def test_bootstrap_keeps_pairs_and_accepts_a_statistic() -> None:
    a, b = correctness(300, 0.8, 0.5, seed=3)
    assert paired_bootstrap_ci(a, a, seed=0) == (0.0, 0.0)  # identical pairs: no spread at all
    default = paired_bootstrap_ci(a, b, seed=5, resamples=300)
    custom = paired_bootstrap_ci(
        a, b, seed=5, resamples=300, statistic=lambda x, y: y.mean(axis=1) - x.mean(axis=1)
    )
    assert custom == pytest.approx(default)
    ratio = paired_bootstrap_ci(
        a + 1.0, b + 1.0, seed=5, resamples=300, statistic=lambda x, y: y.mean(axis=1) / x.mean(axis=1)
    )
    assert ratio[0] < (b.mean() + 1) / (a.mean() + 1) < ratio[1]


def test_bootstrap_chunks_do_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    import compaudit.stats as stats

    a, b = correctness(1000, 0.9, 0.5, seed=4)
    whole = paired_bootstrap_ci(a, b, seed=3, resamples=200)
    monkeypatch.setattr(stats, "_BOOTSTRAP_CHUNK", 1000 * 7)  # 7 resamples per chunk
    assert paired_bootstrap_ci(a, b, seed=3, resamples=200) == whole


def test_bootstrap_edge_cases() -> None:
    assert all(math.isnan(v) for v in paired_bootstrap_ci(np.array([]), np.array([])))
    with pytest.raises(ValueError, match="length"):
        paired_bootstrap_ci(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="resamples"):
        paired_bootstrap_ci(np.ones(3), np.ones(3), resamples=0)
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap_ci(np.ones(3), np.ones(3), level=1.0)
