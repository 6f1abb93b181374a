"""The comparison report: report.md, summary.json and one PNG per quantity, from run folders.

    runs = load_runs(["runs/ablation"])            # comparison folders or run folders
    build_report(runs, "runs/ablation")             # → report.md, summary.json, plots/*.png

Runs are grouped by algorithm; curves show the mean over seeds and a 95% Student-t interval.
Only complete runs (done marker, or as many steps as max_steps) enter the tables and curves;
incomplete ones are listed. The stages: `runs` (loading), `summary` (the numbers, with the
tests of `stats`), `plots`, `markdown`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ticgrpo.reports.io import json_safe
from ticgrpo.reports.markdown import render_markdown
from ticgrpo.reports.plots import plot_figures
from ticgrpo.reports.runs import RunData, comparison_meta
from ticgrpo.reports.summary import summarize


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
    (out_dir / "summary.json").write_text(json.dumps(json_safe(summary), indent=1, default=str) + "\n")
    path = out_dir / "report.md"
    path.write_text(render_markdown(summary, figures, out_dir, meta))
    return path


__all__ = ["build_report"]
