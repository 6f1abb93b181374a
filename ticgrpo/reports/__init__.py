"""Reports on training runs (plots of metrics.jsonl / eval.jsonl)."""

from ticgrpo.reports.plots import plot_curves, read_jsonl

__all__ = ["plot_curves", "read_jsonl"]
