"""Batch sources: where each training step's scored rollout batch comes from, and which policy
version sampled it.

    source = batch_source(config, sampling, engine, ...)
    collected = source.next_batch(stream, step)     # Collected; rollout.policy_version set per row
    ...optimizer step...
    source.after_update(model, step + 1)            # the weights of version step + 1 are current

    SynchronousSource   rollout.lag: 0 — the batch of step t is sampled by θ_t (the classic loop)

A policy version is the number of optimizer-step rounds (training steps) the weights have taken:
the initial weights are version 0, the weights after training step t are version t + 1. The
staleness of a row used at step t is t − its version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ticgrpo.train.prompts import PromptStream
from ticgrpo.train.sampling import Collected, PlainSampling


class WeightSink(Protocol):
    def update_weights(self, model: object) -> None: ...


class BatchSource(Protocol):
    """What the trainer asks of a source; `state`/`load_state` carry what a resumed run needs
    (a lagged source's queued batches) inside the checkpoint."""

    def next_batch(self, stream: PromptStream, step: int) -> Collected: ...

    def after_update(self, model: Any, version: int) -> None: ...

    def stream_state(self, stream: PromptStream) -> dict[str, Any]:
        """The prompt stream's position a resumed run restarts from (an async source's stream runs
        ahead of the batches the trainer has consumed)."""
        ...

    def state(self) -> dict[str, Any]: ...

    def load_state(self, state: dict[str, Any], model: Any) -> None: ...

    def close(self) -> None: ...


def tag_version(collected: Collected, version: int) -> Collected:
    """Record on every row of the batch the policy version that sampled it."""
    rollout = collected.batch.rollout
    rollout.policy_version = torch.full((len(rollout),), version, dtype=torch.long)
    return collected


@dataclass
class SynchronousSource:
    """rollout.lag: 0 — step t samples with the current weights θ_t; the engine gets the new
    weights after every optimizer step (a no-op for the HF engine, which samples from the
    training model itself)."""

    sampling: PlainSampling
    engine: WeightSink

    def next_batch(self, stream: PromptStream, step: int) -> Collected:
        return tag_version(self.sampling.collect(stream, step), step)

    def after_update(self, model: Any, version: int) -> None:
        self.engine.update_weights(model)

    def stream_state(self, stream: PromptStream) -> dict[str, Any]:
        return stream.state()

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any], model: Any) -> None:
        self.engine.update_weights(model)  # an inference engine still holds the initial weights

    def close(self) -> None:
        """Nothing of its own to release (the trainer closes the engine)."""


__all__ = ["BatchSource", "SynchronousSource", "tag_version"]
