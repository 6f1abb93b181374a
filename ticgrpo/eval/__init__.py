"""Evaluation as the field reports it (docs/eval.md): `ticgrpo eval`, the metric registry
(`EVAL_METRICS`: greedy accuracy, avg@k, pass@k, maj@k, mean length, truncation rate) and the
standard math datasets (`BENCHMARKS`: gsm8k, math500, aime24, aime25, dapo17k, jsonl)."""

from ticgrpo.eval.datasets import BENCHMARKS, EvalRow, canonical_answer, load_eval_rows
from ticgrpo.eval.metrics import EVAL_METRICS, EvalMetricSpec, Outcomes, majority_answer, pass_at_k

__all__ = ["BENCHMARKS", "EVAL_METRICS", "EvalMetricSpec", "EvalRow", "Outcomes", "canonical_answer",
           "load_eval_rows", "majority_answer", "pass_at_k"]
