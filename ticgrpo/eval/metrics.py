"""Evaluation metrics as the field reports them: a registry of per-problem scores.

Every metric is a pure function of one problem set's outcomes (`Outcomes`) that returns one
score per problem; the reported value is the mean over problems, and its interval comes from
those per-problem scores (Wilson for 0/1 scores, a percentile bootstrap over problems for the
others: see `interval`). Metrics with ``uses_k`` are computed once per requested k and named
``{name}`` with "k" replaced, e.g. ``pass@k`` at k = 8 is reported as ``pass@8``.

    EVAL_METRICS.spec("pass@k").fn(outcomes, 8)   # numpy array, one score per problem

Notation: a problem has a greedy completion and n sampled ones (n = max of the requested k),
c of the n samples are correct; ``correct[j]`` and ``answers[j]`` are the j-th sample's
correctness and extracted answer (None when none could be extracted).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ticgrpo.registry import Registry

IntervalKind = Literal["wilson", "bootstrap"]
Unit = Literal["rate", "tokens"]
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class Outcomes:
    """What the metrics read, for P problems with n samples each (n may be 0: greedy only).

    greedy_correct [P] bool; sampled_correct [P, n] bool; sampled_answers: P lists of n canonical
    answers (None = not extracted); lengths [P, 1 + n] completion tokens, the greedy one first
    (column 0; NaN where greedy decoding was not run); truncated [P, 1 + n] likewise (hit the
    token budget without EOS).
    """

    greedy_correct: np.ndarray
    sampled_correct: np.ndarray
    sampled_answers: list[list[str | None]]
    lengths: np.ndarray
    truncated: np.ndarray

    @property
    def num_samples(self) -> int:
        return int(self.sampled_correct.shape[1])


MetricFn = Callable[[Outcomes, int], np.ndarray]


@dataclass(frozen=True)
class EvalMetricSpec:
    """name: the registry name ("pass@k"); fn(outcomes, k) → per-problem scores; uses_k: reported
    once per requested k; needs_samples: reads the n sampled completions (k <= n is checked);
    interval: how its interval is formed; accuracy: a rate of correct answers, reported beside
    the constant baseline (the score of always giving the most common gold answer); unit: a
    rate in [0, 1] (printed in points) or a number of tokens."""

    name: str
    fn: MetricFn
    uses_k: bool
    needs_samples: bool
    interval: IntervalKind
    accuracy: bool
    unit: Unit = "rate"

    def reported_name(self, k: int) -> str:
        return self.name.replace("@k", f"@{k}") if self.uses_k else self.name


EVAL_METRICS: Registry[EvalMetricSpec] = Registry("eval metric")


def register_metric(name: str, *, uses_k: bool, needs_samples: bool, interval: IntervalKind,
                    accuracy: bool, unit: Unit = "rate") -> Callable[[MetricFn], MetricFn]:
    def decorator(fn: MetricFn) -> MetricFn:
        EVAL_METRICS.add(EvalMetricSpec(name, fn, uses_k, needs_samples, interval, accuracy, unit))
        return fn

    return decorator


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimate from n samples of which c are correct:
    1 − C(n−c, k) / C(n, k), computed as 1 − Π_{i=n−c+1}^{n} (1 − k/i), which never forms the
    (huge) binomial coefficients; 1 when fewer than k samples are wrong."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def majority_answer(answers: Sequence[str | None]) -> int | None:
    """Index of the sample whose answer wins the vote among `answers`, None when no sample has an
    answer. Unextracted answers (None) do not vote. Ties go to the answer that appears first in
    sample order, and the winner is represented by its first occurrence: deterministic, and
    independent of how answers sort."""
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for index, answer in enumerate(answers):
        if answer is None:
            continue
        counts[answer] = counts.get(answer, 0) + 1
        first.setdefault(answer, index)
    if not counts:
        return None
    best = max(counts.values())
    return min(first[a] for a, count in counts.items() if count == best)


@register_metric("greedy_accuracy", uses_k=False, needs_samples=False, interval="wilson", accuracy=True)
def greedy_accuracy(outcomes: Outcomes, k: int) -> np.ndarray:
    """1 when the greedy (temperature-0) completion is correct, else 0; mean = fraction of problems."""
    return outcomes.greedy_correct.astype(float)


@register_metric("avg@k", uses_k=True, needs_samples=True, interval="bootstrap", accuracy=True)
def avg_at_k(outcomes: Outcomes, k: int) -> np.ndarray:
    """avg@k = (1/k) Σ_{j<k} correct[j]: mean accuracy over the first k samples (the TIC-GRPO
    paper's AIME avg@32). Its expectation is the per-sample accuracy whatever k; k sets the
    number of samples averaged, hence the variance."""
    return outcomes.sampled_correct[:, :k].mean(axis=1)


@register_metric("pass@k", uses_k=True, needs_samples=True, interval="bootstrap", accuracy=True)
def pass_at_k_metric(outcomes: Outcomes, k: int) -> np.ndarray:
    """pass@k = 1 − C(n−c, k) / C(n, k): the probability that at least one of k samples drawn
    without replacement from the n is correct (the unbiased estimator of Chen et al. 2021, in
    its product form: see `pass_at_k`)."""
    n = outcomes.num_samples
    return np.array([pass_at_k(n, int(c), k) for c in outcomes.sampled_correct.sum(axis=1)], dtype=float)


@register_metric("maj@k", uses_k=True, needs_samples=True, interval="wilson", accuracy=True)
def maj_at_k(outcomes: Outcomes, k: int) -> np.ndarray:
    """maj@k = correct[j*] where j* is the sample whose extracted answer wins a majority vote
    over the first k samples (canonical answers compared as strings; unextracted answers do
    not vote; a tie goes to the answer seen first: `majority_answer`); 0 when no sample of
    the k has an answer."""
    scores = []
    for answers, correct in zip(outcomes.sampled_answers, outcomes.sampled_correct, strict=True):
        winner = majority_answer(answers[:k])
        scores.append(0.0 if winner is None else float(correct[winner]))
    return np.array(scores, dtype=float)


@register_metric("mean_length", uses_k=False, needs_samples=False, interval="bootstrap", accuracy=False,
                 unit="tokens")
def mean_length(outcomes: Outcomes, k: int) -> np.ndarray:
    """Mean completion length in tokens over a problem's completions (the greedy one and the n
    samples, each counted once); the mean over problems weights every problem equally."""
    return np.nanmean(outcomes.lengths, axis=1)


@register_metric("truncation_rate", uses_k=False, needs_samples=False, interval="bootstrap", accuracy=False)
def truncation_rate(outcomes: Outcomes, k: int) -> np.ndarray:
    """Fraction of a problem's completions (greedy and samples) that reached max_new_tokens
    without an end-of-sequence token; averaged over problems."""
    return np.nanmean(outcomes.truncated, axis=1)


def interval(scores: np.ndarray, kind: IntervalKind, seed: int = 0) -> tuple[float, float]:
    """The 95% interval of the mean of per-problem `scores`.

    wilson: the Wilson score interval of a binomial proportion (0/1 scores), which stays inside
    [0, 1] and is sensible at 0 or P successes. bootstrap: the percentile interval of the mean
    over 2000 resamples of the problems (seeded), for scores that are not 0/1 (avg@k, pass@k,
    lengths). A single problem, or scores all equal, give the point itself for the bootstrap.
    """
    from scipy import stats

    values = np.asarray(scores, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return math.nan, math.nan
    if kind == "wilson":
        successes = int(np.rint(values.sum()))
        ci = stats.binomtest(successes, values.size).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
        return float(ci.low), float(ci.high)
    if values.size == 1 or np.all(values == values[0]):
        return float(values[0]), float(values[0])
    result = stats.bootstrap((values,), np.mean, confidence_level=CONFIDENCE, n_resamples=BOOTSTRAP_RESAMPLES,
                             method="percentile", random_state=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def metric_names(ks: Sequence[int], num_samples: int) -> list[tuple[EvalMetricSpec, int]]:
    """(spec, k) for every reported metric: each k of `ks` for the metrics that use k, once for
    the others; the sampled metrics only when there are samples. Raises ValueError when a k
    exceeds the number of samples."""
    too_big = [k for k in ks if k > num_samples]
    if too_big:
        raise ValueError(f"k={max(too_big)} is larger than the {num_samples} samples per problem; "
                         f"draw at least {max(too_big)} samples or lower k")
    chosen: list[tuple[EvalMetricSpec, int]] = []
    # accuracies first, greedy before the sampled ones, then lengths and rates
    for spec in sorted(EVAL_METRICS.specs(), key=lambda s: (not s.accuracy, s.needs_samples, s.unit, s.name)):
        if spec.needs_samples and num_samples == 0:
            continue
        chosen += [(spec, k) for k in ks] if spec.uses_k else [(spec, 0)]
    return chosen
