"""McNemar's exact test, the paired bootstrap, the interval over seeds and Holm's adjustment, against values
worked out by hand."""

import math
from fractions import Fraction

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
    """The bootstrap distribution by hand: one resampled question's difference convolved with itself n times, in
    exact fractions; the smallest mean whose cumulative probability reaches q."""
    n = len(differences)
    one = {d: Fraction(differences.count(d), n) for d in set(differences)}
    total = {0: Fraction(1)}
    for _ in range(n):
        step: dict[int, Fraction] = {}
        for s, p in total.items():
            for d, w in one.items():
                step[s + d] = step.get(s + d, Fraction(0)) + p * w
        total = step
    cumulative = Fraction(0)
    for s in sorted(total):
        cumulative += total[s]
        if cumulative >= Fraction(q).limit_denominator(1000):
            return s / n
    raise AssertionError("probabilities do not sum to 1")


def test_paired_bootstrap_by_hand():
    """Four questions, A alone right on two: the mean difference resampled is X/4 with X ~ Binomial(4, 1/2); 0 and 1
    each have probability 1/16 > 2.5%, so the 95% interval is [0, 1] exactly."""
    assert significance.paired_bootstrap([1, 1, 0, 0]) == (0.0, 1.0)
    assert significance.paired_bootstrap([0, 0, 0]) == (0.0, 0.0) and significance.paired_bootstrap([-1]) == (-1.0, -1.0)


@pytest.mark.parametrize("diffs", [[1, 1, 1, -1, 0, 0], [2, -1, 0, 1, 0, -2, 0], [1, 0, 0, 0, 0, 0, 0, -1],
                                   [1] * 9 + [-1] * 4 + [0] * 27])
def test_paired_bootstrap_equals_the_distribution_by_hand(diffs):
    assert significance.paired_bootstrap(diffs) == pytest.approx(
        (exact_bootstrap_quantile(diffs, 0.025), exact_bootstrap_quantile(diffs, 0.975)), abs=1e-12)


def test_paired_bootstrap_matches_resampling_at_scale():
    """Thousands of questions (the window around the mean, not the whole range) against 2,000 real resamples."""
    import numpy as np

    rng = np.random.default_rng(0)
    for diffs in ([1] * 300 + [-1] * 200 + [0] * 3683, rng.integers(-5, 6, 4183).tolist()):
        low, high = significance.paired_bootstrap(diffs)
        means = rng.choice(np.asarray(diffs), size=(2000, len(diffs))).mean(axis=1)
        mc_low, mc_high = np.quantile(means, [0.025, 0.975])
        sd = means.std()
        assert abs(low - mc_low) < 0.2 * sd and abs(high - mc_high) < 0.2 * sd, (low, mc_low, high, mc_high, sd)
        # and the normal approximation, which is close at this size
        assert low == pytest.approx(np.mean(diffs) - 1.96 * np.std(diffs) / len(diffs) ** 0.5, abs=0.1 * sd)


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
