"""Held-out evaluation: greedy accuracy (and sampled mean@k) on held-out prompts.

A completion is correct when the eval reward (scored by a `ticgrpo.rewards.scoring.Scorer`,
as training scores) is at least `correct_threshold` (by default `math_correctness` >= 1).
"""

from __future__ import annotations

import math

import torch

from ticgrpo.rewards.scoring import Scorer
from ticgrpo.rollout.base import RolloutEngine, SamplingParams


def evaluate(
    engine: RolloutEngine,
    rows: list[dict],
    prompt_texts: list[str],
    scorer: Scorer,
    max_new_tokens: int,
    batch_size: int = 32,
    correct_threshold: float = 1.0,
    mean_at_k: int = 0,
    temperature: float = 1.0,
) -> dict[str, float]:
    """Greedy accuracy (and mean@k of k samples at `temperature`) on held-out `rows`.

    Runs under a forked RNG so evaluating never changes the training trajectory.
    """
    if not rows:
        return {}
    correct, rewards, lengths, truncated = [], [], [], []
    sampled_correct: list[float] = []
    with torch.random.fork_rng(devices=_cuda_devices()):
        for s in range(0, len(rows), batch_size):
            chunk_rows, chunk_texts = rows[s : s + batch_size], prompt_texts[s : s + batch_size]
            greedy = engine.generate(chunk_texts, 1, SamplingParams(max_new_tokens=max_new_tokens, greedy=True))
            scored = scorer.score(greedy, chunk_rows, 1).batch
            rewards += scored.rewards.tolist()
            correct += [float(r >= correct_threshold) for r in scored.rewards.tolist()]
            lengths += greedy.completion_lengths.tolist()
            truncated += greedy.truncated.float().tolist()
            if mean_at_k > 0:
                params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
                sampled = engine.generate(chunk_texts, mean_at_k, params)
                scored = scorer.score(sampled, chunk_rows, mean_at_k).batch
                sampled_correct += [float(r >= correct_threshold) for r in scored.rewards.tolist()]
    out = {
        "accuracy": _mean(correct),
        "reward_mean": _mean(rewards),
        "completion_length_mean": _mean(lengths),
        "truncated_frac": _mean(truncated),
        "num_examples": float(len(rows)),
    }
    if mean_at_k > 0:
        out[f"mean_at_{mean_at_k}"] = _mean(sampled_correct)
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
