"""Every number of a comparison report, from loaded runs: curves over seeds, the results rows,
the significance tests between algorithms and the objective diagnostics (summary.json).

Only complete runs enter the rows and curves; incomplete ones are listed in `runs`. x axes:
the training step; samples = completions generated so far (P·G per step, more with dynamic
sampling); wall time = cumulative `time_step` (rollout + training, evaluation excluded),
averaged over seeds at each step.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ticgrpo.reports.runs import RunData, algorithm_summary, finite, group
from ticgrpo.reports.stats import paired_t_test, permutation_test, t_interval, welch_t_test
from ticgrpo.train.metrics import Reduction, metric_spec


@dataclass
class Curve:
    steps: list[int] = field(default_factory=list)
    x: dict[str, list[float]] = field(default_factory=lambda: {"step": [], "samples": [], "time": []})
    mean: list[float] = field(default_factory=list)
    low: list[float] = field(default_factory=list)
    high: list[float] = field(default_factory=list)
    n: list[int] = field(default_factory=list)


def aggregate(runs: list[RunData], series: Callable[[RunData], dict[int, float]]) -> Curve:
    """Mean and 95% t-interval over runs at each step (x of samples/time averaged over the runs)."""
    per_run = [(run.axes(), series(run)) for run in runs]
    curve = Curve()
    for step in sorted({s for _, values in per_run for s in values}):
        have = [(axes, values[step]) for axes, values in per_run if step in values]
        mean, low, high = t_interval([v for _, v in have])
        curve.steps.append(step)
        curve.x["step"].append(float(step))
        for i, name in enumerate(("samples", "time")):
            xs = [axes[step][i] for axes, _ in have if step in axes]
            curve.x[name].append(sum(xs) / len(xs) if xs else math.nan)
        curve.mean.append(mean)
        curve.low.append(low)
        curve.high.append(high)
        curve.n.append(len(have))
    return curve


def accuracy_curve(runs: list[RunData]) -> Curve:
    return aggregate(runs, lambda run: run.series("evals", "accuracy"))


def smoothing_window(runs: list[RunData]) -> int:
    steps = max((r.last_step for r in runs), default=0)
    return max(1, round(steps / 20)) if steps >= 20 else 1


def _first_reaching(curve_steps: list[int], values: list[float], threshold: float) -> int | None:
    for step, value in zip(curve_steps, values, strict=True):
        if value >= threshold - 1e-12:
            return step
    return None


# (column, metric key, reduction over every step of every seed or None for the metric's own
# declared reduction). The gradient norm's step mean is summarised by its median: one
# diverging step would dominate a mean.
DIAGNOSTICS: tuple[tuple[str, str, str | None], ...] = (
    ("clipped high", "clip_frac_high", None), ("clipped low", "clip_frac_low", None),
    ("token ratio", "ratio_min", None), ("token ratio", "ratio_max", None),
    ("log w", "log_w_min", None), ("log w", "log_w_max", None),
    ("grad norm", "grad_norm", "median"), ("grad norm", "grad_norm_max", None),
    ("entropy", "entropy", None),
)


def diagnostic_reduction(key: str, override: str | None) -> str:
    return override or metric_spec(key).reduction.value


def diagnostic_columns() -> list[tuple[str, str]]:
    """(column header, metric key) of the diagnostics table."""
    return [(f"{label} ({diagnostic_reduction(key, how)})", key) for label, key, how in DIAGNOSTICS]


def diagnostics(runs: list[RunData]) -> dict[str, float | None]:
    """Objective diagnostics over every training step of every seed (None where not logged)."""
    out: dict[str, float | None] = {}
    for _, key, how in DIAGNOSTICS:
        values = [float(m[key]) for r in runs for m in r.metrics if finite(m.get(key))]
        reduction = diagnostic_reduction(key, how)
        if not values:
            out[key] = None
        else:
            out[key] = statistics.median(values) if reduction == "median" else Reduction(reduction).apply(values)
    return out


def _threshold(curves: dict[str, Curve], initial: float | None, threshold: float | None) -> tuple[float | None, str]:
    """The accuracy threshold of 'steps to threshold' and the sentence that says where it came from."""
    if threshold is not None:
        return threshold, f"{threshold:.4g}, set with --threshold"
    best = [(max(c.mean), name, c.steps[c.mean.index(max(c.mean))]) for name, c in curves.items() if c.mean]
    if not best:
        return None, "no held-out accuracy in these runs"
    best_value, best_name, best_step = max(best, key=lambda item: item[0])  # the first of equal maxima
    start = initial if initial is not None else min(c.mean[0] for c in curves.values() if c.mean)
    where = "at step 0, mean over all runs" if initial is not None else "first evaluation (no step-0 eval)"
    if best_value <= start:
        return None, (f"none: no algorithm's mean accuracy rose above the initial {start:.4g} ({where}); "
                      "pass --threshold to set one")
    midpoint = (start + best_value) / 2
    return midpoint, (f"{midpoint:.4g} = midpoint between the initial accuracy {start:.4g} ({where}) and "
                      f"the best mean accuracy {best_value:.4g} ({best_name} at step {best_step})")


def _mean_interval(values: list[float]) -> tuple[float, float, float]:
    return t_interval(values) if values else (math.nan, math.nan, math.nan)


def _final_reward(run: RunData) -> float | None:
    """Mean training reward over the last 10% of steps."""
    rewards = [m["reward_mean"] for m in run.metrics if finite(m.get("reward_mean"))]
    if not rewards:
        return None
    k = max(1, len(rewards) // 10)
    return sum(rewards[-k:]) / k


def _row(name: str, runs: list[RunData], curve: Curve, threshold: float | None) -> dict[str, Any]:
    finals = [r.final_accuracy for r in runs if r.final_accuracy is not None]
    f_mean, f_low, f_high = _mean_interval(finals)
    w_mean, w_low, w_high = t_interval([r.train_seconds for r in runs])
    r_mean, r_low, r_high = _mean_interval([x for x in map(_final_reward, runs) if x is not None])
    best = max(curve.mean) if curve.mean else math.nan
    row: dict[str, Any] = {
        "algorithm": name, "seeds": [r.seed for r in runs], "n": len(runs),
        "final_accuracy": f_mean, "final_accuracy_ci": [f_low, f_high], "final_accuracies": finals,
        "best_accuracy": best, "best_step": curve.steps[curve.mean.index(best)] if curve.mean else None,
        "steps_to_threshold": None, "time_to_threshold": None, "seed_steps_to_threshold": [],
        "train_seconds": w_mean, "train_seconds_ci": [w_low, w_high],
        "final_reward": r_mean, "final_reward_ci": [r_low, r_high],
        "samples": sum(r.axes()[r.last_step][0] for r in runs) / len(runs),
        "steps": max(r.last_step for r in runs),
    }
    if threshold is not None and curve.mean:
        step = _first_reaching(curve.steps, curve.mean, threshold)
        row["steps_to_threshold"] = step
        if step is not None:
            row["time_to_threshold"] = curve.x["time"][curve.steps.index(step)]
        for r in runs:
            accuracy = r.series("evals", "accuracy")
            row["seed_steps_to_threshold"].append(_first_reaching(list(accuracy), list(accuracy.values()), threshold))
    row["diagnostics"] = diagnostics(runs)
    return row


def _final_by_seed(runs: list[RunData]) -> dict[int, float]:
    return {r.seed: r.final_accuracy for r in runs if r.final_accuracy is not None}


def _test(a: dict[str, Any], b: dict[str, Any], groups: dict[str, list[RunData]]) -> dict[str, Any]:
    """Welch, paired (when both have the same seeds) and permutation tests of two rows' final accuracies."""
    fa, fb = a["final_accuracies"], b["final_accuracies"]
    welch, perm = welch_t_test(fa, fb), permutation_test(fa, fb)
    by_seed_a, by_seed_b = _final_by_seed(groups[a["algorithm"]]), _final_by_seed(groups[b["algorithm"]])
    paired = None
    if set(by_seed_a) == set(by_seed_b) and len(by_seed_a) >= 2:
        seeds = sorted(by_seed_a)
        paired = paired_t_test([by_seed_a[s] for s in seeds], [by_seed_b[s] for s in seeds])
    return {
        "a": a["algorithm"], "b": b["algorithm"], "diff": sum(fa) / len(fa) - sum(fb) / len(fb),
        "welch_t": welch.statistic, "welch_df": welch.df, "welch_p": welch.p_value, "welch_note": welch.note,
        "paired_t": paired.statistic if paired else None, "paired_p": paired.p_value if paired else None,
        "paired_note": paired.note if paired else "seeds differ" if set(by_seed_a) != set(by_seed_b) else "",
        "permutation_p": perm.p_value, "permutation_note": perm.note,
    }


