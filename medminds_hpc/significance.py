"""Is one experiment better than another on the same questions? Exact tests and intervals for paired accuracies.

- `mcnemar_exact(b, c)`: McNemar's exact test. Of the questions exactly one of two models gets right, b went to
  the first and c to the second; under "equally good" each is a fair coin, so p = P(|Binomial(b+c, 1/2) - (b+c)/2|
  at least as far out as observed), two-sided. Exact integer arithmetic, no scipy.
- `paired_bootstrap(differences)`: the percentile 95% interval of the mean per-question accuracy difference
  when questions are resampled with replacement. A resampled mean is a sum of n independent draws of one question's
  difference, so its distribution is computed exactly (one FFT) instead of sampled: no seed, no Monte Carlo error,
  the same interval every time (10,000 sampled resamples cost ~100x more and still wobble in the last digit).
- `seed_interval(values)`: mean, sd and the t-interval of the mean over seeds (a t table, no scipy).
- `holm(p_values)`: Holm's step-down adjustment, for many pairwise claims at once.

    python -c "from medminds_hpc.significance import mcnemar_exact; print(mcnemar_exact(8, 2))"   # 0.109375
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Sequence

# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom
T_975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788, 2.1604, 2.1448,
         2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484,
         2.0452, 2.0423)
Z_975 = 1.959963984540054


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant questions (1.0 when there are none)."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b} and {c}")
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    term, tail = 1, 0  # C(n, i), summed for i = 0..k
    for i in range(k + 1):
        tail += term
        term = term * (n - i) // (i + 1)
    return float(min(Fraction(1), Fraction(2 * tail, 2 ** n)))


def paired_bootstrap(differences: Sequence[int] | Any) -> tuple[float, float]:
    """Percentile 95% interval of the mean of integer per-question `differences` (a list or numpy array) when the
    questions are resampled
    with replacement: the bootstrap distribution itself (what infinitely many resamples would give), computed from
    the distribution of one question's difference raised to the n-th convolution power (one FFT)."""
    import numpy as np

    values = np.asarray(differences, dtype=np.int64)
    n = len(values)
    if n == 0:
        raise ValueError("no questions to resample")
    low, high = int(values.min()), int(values.max())
    if low == high:
        return float(low), float(low)
    width = high - low  # one draw, shifted to 0..width; the sum of n draws lies in 0..n*width
    one = np.bincount(values - low, minlength=width + 1) / n
    steps = np.arange(width + 1)
    mean, var = float(one @ steps), float(one @ steps ** 2) - float(one @ steps) ** 2
    # the sum's whole range, or a window of +-14 sd around its mean when that is smaller (the mass outside it,
    # < 1e-40, is all that wraps around the circular convolution)
    span = n * width + 1
    window = 1 << math.ceil(math.log2(2 * (14 * math.sqrt(n * var) + width + 1)))
    size, start = (span, 0) if window >= span else (window, math.floor(n * mean - window / 2))
    pmf = np.fft.irfft(np.fft.rfft(one, size) ** n, size)[(start + np.arange(size)) % size].clip(min=0.0)
    cdf = np.cumsum(pmf) / pmf.sum()
    first, last = (int(np.searchsorted(cdf, q - 1e-9)) for q in (0.025, 0.975))
    return (start + first) / n + low, (start + last) / n + low


def t_quantile(df: int) -> float:
    """Student's t 97.5% quantile: the table up to 30 degrees of freedom, then the Cornish-Fisher expansion."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = Z_975
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def seed_interval(values: Sequence[float]) -> tuple[float, float | None, tuple[float, float] | None]:
    """(mean, sample sd, 95% t-interval of the mean) of per-seed values; sd and interval None for one value."""
    k = len(values)
    if k == 0:
        raise ValueError("no values")
    mean = math.fsum(values) / k
    if k == 1:
        return mean, None, None
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (k - 1))
    half = t_quantile(k - 1) * sd / math.sqrt(k)
    return mean, sd, (mean - half, mean + half)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (same order as given): controls the chance of any false claim among them."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: (p_values[i], i))
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
