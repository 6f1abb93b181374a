"""Small-sample statistics over seeds, through scipy.stats.

    mean, low, high = t_interval([0.41, 0.47, 0.44])          # 95% Student-t interval
    mean, half = t_half_width(curves, axis=0)                  # the same, element-wise over an array
    welch_t_test(a, b)  -> TestResult(statistic, p_value, df)  # unequal variances, two-sided
    paired_t_test(a, b) -> TestResult                          # a[i], b[i] share seed i
    permutation_test(a, b) -> TestResult                       # exact (or seeded sampling) on the mean difference
    paired_difference(d, margin) -> PairedDifference           # mean of paired differences: t interval, p, TOST
    holm_adjust([p1, p2, ...]) -> [p1', p2', ...]              # Holm's step-down family-wise correction

The guards in front of scipy say *why* a result is undefined (too few values, zero variance) in
`TestResult.note`, which the report prints next to the dash.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; nan for fewer than 2 values)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = math.fsum(values) / n
    if n < 2:
        return mean, math.nan
    return mean, float(np.std(np.asarray(values, dtype=np.float64), ddof=1))


def t_half_width(values: Any, axis: int = 0, confidence: float = 0.95) -> tuple[Any, Any]:
    """Mean and half-width of the Student-t interval along `axis` (half-width 0 for one value)."""
    array = np.asarray(values, dtype=np.float64)
    n = array.shape[axis]
    mean = array.mean(axis=axis)
    if n < 2:
        return mean, np.zeros_like(mean)
    return mean, stats.t.ppf(0.5 + confidence / 2.0, n - 1) * stats.sem(array, axis=axis)


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t confidence interval of the mean; low = high = mean when n = 1."""
    values = [float(v) for v in values]
    if not values:
        return math.nan, math.nan, math.nan
    mean, half = t_half_width(values, confidence=confidence)
    return float(mean), float(mean - half), float(mean + half)


@dataclass(frozen=True)
class TestResult:
    statistic: float  # t statistic, or the observed mean difference for the permutation test
    p_value: float  # two-sided; nan when undefined (zero variance, too few values)
    df: float = math.nan
    n_a: int = 0
    n_b: int = 0
    note: str = ""


