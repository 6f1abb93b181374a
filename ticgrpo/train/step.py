"""The optimisation step on one rollout batch.

    batch   = TrainingBatch.from_rollout(rollout, advantages)
    batch.old_logprobs = fixed_logprobs(model, batch, settings)       # only when needed
    stats   = optimize(model, optimizer, batch, settings)

Structure of `optimize` (μ = num_iterations, M = num_minibatches):

    for epoch in 1..μ:                        # inner epochs over the same samples
        for minibatch in split(batch, M):     # one optimizer step each
            norms = StepNormalizers(minibatch)          # counts of the WHOLE optimizer step
            for micro in split(minibatch, micro_batch_size):
                loss = compute_loss(objective, PolicyBatch(micro), norms); loss.backward()
            clip_grad_norm; optimizer.step(); zero_grad

Because every micro-batch divides by the step's counts, splitting a minibatch into
micro-batches never changes its gradient. The `no_is` `frozen` schedule instead computes
ĝ(θ_old) of the whole batch once and applies that same gradient at all μ·M optimizer steps.
No formulas live here: losses come from `ticgrpo.core.objectives`, log-probs from
`ticgrpo.core.logprobs`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.logprobs import completion_logprobs
from ticgrpo.core.objectives import OBJECTIVES, compute_loss
from ticgrpo.rollout.base import RolloutBatch
from ticgrpo.train.checkpoint import crash_point
from ticgrpo.train.distributed import SINGLE_PROCESS, Distributed


@dataclass
class StepSettings:
    objective: str
    objective_config: Any
    num_iterations: int = 1
    num_minibatches: int = 1
    micro_batch_size: int | None = None
    max_grad_norm: float | None = 1.0
    max_new_tokens: int | None = None
    temperature: float = 1.0
    chunk_size: int = 1024
    log_entropy: bool = False
    autocast_dtype: torch.dtype | None = None
    espo_delta: float | None = None  # ESPO: stop the inner epochs once mean |ρ−1| over a minibatch > δ

    @property
    def frozen(self) -> bool:
        """`no_is` with the frozen schedule: one gradient at θ_old, applied μ·M times."""
        return OBJECTIVES.spec(self.objective).frozen_gradient(self.objective_config)

    @property
    def optimizer_steps(self) -> int:
        return self.num_iterations * self.num_minibatches

    @property
    def needs_old_logprobs(self) -> bool:
        """ℓ^old is needed only when the policy moves within a batch and the loss reads it."""
        uses = OBJECTIVES.spec(self.objective).uses_old_logprobs
        return uses and self.optimizer_steps > 1 and not self.frozen

    @property
    def beta(self) -> float:
        return float(getattr(self.objective_config, "beta", 0.0))


@dataclass
class TrainingBatch:
    """Everything the loss needs for B sequences (tensors on the model's device)."""

    input_ids: Tensor  # [B, P+T]
    attention_mask: Tensor  # [B, P+T]
    completion_ids: Tensor  # [B, T]
    completion_mask: Tensor  # [B, T]
    advantages: Tensor  # [B] (or [B, T])
    group_ids: Tensor  # [B]
    old_logprobs: Tensor | None = None
    ref_logprobs: Tensor | None = None

    @staticmethod
    def from_rollout(rollout: RolloutBatch, advantages: Tensor, mask_truncated: bool = False) -> TrainingBatch:
        mask = rollout.completion_mask
        if mask_truncated:  # overlong filtering: truncated completions carry no loss
            mask = mask * (~rollout.truncated).to(mask.dtype)[:, None]
        return TrainingBatch(
            input_ids=rollout.input_ids,
            attention_mask=rollout.attention_mask,
            completion_ids=rollout.completion_ids,
            completion_mask=mask,
            advantages=advantages.to(rollout.completion_ids.device),
            group_ids=rollout.group_ids,
        )

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def rows(self, idx: Tensor) -> TrainingBatch:
        return TrainingBatch(**{
            f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[idx]) for f in fields(self)
        })


@dataclass
class StepStats:
    metrics: dict[str, float] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    losses: list[float] = field(default_factory=list)  # one per optimizer step
    skipped_nonfinite: int = 0  # optimizer steps skipped for a non-finite loss or gradient


