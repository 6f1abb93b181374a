"""Markdown: the comparison report's text and tables (report.md), and the lab's tables."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from pathlib import Path
from typing import Any

from ticgrpo.reports.plots import FigureSpec
from ticgrpo.reports.runs import finite
from ticgrpo.reports.summary import diagnostic_columns
from ticgrpo.train.metrics import metric_spec


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table; floats are written with 4 significant digits."""

    def cell(x: Any) -> str:
        text = f"{x:.4g}" if isinstance(x, float) else str(x)
        return text.replace("|", "\\|")  # a literal | (as in 1/|o|) would split the cell

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}"


def _ci(mean: float, ci: list[float], n: int, digits: int = 3) -> str:
    if not finite(mean):
        return "—"
    if n < 2 or not finite(ci[1]):
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


def diagnostics_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The diagnostics section: one column per (metric, reduction over every step of every seed)."""
    columns = diagnostic_columns()
    lines = ["", "## Diagnostics", "",
             "Over every training step of every seed, each metric reduced as its column says (a step's value is "
             "already the reduction over that step's optimizer steps); — = not logged.", ""]
    lines += [f"- `{key}`: {metric_spec(key).description}" for key in dict.fromkeys(k for _, k in columns)]
    lines += ["", "| algorithm | " + " | ".join(c for c, _ in columns) + " |", "|---|" + "---|" * len(columns)]
    for row in rows:
        d = row.get("diagnostics", {})
        cells = ["—" if d.get(k) is None else f"{d[k]:.4g}" for _, k in columns]
        lines.append(f"| {row['algorithm']} | " + " | ".join(cells) + " |")
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
        lines += diagnostics_lines(rows)
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


__all__ = ["markdown_table", "render_markdown", "table_lines"]
