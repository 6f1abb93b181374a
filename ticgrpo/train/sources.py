"""Batch sources: where each training step's scored rollout batch comes from, and which policy
version sampled it.

    source = batch_source(config, sampling, engine, model, settings)
    collected = source.next_batch(stream, step)     # Collected; rollout.policy_version set per row
    ...optimizer step...
    source.after_update(model, step + 1)            # the weights of version step + 1 are current

    SynchronousSource   rollout.lag: 0 — the batch of step t is sampled by θ_t (the classic loop)
    LaggedSource        rollout.lag: k — the batch of step t is sampled by exactly θ_{t−k} (θ_0 for
                        t < k): k sampled batches wait in a queue, no copy of the model is kept
    AsyncSource         rollout.mode: async — a producer samples ahead (ticgrpo.train.async_source)

A policy version is the number of optimizer-step rounds (training steps) the weights have taken:
the initial weights are version 0, the weights after training step t are version t + 1. The
staleness of a row used at step t is t − its version (`staleness_metrics`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol

import torch

from ticgrpo.rewards.scoring import RewardFailure, ScoredRollout
from ticgrpo.rollout import RolloutBatch
from ticgrpo.train.prompts import PromptStream
from ticgrpo.train.sampling import Collected, PlainSampling
from ticgrpo.train.step import StepSettings, TrainingBatch, fixed_logprobs

if TYPE_CHECKING:
    from ticgrpo.config import TrainConfig


class WeightSink(Protocol):
    def update_weights(self, model: object, version: int | None = None) -> None: ...


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

    def prepare_eval(self, model: Any, version: int) -> None:
        """Before a held-out evaluation with the trainer's engine: make it sample from the
        current weights."""
        ...

    def close(self) -> None: ...


def batch_source(config: TrainConfig, sampling: PlainSampling, engine: Any, model: Any,
                 settings: StepSettings) -> BatchSource:
    """The source the config asks for: async (a producer beside the trainer), lagged (rollout.lag
    k >= 1), the synchronous loop pooled over the last ω versions (algorithm.reuse_window,
    ticgrpo.train.reuse) or the classic synchronous loop."""
    r = config.rollout
    if r.mode == "async":
        from ticgrpo.train.async_source import async_source  # the producer machinery, only when asked

        return async_source(config, sampling, engine, model, settings)
    if r.lag:
        return LaggedSource(sampling, engine, model, settings, r.lag, config.algorithm.mask_truncated)
    if config.algorithm.reuse_window > 1:
        from ticgrpo.train.reuse import ReusingSource  # it builds on this module

        return ReusingSource(SynchronousSource(sampling, engine), model, settings, config.algorithm.reuse_window,
                             engine.pad_token_id, config.algorithm.mask_truncated)
    return SynchronousSource(sampling, engine)


def tag_version(collected: Collected, version: int) -> Collected:
    """Record on every row of the batch the policy version that sampled it."""
    rollout = collected.batch.rollout
    rollout.policy_version = torch.full((len(rollout),), version, dtype=torch.long)
    return collected


def staleness_metrics(policy_version: torch.Tensor | None, step: int) -> dict[str, float]:
    """staleness_mean/max and staleness/hist_{k} (rows sampled exactly k versions before `step`,
    for every k from 0 to the largest, zeros included, so that a run's columns do not come and go),
    plus stale_dropped 0: these rows were all used (a source that drops rows reports its count in
    its Collected metrics, which the trainer merges after these)."""
    if policy_version is None:
        raise ValueError(f"step {step}: the batch source did not tag the rows with the policy version that sampled "
                         f"them (RolloutBatch.policy_version; see tag_version)")
    staleness = step - policy_version.detach().cpu().long()
    if bool((staleness < 0).any()):
        raise ValueError(f"step {step}: a row was tagged with policy version {int(policy_version.max())}, newer "
                         f"than the weights of this step")
    counts = torch.bincount(staleness, minlength=1)
    return {
        "staleness_mean": float(staleness.double().mean()) if len(staleness) else 0.0,
        "staleness_max": float(staleness.max()) if len(staleness) else 0.0,
        **{f"staleness/hist_{k}": float(n) for k, n in enumerate(counts.tolist())},
        "stale_dropped": 0.0,
    }


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

    def prepare_eval(self, model: Any, version: int) -> None:
        """Nothing to do: the engine got the current weights after the last optimizer step."""

    def close(self) -> None:
        """Nothing of its own to release (the trainer closes the engine)."""


@dataclass
class LaggedSource:
    """rollout.lag: k — the batch of step t is sampled by exactly θ_{t−k} (θ_0 for t < k).

    No copy of the model is kept: at step 0 the batches of steps 0..k are sampled with θ_0; at a
    later step t (the weights are θ_t) the batch of step t + k is sampled, and the batch of step t
    leaves the queue. Each batch is sampled under the step it is for (the prompts and seeds of
    step t's batch are the same for every k), scored at once, tagged with the version that sampled
    it and given `sampler_logprobs`: the trainer's log-probs under those weights, which are gone by
    the time the batch is used. At k = 0 this is the classic loop (plus that recompute)."""

    sampling: PlainSampling
    engine: WeightSink
    model: Any
    settings: StepSettings
    lag: int
    mask_truncated: bool = False
    version: int = 0  # the policy version of the weights the model (and the engine) hold now
    next_step: int = 0  # the step whose batch is sampled next
    pending: dict[int, Collected] = field(default_factory=dict)  # step → its sampled batch

    def next_batch(self, stream: PromptStream, step: int) -> Collected:
        # a resumed run whose checkpoint held no queue (it ran without lag) starts filling at `step`
        for ahead in range(max(self.next_step, step), step + self.lag + 1):
            self.pending[ahead] = self._sample(stream, ahead)
            self.next_step = ahead + 1
        if step not in self.pending:
            raise RuntimeError(f"LaggedSource: no batch was sampled for step {step} (queued: {sorted(self.pending)}); "
                               f"the trainer must ask for the steps in order")
        return self.pending.pop(step)

    def _sample(self, stream: PromptStream, step: int) -> Collected:
        collected = tag_version(self.sampling.collect(stream, step), self.version)
        rollout = collected.batch.rollout
        start = time.perf_counter()
        # built as the trainer builds it (same mask), so that at k = 0 these are its own old log-probs bit for bit
        batch = TrainingBatch.from_rollout(rollout, torch.zeros(len(rollout)), self.mask_truncated)
        rollout.sampler_logprobs = fixed_logprobs(self.model, batch, self.settings)
        collected.times["sampler_logprobs"] = time.perf_counter() - start
        return collected

    def after_update(self, model: Any, version: int) -> None:
        self.version = version
        self.engine.update_weights(model)  # the next batch is sampled by these weights

    def stream_state(self, stream: PromptStream) -> dict[str, Any]:
        return stream.state()  # past the queued batches' prompts, which the checkpoint holds

    def state(self) -> dict[str, Any]:
        return {"version": self.version, "next_step": self.next_step,
                "pending": [{"step": s, **collected_state(c)} for s, c in sorted(self.pending.items())]}

    def load_state(self, state: dict[str, Any], model: Any) -> None:
        if state:
            device = next(model.parameters()).device
            self.version, self.next_step = int(state["version"]), int(state["next_step"])
            self.pending = {int(entry["step"]): collected_from_state(entry, device) for entry in state["pending"]}
        self.engine.update_weights(model)  # an inference engine still holds the initial weights

    def prepare_eval(self, model: Any, version: int) -> None:
        """Nothing to do: the engine got the current weights after the last optimizer step."""

    def close(self) -> None:
        self.pending.clear()


# ---------------------------------------------------------------------- a queued batch in a checkpoint
# Only tensors, strings, numbers, lists and dicts, so that the file loads with torch.load(weights_only=True);
# the dataset rows (arbitrary JSON) travel as JSON text.

_ROLLOUT_TEXTS = ("prompts", "completions")
_ROLLOUT_RECORDS = ("episodes",)  # multi-turn episodes' records, as JSON text


def collected_state(collected: Collected) -> dict[str, Any]:
    """A Collected as plain values: the rollout's tensors (on the CPU; `on_device` names those that
    lived on the model's device), texts, rows, rewards, per-function rewards, times, metrics and
    reward failures."""
    scored = collected.batch
    rollout = scored.rollout
    tensors = {f.name: getattr(rollout, f.name) for f in fields(rollout)
               if f.name not in _ROLLOUT_TEXTS + _ROLLOUT_RECORDS}
    present = {name: t for name, t in tensors.items() if t is not None}
    return {
        "rollout": {name: t.detach().cpu() for name, t in present.items()},
        "on_device": sorted(name for name, t in present.items() if t.device.type != "cpu"),
        "texts": {name: list(getattr(rollout, name)) for name in _ROLLOUT_TEXTS},
        "episodes": None if rollout.episodes is None else json.dumps([e.to_json() for e in rollout.episodes]),
        "rows": json.dumps(scored.rows),
        "rewards": scored.rewards.detach().cpu(),
        "per_function": {name: [float(v) for v in values] for name, values in scored.per_function.items()},
        "num_samples": scored.num_samples,
        "times": dict(collected.times),
        "metrics": dict(collected.metrics),
        "errors": [[e.sample, e.message] for e in collected.errors],
    }


def collected_from_state(state: dict[str, Any], device: torch.device) -> Collected:
    """The inverse of `collected_state`; tensors that lived on an accelerator go to `device`."""
    on_device = set(state["on_device"])
    tensors = {name: t.to(device) if name in on_device else t for name, t in state["rollout"].items()}
    texts = state["texts"]
    episodes = None
    if state.get("episodes") is not None:
        from ticgrpo.rollout.episodes import Episode

        episodes = [Episode(**record) for record in json.loads(state["episodes"])]
    rollout = RolloutBatch(**tensors, prompts=list(texts["prompts"]), completions=list(texts["completions"]),
                           episodes=episodes)
    scored = ScoredRollout(rollout, json.loads(state["rows"]), state["rewards"],
                           {name: list(v) for name, v in state["per_function"].items()}, int(state["num_samples"]))
    errors = [RewardFailure(int(sample), str(message)) for sample, message in state["errors"]]
    return Collected(scored, dict(state["times"]), dict(state["metrics"]), errors)


__all__ = [
    "BatchSource", "LaggedSource", "SynchronousSource", "batch_source", "collected_from_state", "collected_state",
    "staleness_metrics", "tag_version",
]
