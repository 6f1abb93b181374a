"""What the engine asks of a vLLM backend (in-process or over HTTP), and the sampling options
both understand: one JSON-able request per batch of token-id prompts."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from ticgrpo.rollout.base import SamplingParams

# One completion: (token ids, log-prob of each token).
Completion = tuple[list[int], list[float]]


class Backend(Protocol):
    def generate(self, prompt_ids: list[list[int]], n: int, options: dict[str, Any]) -> list[list[Completion]]:
        """``n`` completions for each token-id prompt, in prompt order."""
        ...

    def load_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> None:
        """Replace the served model's weights with these (HF name, tensor) pairs."""
        ...

    def close(self) -> None: ...


def request_options(params: SamplingParams, eos_token_ids: list[int]) -> dict[str, Any]:
    """The JSON-able sampling options shared by both backends (one request per prompt)."""
    if params.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {params.max_new_tokens}")
    if not params.greedy:
        if not params.temperature > 0:
            raise ValueError(f"temperature must be > 0 for sampling (use greedy=True), got {params.temperature}")
        if not 0 < params.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {params.top_p}")
        if params.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {params.top_k}")
    return {
        "max_tokens": int(params.max_new_tokens),
        "greedy": bool(params.greedy),
        "temperature": float(params.temperature),
        "top_p": float(params.top_p),
        "top_k": int(params.top_k),
        "stop_token_ids": [int(t) for t in eos_token_ids],
    }
