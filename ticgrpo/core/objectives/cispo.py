"""`cispo`: Clipped IS-weight Policy Optimization (spec §4.4).

ρ_{i,t} = exp(ℓ_{i,t} − ℓ^old_{i,t});  ŵ_{i,t} = sg(clip(ρ_{i,t}, 1−ε_low, 1+ε_high));
per-token loss −ŵ_{i,t} A_i ℓ_{i,t} + β·KL_{i,t}, default aggregation `token-mean`.
Unlike PPO clipping, no token loses its gradient: only the (detached) IS weight is
truncated, so ∂loss/∂ℓ_{i,t} ∝ −ŵ_{i,t} A_i for every token.

[choice] Defaults ε_low = None (no lower bound: the paper sets it to a large value and tunes
only ε_high) and ε_high = 0.28 (the paper does not state its value; 0.28 is DAPO's and the
common open-source default). β = 0, advantage `group_norm`.

MiniMax, "MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention"
(arXiv 2506.13585), eq. for J_CISPO.
"""

from __future__ import annotations

import math

import torch
from pydantic.dataclasses import dataclass as pydantic_dataclass
from torch import Tensor

from ticgrpo.core.aggregation import Aggregation, aggregate
from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.objectives._common import (
    EpsilonLow,
    NonNegative,
    PenaltyConfig,
    kl_per_token,
    masked_fraction,
    masked_stats,
    token_reinforce_weights,
)
from ticgrpo.core.objectives.registry import register_objective
from ticgrpo.core.options import OPTIONS_CONFIG


@pydantic_dataclass(config=OPTIONS_CONFIG)
class CISPOConfig(PenaltyConfig):
    epsilon_low: EpsilonLow | None = None
    epsilon_high: NonNegative | None = 0.28
    aggregation: Aggregation = "token-mean"


@register_objective(
    "cispo", options=CISPOConfig, default_advantage="group_norm", uses_old_logprobs=True,
    on_policy_weights=token_reinforce_weights,
)
def cispo_loss(
    batch: PolicyBatch, config: CISPOConfig, norms: StepNormalizers
) -> tuple[Tensor, dict[str, Tensor]]:
    logprobs = batch.current_logprobs()
    log_ratio = (logprobs - batch.behaviour_logprobs()).detach()
    lower = -math.inf if config.epsilon_low is None else math.log1p(-config.epsilon_low)
    upper = config.max_log_ratio
    if config.epsilon_high is not None:
        upper = min(math.log1p(config.epsilon_high), upper)
    weight = torch.exp(log_ratio.clamp(min=lower, max=upper))
    per_token = -weight * batch.token_advantages() * logprobs
    kl = kl_per_token(batch, config)
    if kl is not None:
        per_token = per_token + config.beta * kl
    loss = aggregate(per_token, batch.mask, config.aggregation, norms)
    metrics = {
        # tokens whose IS weight was truncated (whatever the sign of A: CISPO clips the weight)
        "clip_frac_low": masked_fraction(log_ratio < lower, batch.mask),
        "clip_frac_high": masked_fraction(log_ratio > upper, batch.mask),
        **masked_stats(torch.exp(log_ratio), batch.mask, "ratio"),
    }
    if kl is not None:
        metrics["kl"] = masked_stats(kl, batch.mask, "kl")["kl_mean"]
    return loss, metrics
