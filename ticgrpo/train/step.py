"""The pieces of the optimisation step on one rollout batch.

    batch   = TrainingBatch.from_rollout(rollout, advantages)
    batch.old_logprobs = fixed_logprobs(model, batch, settings)       # only when needed
    stats   = optimize(model, optimizer, batch, settings)             # ticgrpo.train.inner_loop

`accumulate_gradients` forwards/backwards one minibatch in micro-batches:

    norms = StepNormalizers(minibatch)          # counts of the WHOLE optimizer step
    for micro in split(minibatch, micro_batch_size):
        loss = compute_loss(objective, PolicyBatch(micro), norms); loss.backward()

Because every micro-batch divides by the step's counts, splitting a minibatch into
micro-batches never changes its gradient. How the optimizer steps of a batch are taken
(μ epochs × M minibatches, the frozen schedule, ESPO's early stop) is
`ticgrpo.train.inner_loop`. No formulas live here: losses come from
`ticgrpo.core.objectives`, log-probs from `ticgrpo.core.logprobs`.
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
from ticgrpo.core.logprobs import CompletionScores, completion_scores
from ticgrpo.core.objectives import OBJECTIVES, compute_loss
from ticgrpo.rollout.base import RolloutBatch
from ticgrpo.train.checkpoint import crash_point
from ticgrpo.train.metrics import reduce_values


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
    def needs_hidden_states(self) -> bool:
        """The objective reads the policy's last-layer hidden states: the forward pass returns them."""
        return OBJECTIVES.spec(self.objective).needs_hidden_states

    @property
    def couples_group(self) -> bool:
        """The objective's loss couples a group's completions: minibatches and micro-batches hold whole groups."""
        return OBJECTIVES.spec(self.objective).couples_group

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
    mixture_logprobs: Tensor | None = None  # [B] a pool's behaviour density (algorithm.reuse_window)

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
            mixture_logprobs=None if rollout.mixture_logprobs is None else rollout.mixture_logprobs.to(
                rollout.completion_ids.device),
        )

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def rows(self, idx: Tensor) -> TrainingBatch:
        values: dict[str, Any] = {
            f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[idx]) for f in fields(self)
        }
        return TrainingBatch(**values)


@dataclass
class StepStats:
    """What the optimizer steps on one batch record; `metrics` is filled once they are done."""

    metrics: dict[str, float] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    losses: list[float] = field(default_factory=list)  # one per optimizer step
    grad_norms: list[float] = field(default_factory=list)  # one per optimizer step, before clipping
    skipped_nonfinite: int = 0  # optimizer steps skipped for a non-finite loss or gradient

    def apply_step(self, optimizer: torch.optim.Optimizer, params: list[Tensor], max_grad_norm: float | None,
                   loss: float) -> None:
        """Clip and step. A non-finite loss or gradient norm skips the step instead (its gradient
        is dropped) and is counted in `skipped_nonfinite`; the trainer decides when to stop."""
        start = time.perf_counter()
        norm = _clip(params, max_grad_norm)
        self.grad_norms.append(norm)
        if math.isfinite(loss) and math.isfinite(norm):
            optimizer.step()
        else:
            self.skipped_nonfinite += 1
        optimizer.zero_grad(set_to_none=True)
        self.times["optimizer"] += time.perf_counter() - start
        self.losses.append(loss)

    def finish(self, micro_metrics: dict[str, list[float]], schedule_metrics: dict[str, float]) -> None:
        """`metrics`: the objective's (reduced over micro-batches), the inner loop's, then the step's own."""
        self.metrics = {
            **reduce_metrics(micro_metrics),
            **schedule_metrics,
            "loss": sum(self.losses) / len(self.losses),
            "grad_norm": sum(self.grad_norms) / len(self.grad_norms),
            "grad_norm_max": max(self.grad_norms),
            "optimizer_steps": float(len(self.losses)),
            "skipped_nonfinite": float(self.skipped_nonfinite),
        }


@dataclass
class GradientPass:
    """One forward/backward pass over a batch: its loss, the objective's metrics per micro-batch,
    and (when asked for and ℓ^old is known) the sums Σ m|ρ−1| and Σ m over its tokens."""

    loss: float
    metrics: dict[str, list[float]]
    ratio_deviation: tuple[float, float] | None = None


