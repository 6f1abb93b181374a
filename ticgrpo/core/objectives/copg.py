"""`copg`: Clipped-Objective Policy Gradient — PPO's clip applied to the log-probability itself.

With the log-space bounds u_{i,t} = ℓ^old_{i,t} + log(1+ε) and d_{i,t} = ℓ^old_{i,t} + log(1−ε),
    s_{i,t} = min(A ℓ_{i,t}, A clip(ℓ_{i,t}, d_{i,t}, u_{i,t}))
            = A·min(ℓ, u) for A ≥ 0,  A·max(ℓ, d) for A < 0;
per-token loss −s + β KL, aggregated (default `seq-mean-token-mean`). In probability space the
clip bounds π_θ to [(1−ε)π_old, (1+ε)π_old], PPO's trust region, but inside it the gradient is
A ∇ℓ (the plain policy gradient), where PPO's is ρ A ∇ℓ: no importance weight.

Markowitz, Staley, "Clipped-Objective Policy Gradients for Pessimistic Policy Optimization"
(arXiv 2311.05846): "a basic policy gradient, clipped in an equivalent fashion" to PPO.

Reconstruction (the paper's equation was not available to us): the per-token form
min(A log π_θ, A clip(log π_θ, log((1−ε)π_old), log((1+ε)π_old))) is our reading of that
sentence — PPO's min/clip with ρ replaced by log π_θ and its bounds 1 ± ε mapped to log((1 ± ε)π_old).
[choice] Defaults: ε = 0.2 (PPO's; the paper's value was not available to us), aggregation
`seq-mean-token-mean` (GRPO's), advantage `group_norm`, β = 0.

At θ = θ_old: ℓ = ℓ^old lies strictly inside (d, u), so ∂loss/∂ℓ_{i,t} = −A_{i,t} × the token's
aggregation weight, `grpo`'s on-policy gradient. Away from it the same tokens as `grpo`'s lose
their gradient (A > 0 and ρ > 1+ε, A < 0 and ρ < 1−ε) and the others keep A instead of ρA.

Numerics: no exp is taken, so ℓ − ℓ^old = ±1e4 gives a finite loss and gradient. At a bound
the gradient passes (a `where` on the strict inequality, like PPO's inclusive clamp).
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass as pydantic_dataclass
from torch import Tensor

from ticgrpo.core.aggregation import Aggregation, aggregate
from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.objectives._common import (
    PenaltyConfig,
    kl_per_token,
    masked_fraction,
    masked_stats,
    token_reinforce_weights,
)
from ticgrpo.core.objectives.registry import register_objective
from ticgrpo.core.options import OPTIONS_CONFIG

# ε = 0 would put ℓ^old on both bounds; ε ≥ 1 would send the lower bound log((1−ε)π_old) to −inf or NaN
ClipRange = Annotated[float, Field(gt=0, lt=1)]


@pydantic_dataclass(config=OPTIONS_CONFIG)
class COPGConfig(PenaltyConfig):
    epsilon: ClipRange = 0.2  # the log-space clip: ℓ ∈ [ℓ^old + log(1−ε), ℓ^old + log(1+ε)]
    aggregation: Aggregation = "seq-mean-token-mean"


@register_objective(
    "copg", options=COPGConfig, default_advantage="group_norm", uses_old_logprobs=True,
    on_policy_weights=token_reinforce_weights,
)
def copg_loss(
    batch: PolicyBatch, config: COPGConfig, norms: StepNormalizers
) -> tuple[Tensor, dict[str, Tensor]]:
    advantages = batch.token_advantages()
    logprobs = batch.current_logprobs()
    old = batch.behaviour_logprobs()
    upper, lower = old + math.log1p(config.epsilon), old + math.log1p(-config.epsilon)
    positive = advantages >= 0
    above, below = logprobs.detach() > upper, logprobs.detach() < lower
    # the pessimistic min, one branch per advantage sign; a bound is detached, so its branch has gradient 0
    bounded = torch.where(positive, torch.where(above, upper, logprobs), torch.where(below, lower, logprobs))
    per_token = -advantages * bounded
    kl = kl_per_token(batch, config)
    if kl is not None:
        per_token = per_token + config.beta * kl
    loss = aggregate(per_token, batch.mask, config.aggregation, norms)
    metrics = {
        "clip_frac_low": masked_fraction(below & (advantages < 0), batch.mask),
        "clip_frac_high": masked_fraction(above & (advantages > 0), batch.mask),
        **masked_stats(torch.exp(logprobs.detach() - old), batch.mask, "ratio"),
    }
    if kl is not None:
        metrics["kl"] = masked_stats(kl, batch.mask, "kl")["kl_mean"]
    return loss, metrics
