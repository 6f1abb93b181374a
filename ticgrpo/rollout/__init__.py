"""Rollout engines: prompts → G completions each, with masks and truncation flags."""

from ticgrpo.rollout.base import (
    RolloutBatch,
    RolloutEngine,
    SamplingParams,
    completion_mask_from_eos,
    concat_rollouts,
)
from ticgrpo.rollout.hf import HFGenerateEngine
from ticgrpo.rollout.vllm import VLLMEngine  # imports vllm lazily, on construction

__all__ = [
    "HFGenerateEngine",
    "RolloutBatch",
    "RolloutEngine",
    "SamplingParams",
    "VLLMEngine",
    "completion_mask_from_eos",
    "concat_rollouts",
]
