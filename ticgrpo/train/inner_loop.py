"""How the optimizer steps on one rollout batch are taken: the inner-loop strategies.

    stats = optimize(model, optimizer, batch, settings, dist)   # picks the strategy below

μ = num_iterations, M = num_minibatches:

    StandardEpochs        for epoch in 1..μ: for minibatch in split(batch, M): one optimizer step
    FrozenGradient        `OBJECTIVES.spec(o).frozen_gradient(options)` (no_is `frozen`): ĝ(θ_old)
                          of the whole batch, computed once, applied at all μ·M optimizer steps
    EarlyStoppedEpochs    ESPO (algorithm.espo_delta = δ): the standard loop, ended as soon as a
                          minibatch's mean |ρ−1| exceeds δ (that minibatch's gradient is dropped)

With several processes (`dist`), `batch` is this process's share: normalisers count the
whole job's minibatch, and gradients, losses and ESPO's deviation are summed across
processes before each decision, so every replica takes the one-process step of the whole
batch (ticgrpo.train.distributed).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from ticgrpo.train.distributed import SINGLE_PROCESS, Distributed
from ticgrpo.train.step import GradientPass, StepSettings, StepStats, TrainingBatch, accumulate_gradients


class InnerLoop(Protocol):
    def run(self, model: Any, optimizer: torch.optim.Optimizer, batch: TrainingBatch, settings: StepSettings,
            dist: Distributed) -> StepStats: ...


def optimize(
    model: Any,
    optimizer: torch.optim.Optimizer,
    batch: TrainingBatch,
    settings: StepSettings,
    dist: Distributed = SINGLE_PROCESS,
) -> StepStats:
    """The optimizer steps on `batch`, as the settings' inner-loop strategy takes them."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    return inner_loop_for(settings).run(model, optimizer, batch, settings, dist)


def inner_loop_for(settings: StepSettings) -> InnerLoop:
    if settings.frozen:
        return FrozenGradient()
    if settings.espo_delta is not None:
        return EarlyStoppedEpochs(settings.espo_delta)
    return StandardEpochs()


@dataclass(frozen=True)
class StandardEpochs:
    """μ inner epochs × M minibatches, one optimizer step per minibatch."""

    def run(self, model: Any, optimizer: torch.optim.Optimizer, batch: TrainingBatch, settings: StepSettings,
            dist: Distributed) -> StepStats:
        stats, params = StepStats(), trainable(model)
        micro_metrics: dict[str, list[float]] = defaultdict(list)
        for _ in range(settings.num_iterations):
            for rows in minibatches(len(batch), settings.num_minibatches, grouped_rows(batch, settings)):
                gradient = minibatch_gradient(model, batch.rows(rows), settings, dist, params, stats)
                merge(micro_metrics, gradient.metrics)
                stats.apply_step(optimizer, params, settings.max_grad_norm, gradient.loss)
        stats.finish(micro_metrics, {})
        return stats


@dataclass(frozen=True)
class EarlyStoppedEpochs:
    """ESPO: the standard loop, stopped once a minibatch's mean |ρ−1| exceeds `delta`.
    The first optimizer step always runs (at θ_old, ρ ≡ 1)."""

    delta: float

    def run(self, model: Any, optimizer: torch.optim.Optimizer, batch: TrainingBatch, settings: StepSettings,
            dist: Distributed) -> StepStats:
        stats, params = StepStats(), trainable(model)
        micro_metrics: dict[str, list[float]] = defaultdict(list)
        deviations: list[float] = []
        stopped = False
        for _ in range(settings.num_iterations):
            if stopped:
                break
            for rows in minibatches(len(batch), settings.num_minibatches, grouped_rows(batch, settings)):
                gradient = minibatch_gradient(model, batch.rows(rows), settings, dist, params, stats, True)
                deviation = mean_ratio_deviation(gradient, dist)
                if deviation is not None:
                    deviations.append(deviation)
                    if stats.losses and deviation > self.delta:  # θ moved too far from θ_old
                        optimizer.zero_grad(set_to_none=True)
                        stopped = True
                        break
                merge(micro_metrics, gradient.metrics)
                stats.apply_step(optimizer, params, settings.max_grad_norm, gradient.loss)
        stats.finish(micro_metrics, {
            "espo_stopped_at": float(len(stats.losses)),  # μ·M: it never stopped
            "espo_deviation_max": max(deviations, default=0.0),
        })
        return stats