def _quiet_ttest(test: Any, *samples: list[float], **options: Any) -> Any:
    # A group whose values are all equal (common: final accuracies on a few evaluation prompts)
    # makes scipy warn about cancellation in its variance; that variance is exactly 0 and the
    # test stays well defined while the other group varies.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
        return test(*samples, **options)


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Two-sided Welch t-test (unequal variances) of mean(a) == mean(b)."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    if len(a) < 2 or len(b) < 2:
        return TestResult(math.nan, math.nan, math.nan, len(a), len(b), "needs >= 2 values per group")
    (mean_a, std_a), (mean_b, std_b) = mean_std(a), mean_std(b)
    if std_a == 0 and std_b == 0:
        note = "zero variance in both groups" + ("" if mean_a != mean_b else ", equal means")
        return TestResult(math.nan, math.nan, math.nan, len(a), len(b), note)
    result = _quiet_ttest(stats.ttest_ind, a, b, equal_var=False)
    return TestResult(float(result.statistic), float(result.pvalue), float(result.df), len(a), len(b))


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Two-sided paired t-test on the differences a[i] - b[i] (same seeds)."""
    if len(a) != len(b):
        raise ValueError(f"paired test needs equal lengths, got {len(a)} and {len(b)}")
    a, b = [float(v) for v in a], [float(v) for v in b]
    n = len(a)
    if n < 2:
        return TestResult(math.nan, math.nan, math.nan, n, n, "needs >= 2 pairs")
    differences = [x - y for x, y in zip(a, b, strict=True)]
    mean, std = mean_std(differences)
    if std == 0:
        note = "identical differences" + (", all zero" if mean == 0 else "")
        return TestResult(math.nan, math.nan, n - 1, n, n, note)
    result = _quiet_ttest(stats.ttest_rel, a, b)
    return TestResult(float(result.statistic), float(result.pvalue), float(result.df), n, n)


def _absolute_mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.abs(x.mean(axis=axis) - y.mean(axis=axis))


def permutation_test(
    a: Sequence[float], b: Sequence[float], max_exact: int = 100_000, samples: int = 20_000, seed: int = 0
) -> TestResult:
    """Two-sided permutation test on the difference of means (exact when C(n_a+n_b, n_a) <= max_exact).

    p = fraction of relabellings with |mean diff| >= the observed one (the observed labelling
    included), so with 3 vs 3 values the smallest possible p is 2/20 = 0.1. The statistic is
    |mean(a) - mean(b)| with scipy's one-sided rule: scipy's own two-sided rule doubles the
    smaller tail, which differs from this for groups of unequal size.
    """
    a, b = [float(v) for v in a], [float(v) for v in b]
    if not a or not b:
        return TestResult(math.nan, math.nan, math.nan, len(a), len(b), "empty group")
    observed = math.fsum(a) / len(a) - math.fsum(b) / len(b)
    relabellings = math.comb(len(a) + len(b), len(a))
    exact = relabellings <= max_exact
    result = stats.permutation_test(
        (np.asarray(a), np.asarray(b)), _absolute_mean_difference, permutation_type="independent",
        vectorized=True, alternative="greater", n_resamples=math.inf if exact else samples,
        rng=np.random.default_rng(seed),
    )
    note = f"exact, {relabellings} relabellings" if exact else f"sampled, {samples} relabellings"
    return TestResult(observed, float(result.pvalue), math.nan, len(a), len(b), note)


@dataclass(frozen=True)
class PairedDifference:
    """The mean of paired differences d[i] = a[i] − b[i] (one per seed) and its tests."""

    mean: float
    low: float  # Student-t confidence interval of the mean
    high: float
    p_value: float  # two-sided one-sample t-test of mean(d) == 0; nan when undefined
    equivalence_p_value: float  # TOST: max of the one-sided p-values of mean(d) > −margin, < +margin
    margin: float
    n: int
    note: str = ""


def paired_difference(
    differences: Sequence[float] | np.ndarray, margin: float, confidence: float = 0.95
) -> PairedDifference:
    """Interval, difference test and equivalence test (TOST, ±`margin`) of the mean difference.

    Equivalence is shown at level α when `equivalence_p_value` < α, i.e. when the (1 − 2α)
    interval lies inside (−margin, +margin). Undefined (nan, with `note`) for fewer than 2
    values or zero variance: the t statistic has no scale then.
    """
    d = np.asarray([float(v) for v in differences], dtype=np.float64)
    n = int(d.size)
    mean, low, high = t_interval(d.tolist(), confidence)
    if n < 2 or bool(np.all(d == d[0])):  # identical values: np.std would round to a spurious > 0
        note = "needs >= 2 differences" if n < 2 else "zero variance of the differences"
        return PairedDifference(mean, low, high, math.nan, math.nan, margin, n, note)
    p_value = float(stats.ttest_1samp(d, 0.0).pvalue)
    above_lower = float(stats.ttest_1samp(d, -margin, alternative="greater").pvalue)
    below_upper = float(stats.ttest_1samp(d, margin, alternative="less").pvalue)
    return PairedDifference(mean, low, high, p_value, max(above_lower, below_upper), margin, n)


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order); nan stays nan and does not count in the family.

    Rejecting where the adjusted p < α controls the family-wise error rate at α for any dependence.
    """
    finite = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - rank) * p))
        adjusted[i] = running
    return adjusted


__all__ = [
    "PairedDifference",
    "TestResult",
    "holm_adjust",
    "mean_std",
    "paired_difference",
    "paired_t_test",
    "permutation_test",
    "t_half_width",
    "t_interval",
    "welch_t_test",
]
