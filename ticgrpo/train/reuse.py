"""`algorithm.reuse_window: ω` — train each step on the batches of the last ω policy versions (RT-PG).

    source = ReusingSource(SynchronousSource(...), model, settings, window=ω)
    collected = source.next_batch(stream, t)   # the pool: the new batch (θ_t) first, then θ_{t−1}, ...

At step t the pool holds the new batch, sampled by θ_t, and the stored batches of versions
t−1..t−ω+1 (fewer in the first ω−1 steps). Every pooled row o carries

    sampler_logprobs   its token log-probs under the version that sampled it (π_old of the bypass)
    mixture_logprobs   log q(o) = logsumexp_j (log(n_j/N) + log P_θj(o)) over the pool's versions j,
                       n_j its rows of version j, N the pool's rows (the balance heuristic's density)

so that `trajectory_reuse` weighs it by P_θ(o)/q(o). log P_θj(o) of every pooled row under every
pooled version is known exactly, each computed once:

* a new batch is scored under θ_t (its sampler log-probs) and under each of the ω−1 parameter
  snapshots θ_{t−1}..θ_{t−ω+1} (the weights are swapped in, the forward pass runs, θ_t is put back);
* each stored batch is scored under θ_t once, when θ_t first exists.

Cost per step: 2ω − 1 forward passes without gradient over one batch each (ω − 1 snapshot swaps),
beside training on ω batches; memory: ω − 1 snapshots of the trainable parameters on the CPU and
ω − 1 batches where the rollouts live (the model's device, like the lagged source's queue), and the
same in every checkpoint's source.pt, so that a resumed run continues bit for bit. Advantages are
recomputed by the trainer on the pool's groups (each group is one batch's, so group-level
estimators give each batch its own advantages). Supported: one process, rollout.mode: sync, lag 0,
the hf engine, offpolicy_correction: none (the config refuses the rest; docs/offpolicy.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ticgrpo.config.schema import ConfigError
from ticgrpo.core.aggregation import masked_sum
from ticgrpo.core.corrections import effective_sample_size
from ticgrpo.rewards.scoring import concat_scored
from ticgrpo.train.prompts import PromptStream
from ticgrpo.train.sampling import Collected
from ticgrpo.train.sources import BatchSource, collected_from_state, collected_state
from ticgrpo.train.step import StepSettings, TrainingBatch, fixed_logprobs


@dataclass
class StoredBatch:
    """A batch of the window: what it was sampled as, and log P_θv of each row under each version v."""

    version: int
    collected: Collected
    sequence_logprobs: dict[int, Tensor]  # version → [B] float64, on the CPU


def trainable_parameters(model: Any) -> dict[str, Tensor]:
    """The parameters an optimizer step changes (a snapshot holds only these)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


@contextmanager
def weights_swapped(model: Any, snapshot: dict[str, Tensor]) -> Iterator[None]:
    """The model holds `snapshot`'s parameters inside the block; its own are put back, bit for bit."""
    params = trainable_parameters(model)
    with torch.no_grad():
        current = {name: p.detach().clone() for name, p in params.items()}
        for name, p in params.items():
            p.copy_(snapshot[name])
    try:
        yield
    finally:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(current[name])


