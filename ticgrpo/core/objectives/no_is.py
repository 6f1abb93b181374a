"""`no_is`: the paper's ablation — no importance sampling (spec §4.2).

Surrogate A_i·ℓ_{i,t} with no ratio and no clipping, aggregated like `grpo`.

Schedules (`mode`), carried out by the trainer:
- `frozen` (default): ĝ(θ_old) is computed once per rollout batch, at θ = θ_old, and
  applied unchanged for as many optimizer steps as `grpo` would take on that batch.
  Its expectation is ∇J(θ_old) exactly (TIC-GRPO paper, arXiv 2508.02833, claim 2) when the
  batch was sampled by the weights it starts from. With stale batches (`rollout.lag`, async)
  the trainer is already at θ_t when the batch arrives, so the gradient is taken at θ_t on
  θ_(t−k)'s samples with no ratio: stale REINFORCE, not ∇J(θ_(t−k)) (`ticgrpo lab
  checkpoint_lag` measures that update; `ticgrpo lab lag` models the paper's version).
- `stale`: the surrogate is re-evaluated at the current θ on the old samples at every
  inner step (REINFORCE on stale data, no correction).
"""

from __future__ import annotations

import typing
from typing import Literal

from pydantic.dataclasses import dataclass as pydantic_dataclass
from torch import Tensor

from ticgrpo.core.aggregation import Aggregation, aggregate
from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.objectives._common import PenaltyConfig, kl_per_token, masked_stats, token_reinforce_weights
from ticgrpo.core.objectives.registry import register_objective
from ticgrpo.core.options import OPTIONS_CONFIG

NoISMode = Literal["frozen", "stale"]
NO_IS_MODES: tuple[str, ...] = typing.get_args(NoISMode)


@pydantic_dataclass(config=OPTIONS_CONFIG)
class NoISConfig(PenaltyConfig):
    mode: NoISMode = "frozen"
    aggregation: Aggregation = "seq-mean-token-mean"


@register_objective(
    "no_is", options=NoISConfig, default_advantage="group_norm", uses_old_logprobs=False,
    frozen_gradient=lambda options: options.mode == "frozen",
    on_policy_weights=token_reinforce_weights,
)
def no_is_loss(
    batch: PolicyBatch, config: NoISConfig, norms: StepNormalizers
) -> tuple[Tensor, dict[str, Tensor]]:
    per_token = -batch.token_advantages() * batch.current_logprobs()
    kl = kl_per_token(batch, config)
    if kl is not None:
        per_token = per_token + config.beta * kl
    loss = aggregate(per_token, batch.mask, config.aggregation, norms)
    metrics: dict[str, Tensor] = {}
    if kl is not None:
        metrics["kl"] = masked_stats(kl, batch.mask, "kl")["kl_mean"]
    return loss, metrics
