"""How many paired seeds a comparison needs: power of the paired t-test and of paired TOST.

    seeds_for_difference(sd=0.2, delta=0.1, alpha=0.05, power=0.8)   # detect a true difference δ
    seeds_for_equivalence(sd=0.2, margin=0.05, alpha=0.05, power=0.8)  # show |difference| < margin
    detectable_difference(n=10, sd=0.2, alpha=0.05, power=0.8)          # what 10 seeds can detect

`sd` is the standard deviation of the per-seed differences (arm A − arm B on the same seed),
which pairing makes smaller than either arm's spread. Both functions return the smallest number
of seeds n >= 2 that reaches `power`, computed with the t distribution at n − 1 degrees of
freedom: the two-sided paired t-test's exact power from the noncentral t, and for TOST (two
one-sided tests at level α, true difference 0) the usual shifted-t approximation
P(T_{n−1} < margin/se − t_{1−α}) − P(T_{n−1} < −margin/se + t_{1−α}), se = sd/√n.

`python -m ticgrpo.reports.power SUMMARY.json --delta 0.1 --margin 0.05` reads a comparison's
summary.json (`ticgrpo compare` / `ticgrpo report`), estimates sd per pair of algorithms from
the seeds they share, and prints the seeds each pre-declared comparison needs, at the
Bonferroni level α/m that bounds Holm's correction over the m comparisons.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

MAX_SEEDS = 100_000


def difference_power(n: int, sd: float, delta: float, alpha: float) -> float:
    """Power of the two-sided paired t-test at level α with n seeds, true mean difference δ."""
    df, ncp = n - 1, delta / (sd / math.sqrt(n))
    critical = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(critical, df, ncp) + stats.nct.cdf(-critical, df, ncp))


def equivalence_power(n: int, sd: float, margin: float, alpha: float) -> float:
    """Approximate power of paired TOST (±margin, each one-sided test at α) when the true difference is 0."""
    df, se = n - 1, sd / math.sqrt(n)
    critical = stats.t.ppf(1 - alpha, df)
    return max(0.0, float(stats.t.cdf(margin / se - critical, df) - stats.t.cdf(-margin / se + critical, df)))


def _smallest_n(power_at: Callable[[int], float], target: float) -> int:
    """The smallest n in [2, MAX_SEEDS] with power_at(n) >= target (power grows with n)."""
    low, high = 2, 2
    while power_at(high) < target:
        if high >= MAX_SEEDS:
            return MAX_SEEDS
        low, high = high, min(2 * high, MAX_SEEDS)
    while low < high:
        middle = (low + high) // 2
        low, high = (middle + 1, high) if power_at(middle) < target else (low, middle)
    return high


def seeds_for_difference(sd: float, delta: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Seeds for the paired t-test to detect a true difference δ with the given power."""
    _check(sd, delta, alpha, power, "delta")
    return _smallest_n(lambda n: difference_power(n, sd, delta, alpha), power)