def _run_row(run: RunData) -> dict[str, Any]:
    return {"algorithm": run.algorithm, "seed": run.seed, "complete": run.complete, "steps": run.last_step,
            "max_steps": run.max_steps, "final_accuracy": run.final_accuracy, "train_seconds": run.train_seconds,
            "run_wall_seconds": (run.done or {}).get("wall_s"), "run_dir": str(run.run_dir)}


def summarize(runs: list[RunData], threshold: float | None = None, order: list[str] | None = None) -> dict[str, Any]:
    """Every number of the report (also written to summary.json)."""
    order = list(order or [])
    complete = [r for r in runs if r.complete]
    groups = group(complete)
    names = [n for n in order if n in groups] + sorted(n for n in groups if n not in order)
    curves = {n: accuracy_curve(groups[n]) for n in names}
    initial_values = [acc[0] for acc in (r.series("evals", "accuracy") for r in complete) if 0 in acc]
    initial = sum(initial_values) / len(initial_values) if initial_values else None
    threshold, threshold_note = _threshold(curves, initial, threshold)
    rows = [_row(n, groups[n], curves[n], threshold) for n in names]
    tests = [_test(a, b, groups) for a, b in itertools.combinations(rows, 2)
             if a["final_accuracies"] and b["final_accuracies"]]
    rank = {name: i for i, name in enumerate([*names, *order])}
    ordered = sorted(runs, key=lambda r: (rank.get(r.algorithm, len(rank)), r.algorithm, r.seed))
    specs = {n: {"description": groups[n][0].spec.get("description", ""),
                 **algorithm_summary(groups[n][0].config.get("algorithm") or {})} for n in names}
    return {"threshold": threshold, "threshold_note": threshold_note, "initial_accuracy": initial,
            "rows": rows, "tests": tests, "runs": [_run_row(r) for r in ordered], "algorithms": specs}


__all__ = ["DIAGNOSTICS", "Curve", "aggregate", "diagnostic_columns", "diagnostics", "smoothing_window", "summarize"]
