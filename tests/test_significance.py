"""McNemar's exact test, the paired bootstrap, the interval over seeds and Holm's adjustment, against values
worked out by hand."""

import itertools
import math

import pytest

from medminds_hpc import significance


@pytest.mark.parametrize("b, c, expected", [
    (8, 2, 2 * (1 + 10 + 45) / 2 ** 10),  # 0.109375
    (2, 8, 2 * (1 + 10 + 45) / 2 ** 10),  # symmetric
    (5, 0, 2 / 2 ** 5),                    # 0.0625: five of five discordant questions go one way
    (10, 2, 2 * (1 + 12 + 66) / 2 ** 12),  # 0.0385742...
    (3, 3, 1.0), (0, 0, 1.0), (1, 0, 1.0),
])
def test_mcnemar_exact_by_hand(b, c, expected):
    assert significance.mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_exact_with_thousands_of_discordant_questions():
    """Big integers, no overflow: 1,100 vs 900 is far out (z ~ 4.5); 1,000 each is p = 1."""
    assert 1e-6 < significance.mcnemar_exact(1100, 900) < 1e-4
    assert significance.mcnemar_exact(1000, 1000) == 1.0
    with pytest.raises(ValueError, match=">= 0"):
        significance.mcnemar_exact(-1, 3)


def exact_bootstrap_quantile(differences: list[int], q: float) -> float:
    """The bootstrap distribution enumerated: every resample of the questions, weighted by its probability."""
    n = len(differences)
    outcomes = sorted((sum(resample) / n, 1 / n ** n) for resample in itertools.product(differences, repeat=n))
    total = 0.0
    for value, weight in outcomes:
        total += weight
        if total >= q - 1e-12:
            return value
    return outcomes[-1][0]


def test_paired_bootstrap_by_hand():
    """Four questions, A alone right on two: the mean difference resampled is X/4 with X ~ Binomial(4, 1/2); 0 and 1
    each have probability 1/16 > 2.5%, so the 95% interval is [0, 1] exactly."""
    assert significance.paired_bootstrap([1, 1, 0, 0], seed=0) == (0.0, 1.0)


def test_paired_bootstrap_matches_the_enumerated_distribution():
    diffs = [1, 1, 1, -1, 0, 0]
    low, high = significance.paired_bootstrap(diffs, seed=3, resamples=20_000)
    assert low == pytest.approx(exact_bootstrap_quantile(diffs, 0.025), abs=1e-9)
    assert high == pytest.approx(exact_bootstrap_quantile(diffs, 0.975), abs=1e-9)


def test_paired_bootstrap_is_seeded():
    diffs = [1] * 30 + [-1] * 20 + [0] * 150
    assert significance.paired_bootstrap(diffs, seed=7) == significance.paired_bootstrap(diffs, seed=7)
    low, high = significance.paired_bootstrap(diffs, seed=7)
    assert low < 0.05 < high and high - low == pytest.approx(2 * 1.96 * math.sqrt((50 / 200 - 0.05 ** 2) / 200), rel=0.1)
    assert significance.stable_seed("a", "b") == significance.stable_seed("a", "b") != significance.stable_seed("b", "a")


def test_interval_over_seeds_by_hand():
    mean, sd, interval = significance.seed_interval([0.5, 0.6, 0.7])
    half = 4.3027 * 0.1 / math.sqrt(3)
    assert mean == pytest.approx(0.6) and sd == pytest.approx(0.1)
    assert interval == pytest.approx((0.6 - half, 0.6 + half))
    assert significance.seed_interval([0.4]) == (0.4, None, None)


def test_t_quantile_continues_the_table():
    assert significance.t_quantile(1) == 12.7062 and significance.t_quantile(30) == 2.0423
    assert significance.t_quantile(31) == pytest.approx(2.0395, abs=2e-4)
    assert significance.t_quantile(120) == pytest.approx(1.9799, abs=2e-4)
    assert abs(significance.t_quantile(31) - significance.t_quantile(30)) < 0.004


def test_holm_by_hand():
    # sorted 0.01, 0.02, 0.04 -> 3 x 0.01 = 0.03, 2 x 0.02 = 0.04, max(0.04, 1 x 0.04) = 0.04
    assert significance.holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert significance.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert significance.holm([]) == []