def autocast_context(model: Any, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    device = next(model.parameters()).device
    return torch.autocast(device.type, dtype=dtype)


def policy_logprobs(
    model: Any, batch: TrainingBatch, settings: StepSettings, with_entropy: bool = False
) -> tuple[Tensor, Tensor | None]:
    """ℓ [B, T] (float32) of the sampled tokens under `model`, at the sampling temperature."""
    with autocast_context(model, settings.autocast_dtype):
        return completion_logprobs(
            model,
            batch.input_ids,
            batch.attention_mask,
            batch.completion_ids,
            batch.completion_mask,
            temperature=settings.temperature,
            chunk_size=settings.chunk_size,
            with_entropy=with_entropy,
        )


def fixed_logprobs(
    model: Any, batch: TrainingBatch, settings: StepSettings, context: Any = None
) -> Tensor:
    """Detached log-probs of the whole batch (behaviour ℓ^old or reference ℓ^ref), one
    micro-batch at a time. `context` (a callable returning a context manager, e.g. a PEFT
    model's disable_adapter) wraps the calls.
    The model's train/eval mode is left as is (the trainer disables dropout), so ℓ^old equals
    the first inner step's ℓ exactly."""
    out = []
    with torch.no_grad(), context() if context is not None else contextlib.nullcontext():
        for idx in _chunks(torch.arange(len(batch)), settings.micro_batch_size):
            logp, _ = policy_logprobs(model, batch.rows(idx), settings)
            out.append(logp)
    return torch.cat(out)


def accumulate_gradients(
    model: Any, batch: TrainingBatch, settings: StepSettings, norms: StepNormalizers | None = None
) -> tuple[float, dict[str, list[float]]]:
    """Forward/backward the batch in micro-batches, adding into `.grad` (no optimizer step).

    Every micro-batch uses `norms` (default: counts of the whole `batch`), so the summed
    gradient equals that of one pass over the whole batch. Returns (loss, metrics per micro-batch).
    """
    if norms is None:
        norms = StepNormalizers.from_mask(batch.completion_mask, settings.max_new_tokens)
    total = 0.0
    metrics: dict[str, list[float]] = defaultdict(list)
    for idx in _chunks(torch.arange(len(batch)), settings.micro_batch_size):
        micro = batch.rows(idx)
        logp, entropies = policy_logprobs(model, micro, settings, with_entropy=settings.log_entropy)
        policy_batch = PolicyBatch(
            logprobs=logp,
            mask=micro.completion_mask,
            advantages=micro.advantages,
            old_logprobs=micro.old_logprobs,
            ref_logprobs=micro.ref_logprobs,
            token_ids=micro.completion_ids,
            group_ids=micro.group_ids,
            entropies=entropies,
        )
        loss, values = compute_loss(settings.objective, policy_batch, settings.objective_config, norms)
        if settings.espo_delta is not None and micro.old_logprobs is not None:  # ESPO: Σ m|ρ−1|, Σ m
            m = micro.completion_mask.to(torch.float32)
            dev = (logp.detach().float() - micro.old_logprobs.float()).clamp(max=20.0).exp().sub(1.0).abs()
            metrics[_ESPO_SUM].append(float((dev * m).sum()))
            metrics[_ESPO_TOKENS].append(float(m.sum()))
        loss.backward()
        crash_point("mid_backward")  # test hook (ticgrpo.train.checkpoint); a no-op normally
        total += float(loss.detach())
        for key, value in values.items():
            metrics[key].append(float(value.detach()))
        if entropies is not None:
            m = micro.completion_mask.to(torch.float32)
            metrics["entropy"].append(float((entropies.detach() * m).sum() / m.sum().clamp(min=1.0)))
    return total, metrics


def optimize(
    model: Any,
    optimizer: torch.optim.Optimizer,
    batch: TrainingBatch,
    settings: StepSettings,
    dist: Distributed = SINGLE_PROCESS,
) -> StepStats:
    """μ inner epochs × M minibatches of optimizer steps on `batch` (see the module docstring).

    With several processes (`dist`), `batch` is this process's share: normalisers count the
    whole job's minibatch and gradients and losses are summed across processes before each
    step, so every replica takes the one-process step of the whole batch."""
    stats = StepStats()
    params = [p for p in model.parameters() if p.requires_grad]
    micro_metrics: dict[str, list[float]] = defaultdict(list)
    grad_norms: list[float] = []
    model.train()
    optimizer.zero_grad(set_to_none=True)
    if settings.frozen:
        start = time.perf_counter()
        loss, values = accumulate_gradients(
            model, batch, settings, dist.normalizers(batch.completion_mask, settings.max_new_tokens)
        )
        dist.sum_gradients(params)
        loss = dist.sum_floats([loss])[0]
        _merge(micro_metrics, values)
        frozen = [None if p.grad is None else p.grad.detach().clone() for p in params]
        stats.times["forward_backward"] += time.perf_counter() - start
        for _ in range(settings.optimizer_steps):
            for p, g in zip(params, frozen, strict=True):
                p.grad = None if g is None else g.clone()
            start = time.perf_counter()
            _apply_step(optimizer, params, settings.max_grad_norm, loss, grad_norms, stats)
            stats.times["optimizer"] += time.perf_counter() - start
            stats.losses.append(loss)
    else:
        espo_stopped, deviations = False, []
        for _ in range(settings.num_iterations):
            if espo_stopped:
                break
            for rows in _minibatches(len(batch), settings.num_minibatches):
                minibatch = batch.rows(rows)
                norms = dist.normalizers(minibatch.completion_mask, settings.max_new_tokens)
                start = time.perf_counter()
                loss, values = accumulate_gradients(model, minibatch, settings, norms)
                dist.sum_gradients(params)
                loss = dist.sum_floats([loss])[0]
                stats.times["forward_backward"] += time.perf_counter() - start
                deviation = _espo_deviation(values, dist)  # pops the ESPO sums out of `values`
                if deviation is not None:
                    deviations.append(deviation)
                    if stats.losses and deviation > settings.espo_delta:
                        # ESPO: θ moved too far from θ_old: drop this gradient, end the inner epochs
                        optimizer.zero_grad(set_to_none=True)
                        espo_stopped = True
                        break
                _merge(micro_metrics, values)
                start = time.perf_counter()
                _apply_step(optimizer, params, settings.max_grad_norm, loss, grad_norms, stats)
                stats.times["optimizer"] += time.perf_counter() - start
                stats.losses.append(loss)
    stats.metrics = reduce_metrics(micro_metrics)
    if settings.espo_delta is not None and not settings.frozen:
        # optimizer steps taken before ESPO stopped the inner epochs (μ·M: it never did)
        stats.metrics["espo_stopped_at"] = float(len(stats.losses))
        stats.metrics["espo_deviation_max"] = max(deviations, default=0.0)
    stats.metrics["loss"] = sum(stats.losses) / len(stats.losses)
    stats.metrics["grad_norm"] = sum(grad_norms) / len(grad_norms)
    stats.metrics["grad_norm_max"] = max(grad_norms)
    stats.metrics["optimizer_steps"] = float(len(stats.losses))
    stats.metrics["skipped_nonfinite"] = float(stats.skipped_nonfinite)
    return stats


_ESPO_SUM, _ESPO_TOKENS = "_espo_dev_sum", "_espo_dev_tokens"


def _espo_deviation(values: dict[str, list[float]], dist: Distributed = SINGLE_PROCESS) -> float | None:
    """Mean |ρ−1| over the minibatch's tokens of every process (None without ESPO or ℓ^old);
    removes its sums from `values`."""
    total, tokens = values.pop(_ESPO_SUM, None), values.pop(_ESPO_TOKENS, None)
    if not total or not tokens:  # the same on every process: ESPO and ℓ^old are global settings
        return None
    total_sum, token_sum = dist.sum_floats([sum(total), sum(tokens)])
    return total_sum / max(token_sum, 1.0)


def reduce_metrics(values: dict[str, list[float]]) -> dict[str, float]:
    """Average over micro-batches, except min for `*_min` and max for `*_max` keys."""
    out = {}
    for key, seq in values.items():
        if not seq:
            continue
        if key.endswith("_min"):
            out[key] = min(seq)
        elif key.endswith("_max"):
            out[key] = max(seq)
        else:
            out[key] = sum(seq) / len(seq)
    return out


def with_old_logprobs(batch: TrainingBatch, old: Tensor | None, ref: Tensor | None) -> TrainingBatch:
    return replace(batch, old_logprobs=old, ref_logprobs=ref)


def _apply_step(optimizer: torch.optim.Optimizer, params: list[Tensor], max_grad_norm: float | None, loss: float,
                grad_norms: list[float], stats: StepStats) -> None:
    """Clip and step. A non-finite loss or gradient norm skips the step instead (its gradient
    is dropped) and is counted in `stats.skipped_nonfinite`; the trainer decides when to stop."""
    norm = _clip(params, max_grad_norm)
    grad_norms.append(norm)
    if math.isfinite(loss) and math.isfinite(norm):
        optimizer.step()
    else:
        stats.skipped_nonfinite += 1
    optimizer.zero_grad(set_to_none=True)


def _clip(params: list[Tensor], max_norm: float | None) -> float:
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else float("inf"))
    return float(norm)


def _merge(into: dict[str, list[float]], values: dict[str, list[float]]) -> None:
    for key, seq in values.items():
        into[key].extend(seq)


def _minibatches(n: int, m: int) -> Iterator[Tensor]:
    """M index sets of (nearly) equal size; shuffled (global torch RNG) when M > 1."""
    order = torch.randperm(n) if m > 1 else torch.arange(n)
    yield from (part for part in order.tensor_split(m) if len(part))


def _chunks(idx: Tensor, size: int | None) -> Iterator[Tensor]:
    if size is None or size >= len(idx):
        yield idx
        return
    yield from idx.split(size)
