"""Held-out evaluation during training: the `ticgrpo eval` runner, judged by the run's eval reward.

    settings = eval_settings(config, max_new_tokens)
    records = evaluate(engine, rows, prompt_texts, ScorerJudge(scorer, threshold), settings)
    summary = summarize(records, settings)           # what evals/step-N/eval.json holds
    record = eval_log_record(records, summary, settings, config.eval.metrics)   # one eval.jsonl line

A completion is correct when its eval reward (scored by a `ticgrpo.rewards.scoring.Scorer`, as
training scores; by default `math_correctness`) is at least `eval.correct_threshold`.
Generation, metrics and intervals are `ticgrpo.eval.runner`'s, seeded with the run's seed at
every evaluation (the same samples' randomness at every step: differences between steps come
from the weights), so `ticgrpo eval --model RUN/final --seed SEED` with the same settings
reproduces the numbers of the run's last evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ticgrpo.config import TrainConfig
from ticgrpo.eval.datasets import EvalRow, eval_rows_from_records
from ticgrpo.eval.metrics import metric_names
from ticgrpo.eval.runner import EvalSettings, ProblemRecord, Verdict, final_answer, generate_and_judge
from ticgrpo.rewards.scoring import Scorer
from ticgrpo.rollout.base import RolloutBatch, RolloutEngine


@dataclass(frozen=True)
class ScorerJudge:
    """Judges completions by a reward: correct when reward >= correct_threshold. The extracted
    final answer is still recorded, for maj@k and the answer distributions."""

    scorer: Scorer
    correct_threshold: float

    def __call__(self, batch: RolloutBatch, rows: Sequence[EvalRow], per_prompt: int) -> list[Verdict]:
        records = [row.record if row.record is not None else {"prompt": row.prompt} for row in rows]
        rewards = self.scorer.score(batch, records, per_prompt).batch.rewards.tolist()
        return [Verdict(final_answer(text), reward >= self.correct_threshold, float(reward))
                for text, reward in zip(batch.completions, rewards, strict=True)]


def eval_settings(config: TrainConfig, max_new_tokens: int) -> EvalSettings:
    """The runner's settings of a run's held-out evaluation (eval.*, rollout.temperature/top_p)."""
    e = config.eval
    return EvalSettings(ks=tuple(e.ks), temperature=e.temperature or config.rollout.temperature,
                        top_p=config.rollout.top_p, max_new_tokens=max_new_tokens, greedy=True,
                        batch_size=e.batch_size, seed=config.seed)


def evaluate(engine: RolloutEngine, rows: Sequence[dict], prompt_texts: Sequence[str], judge: ScorerJudge,
             settings: EvalSettings) -> list[ProblemRecord]:
    """One `ProblemRecord` per held-out row (ticgrpo's data form): a greedy completion and
    max(eval.ks) samples."""
    return generate_and_judge(engine, eval_rows_from_records(list(rows)), prompt_texts, settings, judge)


def eval_log_record(records: Sequence[ProblemRecord], summary: dict, settings: EvalSettings,
                    metrics: Sequence[str]) -> dict[str, float]:
    """The flat eval.jsonl record: the greedy completions' accuracy, reward_mean,
    completion_length_mean and truncated_frac, num_examples, the constant baseline, and the
    value of each metric named in `metrics` (registry names, reported per k: pass@k → pass@8);
    with multi-turn episodes also the greedy episodes' tool_call_rate, tool_calls_mean,
    tool_errors_mean and turns_mean."""
    greedy = [r.greedy for r in records if r.greedy is not None]
    out = {
        "accuracy": float(summary["metrics"]["greedy_accuracy"]["value"]),  # settings.greedy is always on here
        "reward_mean": _mean([float(c.reward) for c in greedy if c.reward is not None]),
        "completion_length_mean": _mean([float(c.length) for c in greedy]),  # the summary's mean_length
        "truncated_frac": _mean([float(c.truncated) for c in greedy]),  # and truncation_rate count the samples too
        "num_examples": float(summary["num_problems"]),
        "constant_baseline": float(summary["constant_baseline"]["score"]),
    }
    out.update(summary.get("episodes", {}).get("greedy", {}))
    for spec, k in metric_names(settings.ks, settings.num_samples):
        name = spec.reported_name(k)
        if spec.name in metrics and name in summary["metrics"]:
            out[name] = float(summary["metrics"][name]["value"])
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
