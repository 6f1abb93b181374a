"""What the engine asks of a vLLM backend (in-process or over HTTP), and the sampling options
both understand: one JSON-able request per batch of token-id prompts."""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import torch

from ticgrpo.rollout.base import SamplingParams

# One completion: (token ids, log-prob of each token).
Completion = tuple[list[int], list[float]]


class Generation(NamedTuple):
    """What one generate call returns: the completions and the version of the weights that
    produced all of them (the backend serialises generates and weight loads)."""

    completions: list[list[Completion]]  # n per prompt, in prompt order
    weight_version: int


class Backend(Protocol):
    def generate(self, prompt_ids: list[list[int]], n: int, options: dict[str, Any]) -> Generation:
        """``n`` completions for each token-id prompt, in prompt order."""
        ...

    def load_weights(self, named_tensors: list[tuple[str, torch.Tensor]], version: int | None = None) -> int:
        """Replace the served model's weights with these (HF name, tensor) pairs; they become
        ``version`` (None: one more than the current). Returns the new version."""
        ...

    def close(self) -> None: ...


def next_version(current: int, requested: int | None) -> int:
    """The version weights take when loaded: the trainer's (its optimizer steps) when it names one,
    else one more than the current (a version-less update, as the synchronous loop sends)."""
    return current + 1 if requested is None else requested


SEED_LIMIT = 2**62  # vLLM's per-request seeds (torch generators): room for the per-sample offsets


def request_options(params: SamplingParams, eos_token_ids: list[int], seed: int | None = None) -> dict[str, Any]:
    """The JSON-able sampling options shared by both backends (one request per prompt).

    seed: None = the engine's own sampling stream; else prompt k's j-th completion is drawn by a
    generator seeded with seed + k·n + j, so the samples depend only on the request and the
    weights (an asynchronous producer seeds its jobs so)."""
    if seed is not None and not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seed must be in [0, 2^62), got {seed}")
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
        "seed": None if seed is None else int(seed),
    }
