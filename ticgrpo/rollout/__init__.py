"""Rollout engines: prompts → G completions each, with masks and truncation flags."""

from ticgrpo.rollout.base import (
    RolloutBatch,
    RolloutEngine,
    SamplingParams,
    completion_mask_from_eos,
    concat_rollouts,
)
from ticgrpo.rollout.hf import HFGenerateEngine

__all__ = [
    "HFGenerateEngine",
    "RolloutBatch",
    "RolloutEngine",
    "SamplingParams",
    "completion_mask_from_eos",
    "concat_rollouts",
]
