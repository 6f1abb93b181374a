"""Small-sample statistics for comparisons over seeds, without scipy (a dev-only dependency).

    mean, low, high = t_interval([0.41, 0.47, 0.44])          # 95% Student-t interval
    welch_t_test(a, b)  -> TestResult(statistic, df, p_value)  # unequal variances, two-sided
    paired_t_test(a, b) -> TestResult                          # a[i], b[i] share seed i
    permutation_test(a, b) -> TestResult                       # exact (or sampled) on mean difference

The Student-t distribution is computed from the regularised incomplete beta function
(continued fraction, Numerical Recipes §6.4); tests check it against scipy.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

# ---------------------------------------------------------------------- the t distribution


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with `df` degrees of freedom (df may be fractional)."""
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df}")
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def t_cdf(t: float, df: float) -> float:
    return 1.0 - t_sf(t, df)


def t_ppf(q: float, df: float) -> float:
    """Quantile of Student's t (bisection on the cdf; |error| < 1e-10)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -t_ppf(1.0 - q, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < q:
        high *= 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if t_cdf(mid, df) < q:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


# ---------------------------------------------------------------------- summaries


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; nan for fewer than 2 values)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t confidence interval of the mean; low = high = mean when n = 1."""
    values = [float(v) for v in values]
    mean, std = mean_std(values)
    if len(values) < 2:
        return mean, mean, mean
    half = t_ppf(0.5 + confidence / 2.0, len(values) - 1) * std / math.sqrt(len(values))
    return mean, mean - half, mean + half


@dataclass(frozen=True)
class TestResult:
    statistic: float  # t statistic, or the observed mean difference for the permutation test
    p_value: float  # two-sided; nan when undefined (zero variance, too few values)
    df: float = math.nan
    n_a: int = 0
    n_b: int = 0
    note: str = ""


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Two-sided Welch t-test (unequal variances) of mean(a) == mean(b)."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    if len(a) < 2 or len(b) < 2:
        return TestResult(math.nan, math.nan, math.nan, len(a), len(b), "needs >= 2 values per group")
    ma, sa = mean_std(a)
    mb, sb = mean_std(b)
    va, vb = sa * sa / len(a), sb * sb / len(b)
    if va + vb == 0:
        note = "zero variance in both groups" + ("" if ma != mb else ", equal means")
        return TestResult(math.nan, math.nan, math.nan, len(a), len(b), note)
    t = (ma - mb) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va * va / (len(a) - 1) + vb * vb / (len(b) - 1))
    return TestResult(t, min(1.0, 2.0 * t_sf(abs(t), df)), df, len(a), len(b))


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Two-sided paired t-test on the differences a[i] - b[i] (same seeds)."""
    if len(a) != len(b):
        raise ValueError(f"paired test needs equal lengths, got {len(a)} and {len(b)}")
    diffs = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    if n < 2:
        return TestResult(math.nan, math.nan, math.nan, n, n, "needs >= 2 pairs")
    mean, std = mean_std(diffs)
    if std == 0:
        note = "identical differences" + (", all zero" if mean == 0 else "")
        return TestResult(math.nan, math.nan, n - 1, n, n, note)
    t = mean / (std / math.sqrt(n))
    return TestResult(t, min(1.0, 2.0 * t_sf(abs(t), n - 1)), float(n - 1), n, n)


def permutation_test(
    a: Sequence[float], b: Sequence[float], max_exact: int = 100_000, samples: int = 20_000, seed: int = 0
) -> TestResult:
    """Two-sided permutation test on the difference of means (exact when C(n_a+n_b, n_a) <= max_exact).

    p = fraction of relabellings with |mean diff| >= the observed one (the observed labelling
    included), so with 3 vs 3 values the smallest possible p is 2/20 = 0.1.
    """
    a, b = [float(v) for v in a], [float(v) for v in b]
    if not a or not b:
        return TestResult(math.nan, math.nan, math.nan, len(a), len(b), "empty group")
    pooled = a + b
    n, k = len(pooled), len(a)
    total = sum(pooled)
    observed = sum(a) / k - sum(b) / (n - k)
    tol = 1e-12 * max(1.0, abs(observed))

    def diff(chosen_sum: float) -> float:
        return chosen_sum / k - (total - chosen_sum) / (n - k)

    if math.comb(n, k) <= max_exact:
        count = hits = 0
        for idx in itertools.combinations(range(n), k):
            count += 1
            hits += abs(diff(sum(pooled[i] for i in idx))) >= abs(observed) - tol
        return TestResult(observed, hits / count, math.nan, k, n - k, f"exact, {count} relabellings")
    rng = random.Random(seed)
    hits = 1
    for _ in range(samples):
        idx = rng.sample(range(n), k)
        hits += abs(diff(sum(pooled[i] for i in idx))) >= abs(observed) - tol
    return TestResult(observed, hits / (samples + 1), math.nan, k, n - k, f"sampled, {samples} relabellings")


__all__ = [
    "TestResult",
    "betainc",
    "mean_std",
    "paired_t_test",
    "permutation_test",
    "t_cdf",
    "t_interval",
    "t_ppf",
    "t_sf",
    "welch_t_test",
]