@dataclass(frozen=True)
class FrozenGradient:
    """One gradient at θ_old over the whole batch, applied at each of the μ·M optimizer steps."""

    def run(self, model: Any, optimizer: torch.optim.Optimizer, batch: TrainingBatch, settings: StepSettings,
            dist: Distributed) -> StepStats:
        stats, params = StepStats(), trainable(model)
        micro_metrics: dict[str, list[float]] = defaultdict(list)
        gradient = minibatch_gradient(model, batch, settings, dist, params, stats)
        merge(micro_metrics, gradient.metrics)
        frozen = [None if p.grad is None else p.grad.detach().clone() for p in params]
        for _ in range(settings.optimizer_steps):
            for p, g in zip(params, frozen, strict=True):
                p.grad = None if g is None else g.clone()
            stats.apply_step(optimizer, params, settings.max_grad_norm, gradient.loss)
        stats.finish(micro_metrics, {})
        return stats


# ---------------------------------------------------------------------- shared pieces


def minibatch_gradient(model: Any, minibatch: TrainingBatch, settings: StepSettings, dist: Distributed,
                       params: list[Tensor], stats: StepStats, track_ratio_deviation: bool = False) -> GradientPass:
    """The job's gradient of one minibatch in `.grad` (summed across processes), with its summed loss."""
    norms = dist.normalizers(minibatch.completion_mask, settings.max_new_tokens)
    start = time.perf_counter()
    gradient = accumulate_gradients(model, minibatch, settings, norms, track_ratio_deviation)
    dist.sum_gradients(params)
    gradient.loss = dist.sum_floats([gradient.loss])[0]
    stats.times["forward_backward"] += time.perf_counter() - start
    return gradient


def mean_ratio_deviation(gradient: GradientPass, dist: Distributed = SINGLE_PROCESS) -> float | None:
    """Mean |ρ−1| over the minibatch's tokens of every process; None without ℓ^old (the same
    on every process: ESPO and ℓ^old are global settings, so the collective runs everywhere or nowhere)."""
    if gradient.ratio_deviation is None:
        return None
    total, tokens = dist.sum_floats(list(gradient.ratio_deviation))
    return total / max(tokens, 1.0)


def trainable(model: Any) -> list[Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def grouped_rows(batch: TrainingBatch, settings: StepSettings) -> Tensor | None:
    """The group ids minibatches must keep whole (a group-coupled objective), else None."""
    return batch.group_ids if settings.couples_group else None


def merge(into: dict[str, list[float]], values: dict[str, list[float]]) -> None:
    for key, seq in values.items():
        into[key].extend(seq)


def minibatches(n: int, m: int, group_ids: Tensor | None = None) -> Iterator[Tensor]:
    """M index sets of (nearly) equal size; shuffled (global torch RNG) when M > 1.

    With `group_ids` (an objective that couples a group) whole groups are shuffled and split,
    so that every minibatch holds all rows of each of its groups, in group order."""
    if group_ids is None:
        order = torch.randperm(n) if m > 1 else torch.arange(n)
        yield from (part for part in order.tensor_split(m) if len(part))
        return
    groups = torch.unique(group_ids)
    groups = groups[torch.randperm(len(groups))] if m > 1 else groups
    for part in groups.tensor_split(m):
        if len(part):
            yield torch.cat([(group_ids == group).nonzero().flatten() for group in part])


__all__ = ["EarlyStoppedEpochs", "FrozenGradient", "InnerLoop", "StandardEpochs", "inner_loop_for", "optimize"]
