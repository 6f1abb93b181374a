"""Comparisons: several algorithms × seeds on one task (`ticgrpo compare`), and their report
(`ticgrpo report`). See docs/compare.md."""

from ticgrpo.compare.execute import run_plan
from ticgrpo.compare.plan import plan_comparison, resolve_algorithm
from ticgrpo.compare.report import build_report, load_runs

__all__ = ["build_report", "load_runs", "plan_comparison", "resolve_algorithm", "run_plan"]
