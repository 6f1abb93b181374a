"""The comparison report: report.md, summary.json and one PNG per quantity, from run folders.

    runs = load_runs(["runs/ablation"])            # comparison folders or run folders
    build_report(runs, "runs/ablation")             # → report.md, summary.json, plots/*.png

A run folder holds config.yaml, metrics.jsonl and eval.jsonl (what `ticgrpo train` writes),
plus `compare.json` (algorithm, seed) when `ticgrpo compare` made it; without that marker the
algorithm is the config's objective name. Runs are grouped by algorithm; curves show the mean
over seeds and a 95% Student-t interval. Only complete runs (done marker, or as many steps as
max_steps) enter the tables and curves; incomplete ones are listed.

x axes: the training step; samples = completions generated so far (P·G per step, more with
dynamic sampling); wall time = cumulative `time_step` (rollout + training, evaluation
excluded), averaged over seeds at each step.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ticgrpo.compare.plan import COMPARISON_FILE, DONE_MARKER, MARKER
from ticgrpo.compare.stats import paired_t_test, permutation_test, t_interval, welch_t_test
from ticgrpo.reports.plots import read_jsonl

AXES = {"step": "training step", "samples": "completions generated", "time": "training wall time (s)"}


@dataclass
class FigureSpec:
    name: str  # file name stem
    title: str
    source: str  # "metrics" | "evals"
    keys: tuple[str, ...]  # one panel per key (× axes)
    axes: tuple[str, ...] = ("step",)
    smooth: bool = True
    bounds: tuple[float, float] | None = None  # the quantity's range: the interval band is clipped to it


FIGURES = (
    FigureSpec("reward", "training reward (batch mean)", "metrics", ("reward_mean",), ("step", "samples", "time")),
    FigureSpec("accuracy", "held-out accuracy (greedy)", "evals", ("accuracy",), ("step", "samples", "time"), False,
               (0.0, 1.0)),
    FigureSpec("kl", "KL to the reference policy", "metrics", ("kl",)),
    FigureSpec("clip_frac", "clip fractions", "metrics", ("clip_frac_high", "clip_frac_low"), bounds=(0.0, 1.0)),
    FigureSpec("log_w", "trajectory log-ratio log w = log P_θ(o|q)/P_old(o|q)", "metrics",
               ("log_w_mean", "log_w_min", "log_w_max")),
    FigureSpec("ratio", "token ratio ρ = π_θ/π_old", "metrics", ("ratio_mean", "ratio_min", "ratio_max")),
    FigureSpec("completion_length", "completion length (tokens)", "metrics", ("completion_length_mean",)),
    FigureSpec("entropy", "policy entropy (nats/token)", "metrics", ("entropy",)),
)


# ---------------------------------------------------------------------- loading


@dataclass
class RunData:
    algorithm: str
    seed: int
    run_dir: Path
    config: dict[str, Any]
    metrics: list[dict]
    evals: list[dict]
    spec: dict[str, Any] = field(default_factory=dict)
    done: dict[str, Any] | None = None

    @property
    def max_steps(self) -> int:
        return int(self.config.get("max_steps", 0) or 0)

    @property
    def last_step(self) -> int:
        return int(self.metrics[-1]["step"]) if self.metrics else 0

    @property
    def complete(self) -> bool:
        return self.done is not None or (bool(self.metrics) and self.last_step >= self.max_steps)

    def axes(self) -> dict[int, tuple[float, float]]:
        """step → (completions generated so far, training wall time so far)."""
        rollout = self.config.get("rollout") or {}
        p, g = int(rollout.get("prompts_per_step", 4)), int(rollout.get("num_generations", 8))
        out, samples, seconds = {0: (0.0, 0.0)}, 0.0, 0.0
        for m in self.metrics:
            samples += float(m.get("groups_generated", p)) * g
            seconds += float(m.get("time_step", 0.0))
            out[int(m["step"])] = (samples, seconds)
        return out

    def series(self, source: str, key: str, smooth: int = 1) -> dict[int, float]:
        records = self.metrics if source == "metrics" else self.evals
        pairs = [(int(r["step"]), float(r[key])) for r in records if _finite(r.get(key))]
        if smooth > 1:
            values = [v for _, v in pairs]
            pairs = [(s, sum(values[max(0, i - smooth + 1): i + 1]) / len(values[max(0, i - smooth + 1): i + 1]))
                     for i, (s, _) in enumerate(pairs)]
        return dict(pairs)

    @property
    def train_seconds(self) -> float:
        return sum(float(m.get("time_step", 0.0)) for m in self.metrics)

    @property
    def final_accuracy(self) -> float | None:
        values = [e["accuracy"] for e in self.evals if _finite(e.get("accuracy"))]
        return float(values[-1]) if values else None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders under `paths`: a path that is a run folder, or every run folder below it."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{str(path)!r} does not exist")
        if (path / MARKER).is_file() or (path / "metrics.jsonl").is_file():
            found.append(path)
            continue
        below = sorted(p.parent for p in path.rglob(MARKER)) or sorted(
            p.parent for p in path.rglob("metrics.jsonl") if "checkpoints" not in p.parts
        )
        if not below:
            raise ValueError(f"{path}: no run folders (with {MARKER} or metrics.jsonl) found")
        found += below
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique


def load_run(path: str | Path) -> RunData:
    path = Path(path)
    config_path = path / "config.yaml"
    config = (yaml.safe_load(config_path.read_text()) or {}) if config_path.is_file() else {}
    marker = _read_json(path / MARKER)
    objective = (config.get("algorithm") or {}).get("objective")  # {name: ..., <option>: ...}
    algorithm = marker.get("algorithm") or (objective.get("name") if isinstance(objective, dict) else objective) \
        or path.name
    seed = int(marker.get("seed", config.get("seed", 0)))
    done = _read_json(path / DONE_MARKER) or None
    return RunData(str(algorithm), seed, path, config, read_jsonl(path / "metrics.jsonl"),
                   read_jsonl(path / "eval.jsonl"), marker.get("spec") or {}, done)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def load_runs(paths: Iterable[str | Path]) -> list[RunData]:
    runs = [load_run(p) for p in find_run_dirs(paths)]
    seen: dict[tuple[str, int], Path] = {}
    for run in runs:
        key = (run.algorithm, run.seed)
        if key in seen:
            raise ValueError(f"two runs of {run.algorithm!r} seed {run.seed}: {seen[key]} and {run.run_dir}")
        seen[key] = run.run_dir
    return runs


# ---------------------------------------------------------------------- aggregation


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


def smoothing_window(runs: list[RunData]) -> int:
    steps = max((r.last_step for r in runs), default=0)
    return max(1, round(steps / 20)) if steps >= 20 else 1


def group(runs: list[RunData]) -> dict[str, list[RunData]]:
    groups: dict[str, list[RunData]] = {}
    for run in runs:
        groups.setdefault(run.algorithm, []).append(run)
    return {name: sorted(rs, key=lambda r: r.seed) for name, rs in groups.items()}


# ---------------------------------------------------------------------- summary


def _first_reaching(curve_steps: list[int], values: list[float], threshold: float) -> int | None:
    for step, value in zip(curve_steps, values, strict=True):
        if value >= threshold - 1e-12:
            return step
    return None


# (column, metric key, reduction over every step of every seed)
DIAGNOSTICS = (
    ("clipped high (mean)", "clip_frac_high", "mean"), ("clipped low (mean)", "clip_frac_low", "mean"),
    ("token ratio min", "ratio_min", "min"), ("token ratio max", "ratio_max", "max"),
    ("log w min", "log_w_min", "min"), ("log w max", "log_w_max", "max"),
    ("grad norm (median)", "grad_norm", "median"), ("grad norm (max)", "grad_norm_max", "max"),
    ("entropy (mean)", "entropy", "mean"),
)


def diagnostics(runs: list[RunData]) -> dict[str, float | None]:
    """Objective diagnostics over every training step of every seed (None where not logged)."""
    out: dict[str, float | None] = {}
    for _, key, how in DIAGNOSTICS:
        values = sorted(float(m[key]) for r in runs for m in r.metrics if _finite(m.get(key)))
        if not values:
            out[key] = None
        elif how == "mean":
            out[key] = sum(values) / len(values)
        elif how == "median":
            out[key] = values[len(values) // 2] if len(values) % 2 else (values[len(values) // 2 - 1]
                                                                         + values[len(values) // 2]) / 2
        else:
            out[key] = values[0] if how == "min" else values[-1]
    return out


def summarize(runs: list[RunData], threshold: float | None = None, order: list[str] | None = None) -> dict[str, Any]:
    """Every number of the report (also written to summary.json)."""
    complete = [r for r in runs if r.complete]
    groups = group(complete)
    names = [n for n in (order or []) if n in groups] + sorted(n for n in groups if n not in (order or []))
    curves = {n: aggregate(groups[n], lambda r: r.series("evals", "accuracy")) for n in names}
    initial_values = [r.series("evals", "accuracy")[0] for r in complete if 0 in r.series("evals", "accuracy")]
    initial = sum(initial_values) / len(initial_values) if initial_values else None
    best_name, best_value, best_step = None, None, None
    for name in names:
        curve = curves[name]
        if curve.mean and (best_value is None or max(curve.mean) > best_value):
            best_value = max(curve.mean)
            best_name, best_step = name, curve.steps[curve.mean.index(best_value)]
    if threshold is not None:
        threshold_note = f"{threshold:.4g}, set with --threshold"
    elif best_value is not None:
        start = initial if initial is not None else min(c.mean[0] for c in curves.values() if c.mean)
        where = "at step 0, mean over all runs" if initial is not None else "first evaluation (no step-0 eval)"
        if best_value > start:
            threshold = (start + best_value) / 2
            threshold_note = (f"{threshold:.4g} = midpoint between the initial accuracy {start:.4g} ({where}) and "
                              f"the best mean accuracy {best_value:.4g} ({best_name} at step {best_step})")
        else:
            threshold_note = (f"none: no algorithm's mean accuracy rose above the initial {start:.4g} ({where}); "
                              "pass --threshold to set one")
    else:
        threshold_note = "no held-out accuracy in these runs"
    rows = []
    for name in names:
        rs, curve = groups[name], curves[name]
        finals = [r.final_accuracy for r in rs if r.final_accuracy is not None]
        f_mean, f_low, f_high = t_interval(finals) if finals else (math.nan,) * 3
        w_mean, w_low, w_high = t_interval([r.train_seconds for r in rs])
        last_rewards = []
        for r in rs:
            rewards = [m["reward_mean"] for m in r.metrics if _finite(m.get("reward_mean"))]
            if rewards:
                k = max(1, len(rewards) // 10)
                last_rewards.append(sum(rewards[-k:]) / k)
        r_mean, r_low, r_high = t_interval(last_rewards) if last_rewards else (math.nan,) * 3
        row: dict[str, Any] = {
            "algorithm": name, "seeds": [r.seed for r in rs], "n": len(rs),
            "final_accuracy": f_mean, "final_accuracy_ci": [f_low, f_high], "final_accuracies": finals,
            "best_accuracy": max(curve.mean) if curve.mean else math.nan,
            "best_step": curve.steps[curve.mean.index(max(curve.mean))] if curve.mean else None,
            "steps_to_threshold": None, "time_to_threshold": None, "seed_steps_to_threshold": [],
            "train_seconds": w_mean, "train_seconds_ci": [w_low, w_high],
            "final_reward": r_mean, "final_reward_ci": [r_low, r_high],
            "samples": sum(r.axes()[r.last_step][0] for r in rs) / len(rs),
            "steps": max(r.last_step for r in rs),
        }
        if threshold is not None and curve.mean:
            step = _first_reaching(curve.steps, curve.mean, threshold)
            row["steps_to_threshold"] = step
            if step is not None:
                row["time_to_threshold"] = curve.x["time"][curve.steps.index(step)]
            for r in rs:
                acc = r.series("evals", "accuracy")
                row["seed_steps_to_threshold"].append(_first_reaching(list(acc), list(acc.values()), threshold))
        row["diagnostics"] = diagnostics(rs)
        rows.append(row)
    tests = []
    for a, b in itertools.combinations(rows, 2):
        fa, fb = a["final_accuracies"], b["final_accuracies"]
        if not fa or not fb:
            continue
        welch = welch_t_test(fa, fb)
        perm = permutation_test(fa, fb)
        by_seed_a = {r.seed: r.final_accuracy for r in groups[a["algorithm"]] if r.final_accuracy is not None}
        by_seed_b = {r.seed: r.final_accuracy for r in groups[b["algorithm"]] if r.final_accuracy is not None}
        paired = None
        if set(by_seed_a) == set(by_seed_b) and len(by_seed_a) >= 2:
            seeds = sorted(by_seed_a)
            paired = paired_t_test([by_seed_a[s] for s in seeds], [by_seed_b[s] for s in seeds])
        tests.append({
            "a": a["algorithm"], "b": b["algorithm"], "diff": sum(fa) / len(fa) - sum(fb) / len(fb),
            "welch_t": welch.statistic, "welch_df": welch.df, "welch_p": welch.p_value, "welch_note": welch.note,
            "paired_t": paired.statistic if paired else None, "paired_p": paired.p_value if paired else None,
            "paired_note": paired.note if paired else "seeds differ" if set(by_seed_a) != set(by_seed_b) else "",
            "permutation_p": perm.p_value, "permutation_note": perm.note,
        })
    rank = {name: i for i, name in enumerate([*names, *(order or [])])}
    run_rows = [{"algorithm": r.algorithm, "seed": r.seed, "complete": r.complete, "steps": r.last_step,
                 "max_steps": r.max_steps, "final_accuracy": r.final_accuracy, "train_seconds": r.train_seconds,
                 "run_wall_seconds": (r.done or {}).get("wall_s"), "run_dir": str(r.run_dir)}
                for r in sorted(runs, key=lambda r: (rank.get(r.algorithm, len(rank)), r.algorithm, r.seed))]
    specs = {}
    for name in names:
        config = groups[name][0].config.get("algorithm") or {}
        objective, advantage = dict(config.get("objective") or {}), dict(config.get("advantage") or {})
        specs[name] = {"description": groups[name][0].spec.get("description", ""),
                       "objective": objective.pop("name", None), "objective_options": objective,
                       "advantage": advantage.pop("name", None), "advantage_options": advantage,
                       **{k: config.get(k) for k in ("num_iterations", "num_minibatches")}}
    return {"threshold": threshold, "threshold_note": threshold_note, "initial_accuracy": initial,
            "rows": rows, "tests": tests, "runs": run_rows, "algorithms": specs}


# ---------------------------------------------------------------------- plots


def plot_figures(runs: list[RunData], plots_dir: Path, order: list[str]) -> list[tuple[FigureSpec, Path]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir.mkdir(parents=True, exist_ok=True)
    groups = group([r for r in runs if r.complete])
    names = [n for n in order if n in groups]
    colors = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(names)}
    window = smoothing_window([r for rs in groups.values() for r in rs])
    written = []
    for spec in FIGURES:
        keys = [k for k in spec.keys if any(r.series(spec.source, k) for rs in groups.values() for r in rs)]
        if not keys:
            continue
        panels = [(k, ax) for k in keys for ax in spec.axes]
        cols = len(panels)
        fig, axs = plt.subplots(1, cols, figsize=(5.2 * cols, 4.0), squeeze=False)
        smooth = window if spec.smooth else 1
        for axis_obj, (key, x_name) in zip(axs[0], panels, strict=True):
            for name in names:
                rs = [r for r in groups[name] if r.series(spec.source, key)]
                if not rs:
                    continue
                curve = aggregate(rs, lambda r, k=key, src=spec.source, w=smooth: r.series(src, k, w))
                xs = curve.x[x_name]
                marker = "o" if spec.source == "evals" and len(xs) <= 30 else None
                axis_obj.plot(xs, curve.mean, color=colors[name], marker=marker, markersize=4,
                              label=f"{name} (n={len(rs)})")
                if max(curve.n) > 1:
                    low, high = curve.low, curve.high
                    if spec.bounds is not None:
                        low = [min(max(v, spec.bounds[0]), spec.bounds[1]) for v in low]
                        high = [min(max(v, spec.bounds[0]), spec.bounds[1]) for v in high]
                    axis_obj.fill_between(xs, low, high, color=colors[name], alpha=0.15, linewidth=0)
            axis_obj.set_xlabel(AXES[x_name])
            axis_obj.set_ylabel(key)
            axis_obj.grid(alpha=0.3)
            axis_obj.set_title(key if len(spec.axes) == 1 else f"{key} vs {x_name}", fontsize=10)
        axs[0][0].legend(fontsize=8)
        note = f"; moving average over {smooth} steps" if smooth > 1 else ""
        if spec.bounds is not None:
            note += f"; band clipped to [{spec.bounds[0]:g}, {spec.bounds[1]:g}]"
        fig.suptitle(f"{spec.title}: mean over seeds, band = 95% t-interval{note}", fontsize=11)
        fig.tight_layout()
        path = plots_dir / f"{spec.name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append((spec, path))
    return written


# ---------------------------------------------------------------------- markdown


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}"


def _ci(mean: float, ci: list[float], n: int, digits: int = 3) -> str:
    if not _finite(mean):
        return "—"
    if n < 2 or not _finite(ci[1]):
        return f"{mean:.{digits}f} (n=1)"
    return f"{mean:.{digits}f} ± {ci[1] - mean:.{digits}f}"


def _p(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def table_lines(summary: dict[str, Any]) -> list[str]:
    """The results table (markdown lines); the same runs always give the same lines."""
    thr = summary["threshold"]
    thr_label = f"steps to {thr:.3f}" if thr is not None else "steps to threshold"
    lines = [
        f"| algorithm | seeds | final accuracy (mean ± 95% CI) | best mean accuracy (step) | {thr_label} "
        "(mean curve) | per seed | time to threshold (s) | training time (s) | final reward |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary["rows"]:
        per_seed = ", ".join("—" if s is None else str(s) for s in row["seed_steps_to_threshold"]) or "—"
        best = f"{_num(row['best_accuracy'])} ({row['best_step']})" if row["best_step"] is not None else "—"
        lines.append(
            f"| {row['algorithm']} | {','.join(map(str, row['seeds']))} | "
            f"{_ci(row['final_accuracy'], row['final_accuracy_ci'], row['n'])} | {best} | "
            f"{'—' if row['steps_to_threshold'] is None else row['steps_to_threshold']} | {per_seed} | "
            f"{_num(row['time_to_threshold'], 0)} | "
            f"{_ci(row['train_seconds'], row['train_seconds_ci'], row['n'], 0)} | "
            f"{_ci(row['final_reward'], row['final_reward_ci'], row['n'])} |"
        )
    return lines


def render_markdown(summary: dict[str, Any], figures: list[tuple[FigureSpec, Path]], out_dir: Path,
                    meta: dict[str, Any]) -> str:
    rows = summary["rows"]
    n_seeds = max((r["n"] for r in rows), default=0)
    lines = ["# Comparison report", ""]
    if meta.get("base_config"):
        lines.append(f"Base config: `{meta['base_config']}`" + (f"; overrides: `{' '.join(meta['overrides'])}`"
                                                                 if meta.get("overrides") else ""))
    lines += [
        f"Algorithms: {', '.join(r['algorithm'] for r in rows) or '—'}; "
        f"{len([r for r in summary['runs'] if r['complete']])} complete runs"
        f" of {len(summary['runs'])}. Generated {_dt.datetime.now().isoformat(timespec='seconds')}.",
        "",
        "## Results",
        "",
        *table_lines(summary),
        "",
        "- **final accuracy**: greedy held-out accuracy at the last evaluation of each run; mean over seeds ± the "
        "half-width of the 95% Student-t interval (t_{0.975, n−1}·s/√n).",
        "- **best mean accuracy**: the maximum over evaluation steps of the seed-mean accuracy curve.",
        f"- **threshold**: {summary['threshold_note']}. *Steps to threshold* is the first evaluation step at "
        "which the seed-mean curve reaches it (per seed: each run's own curve; — = never); *time to threshold* is "
        "the seed-mean training wall time at that step.",
        "- **training time**: wall time of rollout + optimisation summed over steps (`time_step`; evaluation, model "
        "loading and checkpointing excluded); **final reward**: mean training reward over the last 10% of steps.",
        "",
        "## Significance of the final-accuracy differences",
        "",
    ]
    if summary["tests"]:
        lines += ["| A | B | mean A − B | Welch t-test p | paired t-test p (same seeds) | permutation test p |",
                  "|---|---|---|---|---|---|"]
        for t in summary["tests"]:
            welch = _p(t["welch_p"]) + (f" ({t['welch_note']})" if t["welch_note"] else "")
            paired = _p(t["paired_p"]) + (f" ({t['paired_note']})" if t["paired_note"] else "")
            lines.append(f"| {t['a']} | {t['b']} | {t['diff']:+.3f} | {welch} | {paired} | "
                         f"{_p(t['permutation_p'])} ({t['permutation_note']}) |")
        lines += [
            "",
            "Two-sided p-values, no correction for the number of pairs. The Welch test does not assume equal "
            "variances; the paired test pairs runs by seed (same seed = same data order and initial sampling, "
            "so the pairing removes shared seed effects); the permutation test is exact over all relabellings "
            "of the runs between the two algorithms.",
            f"With {n_seeds} seed(s) per algorithm the power is low: only large differences can reach p < 0.05, "
            "a large p-value is not evidence of equal performance, and with "
            f"{n_seeds} vs {n_seeds} runs the smallest possible permutation p-value is "
            f"{2 / math.comb(2 * n_seeds, n_seeds) if n_seeds else math.nan:.3g}. The t-tests also assume roughly "
            "normal final accuracies; ties and zero variances (common with few evaluation prompts) make them "
            "undefined (—).",
        ]
    else:
        lines.append("Not available: the tests need at least two algorithms with held-out accuracy.")
    if rows and any(v is not None for row in rows for v in row.get("diagnostics", {}).values()):
        lines += ["", "## Diagnostics", "",
                  "Over every training step of every seed: clip fractions averaged, extremes over all steps, "
                  "the gradient norm before clipping. `log w` is the trajectory log-ratio log P_θ(o|q)/P_old(o|q) "
                  "(trajectory-ratio objectives), `token ratio` π_θ/π_old (token-level objectives); — = not logged.",
                  "", "| algorithm | " + " | ".join(c for c, _, _ in DIAGNOSTICS) + " |",
                  "|---|" + "---|" * len(DIAGNOSTICS)]
        for row in rows:
            d = row.get("diagnostics", {})
            cells = ["—" if d.get(k) is None else f"{d[k]:.4g}" for _, k, _ in DIAGNOSTICS]
            lines.append(f"| {row['algorithm']} | " + " | ".join(cells) + " |")
    lines += ["", "## Plots", ""]
    for spec, path in figures:
        rel = os.path.relpath(path, out_dir)
        lines += [f"### {spec.title}", "", f"![{spec.name}]({rel})", ""]
    lines += [
        "Curves: mean over seeds; the band is the 95% t-interval (no band with one seed). Samples = completions "
        "generated; wall time = cumulative training time (seed mean at each step). Training metrics are objective "
        "diagnostics averaged over the optimizer steps of a training step: `log_w` (trajectory log-ratio) exists "
        "only for `tic_grpo`, `ratio` (token ratio) only for token-level objectives, `kl` only with β > 0.",
        "",
        "## Algorithms",
        "",
        "| algorithm | objective | advantage | objective_options | advantage_options | μ, M | description |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, spec in summary["algorithms"].items():
        adv = spec["advantage"] if spec["advantage"] is not None else "(objective default)"
        lines.append(f"| {name} | {spec['objective']} | {adv} | `{json.dumps(spec['objective_options'] or {})}` | "
                     f"`{json.dumps(spec['advantage_options'] or {})}` | {spec['num_iterations']}, "
                     f"{spec['num_minibatches']} | {spec['description']} |")
    lines += ["", "## Runs", "", "| algorithm | seed | status | steps | final accuracy | training time (s) | folder |",
              "|---|---|---|---|---|---|---|"]
    for r in summary["runs"]:
        status = "complete" if r["complete"] else "incomplete (not in the tables)"
        rel = os.path.relpath(r["run_dir"], out_dir)
        lines.append(f"| {r['algorithm']} | {r['seed']} | {status} | {r['steps']}/{r['max_steps']} | "
                     f"{_num(r['final_accuracy'])} | {_num(r['train_seconds'], 0)} | `{rel}` |")
    return "\n".join(lines) + "\n"


def comparison_meta(runs: list[RunData], out_dir: Path) -> dict[str, Any]:
    """What `ticgrpo compare` recorded (comparison.json) in out_dir or above the run folders; {} if none."""
    candidates = [out_dir] + [p for r in runs for p in list(r.run_dir.parents)[:3]]
    for folder in dict.fromkeys(candidates):
        if (folder / COMPARISON_FILE).is_file():
            return _read_json(folder / COMPARISON_FILE)
    return {}


def build_report(
    runs: list[RunData],
    out_dir: str | Path,
    threshold: float | None = None,
    order: list[str] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write out_dir/report.md, out_dir/summary.json and out_dir/plots/*.png; returns report.md's path."""
    if not runs:
        raise ValueError("no runs to report on")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {}) or comparison_meta(runs, out_dir)
    order = list(order or meta.get("algorithms") or [])
    order += sorted({r.algorithm for r in runs} - set(order))
    summary = summarize(runs, threshold, order)
    figures = plot_figures(runs, out_dir / "plots", order)
    (out_dir / "summary.json").write_text(json.dumps(_clean(summary), indent=1, default=str) + "\n")
    path = out_dir / "report.md"
    path.write_text(render_markdown(summary, figures, out_dir, meta))
    return path


def _clean(value: Any) -> Any:
    """JSON-safe copy: non-finite floats → null, paths → strings."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


__all__ = ["FIGURES", "RunData", "aggregate", "build_report", "find_run_dirs", "load_run", "load_runs",
           "summarize", "table_lines"]