def seeds_for_equivalence(sd: float, margin: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Seeds for paired TOST to conclude |difference| < margin when the arms are in truth equal."""
    _check(sd, margin, alpha, power, "margin")
    return _smallest_n(lambda n: equivalence_power(n, sd, margin, alpha), power)


def detectable_difference(n: int, sd: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference the paired t-test detects with `power` from n seeds."""
    _check(sd, 1.0, alpha, power, "delta")
    low, high = 0.0, sd
    while difference_power(n, sd, high, alpha) < power:
        high *= 2
    for _ in range(60):  # bisection to far below any reported precision
        middle = (low + high) / 2
        low, high = (middle, high) if difference_power(n, sd, middle, alpha) < power else (low, middle)
    return high


def _check(sd: float, size: float, alpha: float, power: float, name: str) -> None:
    if not sd > 0 or not size > 0:
        raise ValueError(f"sd and {name} must be > 0, got sd={sd}, {name}={size}")
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must be in (0, 1), got alpha={alpha}, power={power}")


@dataclass(frozen=True)
class PairPlan:
    a: str
    b: str
    seeds: int  # seeds both arms ran
    mean_difference: float
    sd: float  # of the per-seed differences
    seeds_to_detect: int
    seeds_for_equivalence: int
    detectable_at_planned: float  # the difference detectable with the planned number of seeds


def plan_pairs(finals: dict[str, dict[int, float]], pairs: Sequence[tuple[str, str]], delta: float, margin: float,
               alpha: float = 0.05, power: float = 0.8, planned_seeds: int = 10) -> list[PairPlan]:
    """Per pair of arms (final metric per seed), the observed paired sd and the seeds needed at α/m."""
    level = alpha / len(pairs)
    plans = []
    for a, b in pairs:
        shared = sorted(set(finals[a]) & set(finals[b]))
        if len(shared) < 2:
            raise ValueError(f"{a} and {b} share {len(shared)} seed(s); the paired sd needs at least 2")
        differences = np.array([finals[a][s] - finals[b][s] for s in shared])
        mean, sd = float(differences.mean()), float(differences.std(ddof=1))
        plans.append(PairPlan(a, b, len(shared), mean, sd, seeds_for_difference(sd, delta, level, power),
                              seeds_for_equivalence(sd, margin, level, power),
                              detectable_difference(planned_seeds, sd, level, power)))
    return plans


def final_accuracies(summary: dict) -> dict[str, dict[int, float]]:
    """{algorithm: {seed: final accuracy}} from a comparison's summary.json."""
    return {row["algorithm"]: dict(zip(row["seeds"], row["final_accuracies"], strict=True))
            for row in summary["rows"]}


def _pairs(text: str | None, algorithms: list[str]) -> list[tuple[str, str]]:
    """--pairs a:b,c:d (default: every pair), each name one of the summary's algorithms."""
    if not text:
        return list(itertools.combinations(algorithms, 2))
    pairs = []
    for item in text.split(","):
        a, sep, b = item.partition(":")
        if not sep or a not in algorithms or b not in algorithms:
            raise ValueError(f"--pairs item {item!r} is not a:b of two algorithms of the summary "
                             f"({', '.join(algorithms)})")
        pairs.append((a, b))
    return pairs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ticgrpo.reports.power", description=__doc__.split("\n\n")[0])
    parser.add_argument("summary", help="a comparison's summary.json")
    parser.add_argument("--pairs", help="a:b,c:d (default: every pair of algorithms)")
    parser.add_argument("--delta", type=float, default=0.10, help="difference to detect (default 0.10)")
    parser.add_argument("--margin", type=float, default=0.05, help="equivalence margin (default 0.05)")
    parser.add_argument("--alpha", type=float, default=0.05, help="family-wise level (default 0.05)")
    parser.add_argument("--power", type=float, default=0.8, help="target power (default 0.8)")
    parser.add_argument("--seeds", type=int, default=10, help="planned seeds: the difference they detect (default 10)")
    args = parser.parse_args(argv)
    try:
        finals = final_accuracies(json.loads(Path(args.summary).read_text()))
        pairs = _pairs(args.pairs, sorted(finals))
        if args.seeds < 2:
            raise ValueError(f"--seeds must be >= 2, got {args.seeds}")
        plans = plan_pairs(finals, pairs, args.delta, args.margin, args.alpha, args.power, args.seeds)
    except (OSError, ValueError, KeyError) as exc:
        print(f"power: error: {exc}", file=sys.stderr)
        return 2
    level = args.alpha / len(plans)
    print(f"| A − B | seeds | mean diff | sd of diffs | seeds to detect {args.delta:g} | seeds for TOST "
          f"±{args.margin:g} | detectable with {args.seeds} seeds |")
    print("|---|---|---|---|---|---|---|")
    for p in plans:
        print(f"| {p.a} − {p.b} | {p.seeds} | {p.mean_difference:+.3f} | {p.sd:.3f} | {p.seeds_to_detect} | "
              f"{p.seeds_for_equivalence} | {p.detectable_at_planned:.3f} |")
    print(f"two-sided paired t-test and paired TOST, power {args.power:g}, each at α/m = {level:.4g} "
          f"(m = {len(plans)} comparisons; Bonferroni bounds Holm)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