@dataclass
class ReusingSource:
    """`inner`'s fresh batch each step, pooled with the stored batches of the last ω − 1 versions."""

    inner: BatchSource
    model: Any
    settings: StepSettings
    window: int
    pad_token_id: int
    mask_truncated: bool = False
    stored: list[StoredBatch] = field(default_factory=list)  # newest first
    snapshots: dict[int, dict[str, Tensor]] = field(default_factory=dict)  # version → parameters (CPU)

    def __post_init__(self) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized() and (
                torch.distributed.get_world_size() > 1):
            raise ConfigError("algorithm.reuse_window > 1 runs in one process (the pool's snapshots and batches are "
                              "per process): launch one process or set reuse_window: 1")

    def _sequence_logprobs(self, rollout: Any) -> tuple[Tensor, Tensor]:
        """Token log-probs [B, T] under the model's current weights and their masked sum [B] (float64, CPU)."""
        batch = TrainingBatch.from_rollout(rollout, torch.zeros(len(rollout)), self.mask_truncated)
        tokens = fixed_logprobs(self.model, batch, self.settings)
        return tokens, masked_sum(tokens.double(), batch.completion_mask, dim=1).cpu()

    def next_batch(self, stream: PromptStream, step: int) -> Collected:
        fresh = self.inner.next_batch(stream, step)  # sampled by θ_step, tagged with version `step`
        start = time.perf_counter()
        rollout = fresh.batch.rollout
        tokens, current = self._sequence_logprobs(rollout)
        rollout.sampler_logprobs = tokens
        new = StoredBatch(step, fresh, {step: current})
        for version, snapshot in self.snapshots.items():
            with weights_swapped(self.model, snapshot):
                new.sequence_logprobs[version] = self._sequence_logprobs(rollout)[1]
        for old in self.stored:
            old.sequence_logprobs[step] = self._sequence_logprobs(old.collected.batch.rollout)[1]
        pool = [new, *self.stored]
        collected = self._pooled(pool, step)
        collected.times["reuse_logprobs"] = time.perf_counter() - start
        self._keep_for_next_step(new, step)
        return collected

    def _pooled(self, pool: list[StoredBatch], step: int) -> Collected:
        """One Collected of the pool's rows, each with its mixture log-density (module doc)."""
        sizes = [len(entry.collected.batch.rollout) for entry in pool]
        total = sum(sizes)
        versions = [entry.version for entry in pool]
        mixtures = []
        for entry in pool:
            terms = torch.stack([math.log(size / total) + entry.sequence_logprobs[v]
                                 for v, size in zip(versions, sizes, strict=True)])
            mixtures.append(torch.logsumexp(terms, dim=0))
            entry.collected.batch.rollout.mixture_logprobs = mixtures[-1]
        scored = concat_scored([entry.collected.batch for entry in pool], self.pad_token_id)
        weights = (torch.cat([entry.sequence_logprobs[step] for entry in pool]) - torch.cat(mixtures)).exp()
        fresh = pool[0].collected
        metrics = {**fresh.metrics, "reuse/window": float(len(pool)),
                   "reuse/fresh_reward_mean": float(fresh.batch.rewards.float().mean()),
                   "reuse/ess": effective_sample_size(weights, torch.ones_like(weights, dtype=torch.bool)),
                   "reuse/weight_max": float(weights.max())}
        return Collected(scored, dict(fresh.times), metrics, list(fresh.errors))

    def _keep_for_next_step(self, new: StoredBatch, step: int) -> None:
        """Store θ_step and its batch; forget what the next step's window (versions ≥ step + 2 − ω) no longer holds."""
        oldest = step + 2 - self.window
        self.snapshots[step] = {name: p.detach().to("cpu", copy=True)
                                for name, p in trainable_parameters(self.model).items()}
        self.snapshots = {v: s for v, s in self.snapshots.items() if v >= oldest}
        self.stored = [entry for entry in [new, *self.stored] if entry.version >= oldest]
        for entry in self.stored:
            entry.sequence_logprobs = {v: lp for v, lp in entry.sequence_logprobs.items() if v >= oldest}

    def after_update(self, model: Any, version: int) -> None:
        self.inner.after_update(model, version)

    def stream_state(self, stream: PromptStream) -> dict[str, Any]:
        return self.inner.stream_state(stream)

    def state(self) -> dict[str, Any]:
        return {
            "inner": self.inner.state(),
            "stored": [{"version": e.version, **collected_state(e.collected),
                        "sequence_logprobs": {str(v): lp for v, lp in e.sequence_logprobs.items()}}
                       for e in self.stored],
            "snapshots": {str(v): s for v, s in self.snapshots.items()},
        }

    def load_state(self, state: dict[str, Any], model: Any) -> None:
        self.inner.load_state(state.get("inner", {}) if state else {}, model)
        if not state:
            return
        device = next(model.parameters()).device
        self.stored = [StoredBatch(int(e["version"]), collected_from_state(e, device),
                                   {int(v): lp for v, lp in e["sequence_logprobs"].items()}) for e in state["stored"]]
        self.snapshots = {int(v): s for v, s in state["snapshots"].items()}

    def prepare_eval(self, model: Any, version: int) -> None:
        self.inner.prepare_eval(model, version)

    def close(self) -> None:
        self.stored.clear()
        self.snapshots.clear()
        self.inner.close()


__all__ = ["ReusingSource", "StoredBatch", "trainable_parameters", "weights_swapped"]