def autocast_context(model: Any, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    device = next(model.parameters()).device
    return torch.autocast(device.type, dtype=dtype)


def policy_logprobs(
    model: Any, batch: TrainingBatch, settings: StepSettings, with_entropy: bool = False
) -> tuple[Tensor, Tensor | None]:
    """ℓ [B, T] (float32) of the sampled tokens under `model`, at the sampling temperature (and entropies)."""
    scores = policy_scores(model, batch, settings, with_entropy)
    return scores.logprobs, scores.entropies


def policy_scores(
    model: Any, batch: TrainingBatch, settings: StepSettings, with_entropy: bool = False,
    with_hidden_states: bool = False,
) -> CompletionScores:
    """One forward pass of `model` on the batch: ℓ, and entropies and hidden states when asked for."""
    with autocast_context(model, settings.autocast_dtype):
        return completion_scores(
            model,
            batch.input_ids,
            batch.attention_mask,
            batch.completion_ids,
            batch.completion_mask,
            temperature=settings.temperature,
            chunk_size=settings.chunk_size,
            with_entropy=with_entropy,
            with_hidden_states=with_hidden_states,
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
    model: Any, batch: TrainingBatch, settings: StepSettings, norms: StepNormalizers | None = None,
    track_ratio_deviation: bool = False,
) -> GradientPass:
    """Forward/backward the batch in micro-batches, adding into `.grad` (no optimizer step).

    Every micro-batch uses `norms` (default: counts of the whole `batch`), so the summed
    gradient equals that of one pass over the whole batch. `track_ratio_deviation` (ESPO)
    also sums |ρ−1| over the tokens when the batch carries ℓ^old.
    """
    if norms is None:
        norms = StepNormalizers.from_mask(batch.completion_mask, settings.max_new_tokens)
    total = 0.0
    metrics: dict[str, list[float]] = defaultdict(list)
    deviation: tuple[float, float] | None = None
    for idx in _chunks(torch.arange(len(batch)), settings.micro_batch_size):
        micro = batch.rows(idx)
        if settings.couples_group:
            check_whole_groups(micro.group_ids, batch.group_ids)
        scores = policy_scores(model, micro, settings, with_entropy=settings.log_entropy,
                               with_hidden_states=settings.needs_hidden_states)
        logp, entropies = scores.logprobs, scores.entropies
        policy_batch = PolicyBatch(
            logprobs=logp,
            mask=micro.completion_mask,
            advantages=micro.advantages,
            old_logprobs=micro.old_logprobs,
            ref_logprobs=micro.ref_logprobs,
            token_ids=micro.completion_ids,
            group_ids=micro.group_ids,
            entropies=entropies,
            mixture_logprobs=micro.mixture_logprobs,
            hidden_states=scores.hidden_states,
        )
        loss, values = compute_loss(settings.objective, policy_batch, settings.objective_config, norms)
        if track_ratio_deviation and micro.old_logprobs is not None:
            summed, tokens = _ratio_deviation(logp, micro.old_logprobs, micro.completion_mask)
            deviation = (summed, tokens) if deviation is None else (deviation[0] + summed, deviation[1] + tokens)
        loss.backward()
        crash_point("mid_backward")  # test hook (ticgrpo.train.checkpoint); a no-op normally
        total += float(loss.detach())
        for key, value in values.items():
            metrics[key].append(float(value.detach()))
        if entropies is not None:
            m = micro.completion_mask.to(torch.float32)
            metrics["entropy"].append(float((entropies.detach() * m).sum() / m.sum().clamp(min=1.0)))
    return GradientPass(total, metrics, deviation)


def check_whole_groups(part: Tensor, whole: Tensor) -> None:
    """Raise unless every group present in `part` (group ids of a micro-batch) has all of its
    rows of `whole` (the minibatch's): a group-coupled loss must see the whole group."""
    groups, counts = torch.unique(part, return_counts=True)
    expected = (whole[None, :] == groups[:, None]).sum(dim=1)
    if not torch.equal(counts, expected):
        raise ValueError(
            "the objective couples the completions of a group, but a micro-batch holds part of a group: set "
            "algorithm.micro_batch_size to a multiple of rollout.num_generations"
        )


def _ratio_deviation(logp: Tensor, old_logprobs: Tensor, mask: Tensor) -> tuple[float, float]:
    """(Σ m|ρ−1|, Σ m) of one micro-batch; ρ is clamped at e^20 so that a diverged token stays finite."""
    m = mask.to(torch.float32)
    dev = (logp.detach().float() - old_logprobs.float()).clamp(max=20.0).exp().sub(1.0).abs()
    return float((dev * m).sum()), float(m.sum())


def reduce_metrics(values: dict[str, list[float]]) -> dict[str, float]:
    """Each metric's values over the micro-batches, reduced as ticgrpo.train.metrics declares it."""
    return {key: reduce_values(key, seq) for key, seq in values.items() if seq}


def with_old_logprobs(batch: TrainingBatch, old: Tensor | None, ref: Tensor | None) -> TrainingBatch:
    return replace(batch, old_logprobs=old, ref_logprobs=ref)


def _clip(params: list[Tensor], max_norm: float | None) -> float:
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else float("inf"))
    return float(norm)


def _chunks(idx: Tensor, size: int | None) -> Iterator[Tensor]:
    if size is None or size >= len(idx):
        yield idx
        return
    yield from idx.split(size)
