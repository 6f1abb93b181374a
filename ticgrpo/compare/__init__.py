"""Comparisons: several algorithms × seeds on one task (`ticgrpo compare`), and their report
(`ticgrpo report`). See docs/compare.md."""

from ticgrpo.compare.report import build_report, load_runs
from ticgrpo.compare.runner import BUILTIN_ALGORITHMS, plan_comparison, resolve_algorithm, run_plan

__all__ = ["BUILTIN_ALGORITHMS", "build_report", "load_runs", "plan_comparison", "resolve_algorithm", "run_plan"]
