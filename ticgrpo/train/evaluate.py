"""Scoring rollouts with reward functions, and held-out evaluation.

`score_rollout` turns a rollout of prompt groups into rewards (through
`ticgrpo.rewards.combine_rewards`); `evaluate` measures greedy accuracy (and sampled
mean@k) on held-out prompts: a completion is correct when the eval reward is at least
`correct_threshold` (by default `math_correctness` >= 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ticgrpo.rewards import combine_rewards
from ticgrpo.rollout.base import RolloutBatch, RolloutEngine, SamplingParams, concat_rollouts

RewardSpecs = Sequence[tuple[str | Callable, float]]


@dataclass
class ScoredRollout:
    """A rollout of len(rows) prompt groups × G completions, with its rewards."""

    rollout: RolloutBatch
    rows: list[dict]  # one dataset row per prompt group
    rewards: Tensor  # [B] float32 (CPU)
    per_function: dict[str, list[float]]
    num_samples: int

    def group_rewards(self) -> Tensor:
        return self.rewards.view(len(self.rows), self.num_samples)

    def select_groups(self, groups: list[int]) -> ScoredRollout:
        g = self.num_samples
        idx = [k * g + j for k in groups for j in range(g)]
        sub = self.rollout.select(idx)
        sub.group_ids = torch.arange(len(groups), device=sub.group_ids.device).repeat_interleave(g)
        return ScoredRollout(
            rollout=sub,
            rows=[self.rows[k] for k in groups],
            rewards=self.rewards[idx],
            per_function={name: [v[i] for i in idx] for name, v in self.per_function.items()},
            num_samples=g,
        )


def concat_scored(parts: list[ScoredRollout], pad_token_id: int) -> ScoredRollout:
    if len(parts) == 1:
        return parts[0]
    names = parts[0].per_function
    return ScoredRollout(
        rollout=concat_rollouts([p.rollout for p in parts], pad_token_id),
        rows=[r for p in parts for r in p.rows],
        rewards=torch.cat([p.rewards for p in parts]),
        per_function={n: [v for p in parts for v in p.per_function[n]] for n in names},
        num_samples=parts[0].num_samples,
    )


# What the trainer passes every reward beyond prompts, completions, the dataset columns and reward_kwargs.
TRAINER_REWARD_ARGUMENTS = ("completion_lengths", "truncated", "max_new_tokens")


def dataset_columns(rows: list[dict]) -> list[str]:
    """The dataset columns a reward receives (every key of any row but "prompt"), in first-seen order."""
    return list(dict.fromkeys(key for row in rows for key in row if key != "prompt"))


def score_rollout(
    rollout: RolloutBatch,
    rows: list[dict],
    num_samples: int,
    reward_specs: RewardSpecs,
    max_new_tokens: int,
    reward_kwargs: dict | None = None,
) -> ScoredRollout:
    """Rewards of every completion. Each reward function is called with keyword arguments
    (`ticgrpo.rewards.call_reward`): prompts, completions and the dataset columns (all but
    "prompt") as lists aligned with the completions, plus completion_lengths, truncated,
    max_new_tokens and `reward_kwargs`."""
    expanded = [row for row in rows for _ in range(num_samples)]
    columns: dict[str, Any] = {key: [row.get(key) for row in expanded] for key in dataset_columns(rows)}
    trainer_values = (rollout.completion_lengths.tolist(), rollout.truncated.tolist(), max_new_tokens)
    columns.update(zip(TRAINER_REWARD_ARGUMENTS, trainer_values, strict=True))
    columns.update(reward_kwargs or {})
    prompts = [row["prompt"] for row in expanded]
    total, per_function = combine_rewards(list(reward_specs), prompts, rollout.completions, columns)
    return ScoredRollout(rollout, list(rows), torch.tensor(total, dtype=torch.float32), per_function, num_samples)


def evaluate(
    engine: RolloutEngine,
    rows: list[dict],
    prompt_texts: list[str],
    reward: str | Callable,
    max_new_tokens: int,
    batch_size: int = 32,
    correct_threshold: float = 1.0,
    mean_at_k: int = 0,
    temperature: float = 1.0,
    reward_kwargs: dict | None = None,
) -> dict[str, float]:
    """Greedy accuracy (and mean@k of k samples at `temperature`) on held-out `rows`.

    Runs under a forked RNG so evaluating never changes the training trajectory.
    """
    if not rows:
        return {}
    spec = [(reward, 1.0)]
    correct, rewards, lengths, truncated = [], [], [], []
    sampled_correct: list[float] = []
    with torch.random.fork_rng(devices=_cuda_devices()):
        for s in range(0, len(rows), batch_size):
            chunk_rows, chunk_texts = rows[s : s + batch_size], prompt_texts[s : s + batch_size]
            greedy = engine.generate(chunk_texts, 1, SamplingParams(max_new_tokens=max_new_tokens, greedy=True))
            scored = score_rollout(greedy, chunk_rows, 1, spec, max_new_tokens, reward_kwargs)
            rewards += scored.rewards.tolist()
            correct += [float(r >= correct_threshold) for r in scored.rewards.tolist()]
            lengths += greedy.completion_lengths.tolist()
            truncated += greedy.truncated.float().tolist()
            if mean_at_k > 0:
                params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
                sampled = engine.generate(chunk_texts, mean_at_k, params)
                scored = score_rollout(sampled, chunk_rows, mean_at_k, spec, max_new_tokens, reward_kwargs)
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
