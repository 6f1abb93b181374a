"""`ppo_rpe`: PPO with the relative density ratio and a relative Pearson regulariser.

x_{i,t} = ℓ_{i,t} − ℓ^old_{i,t}, ρ = eˣ; with b = `relative_beta` ∈ [0, 1):
    r_{i,t} = π_θ / (b π_θ + (1−b) π_old) = 1 / (b + (1−b)/ρ)      (the relative density ratio, 0 ≤ r < 1/b)
    s_{i,t} = min(r A_i, clip(r, 1−ε, 1+ε) A_i)                       (PPO's clipped surrogate, r in place of ρ)
    R_{i,t} = (|A_i| / (2ε)) (r − 1)²                                 (relative Pearson regulariser, threshold gain)
per-token loss −s + κ R + β KL, aggregated (κ = `rpe_coef`, β the KL penalty's `beta`).

Kobayashi, "Proximal Policy Optimization with Relative Pearson Divergence" (arXiv 2010.03290).
The relative density ratio and the relative Pearson divergence
PE_b(π_θ‖π_old) = ½ E_{q_b}[(r − 1)²], q_b = b π_θ + (1−b) π_old, are the paper's (after
Yamada et al., 2011). At b = ½ the domain of r is [0, 2], symmetric about 1 — swapping π_θ and
π_old reflects r about 1 (r(ρ) + r(1/ρ) = 2) — so one symmetric threshold ε fits it, where
PPO's symmetric ε meets an asymmetric ratio in [0, ∞).

Reconstruction (the paper's exact equations were not available to us; what is ours):
- the per-token regulariser is the integrand ½(r − 1)² of PE_b evaluated on the π_old samples,
  without the importance factor q_b/π_old = b ρ + 1 − b (1 at θ = θ_old, and unbounded in ρ);
- its gain |A|/ε is the threshold design: the gradient of −r A + (|A|/(2ε))(r − 1)² in r is
  zero exactly at r = 1 + ε·sign(A) (at r = 1 ± ε/κ for other κ), so with κ = 1 the regularised
  surrogate's optimum sits on the clip boundary, and past it the regulariser pulls the token
  back (the clipped term alone would only stop pushing);
- keeping PPO's clip on r as well as the regulariser is our choice (κ = 0 gives the clip alone).
[choice] Defaults: b = 0.5 (the symmetric domain); ε = 0.1, because dr/dρ = 1 − b = ½ at ρ = 1,
so r ∈ [0.9, 1.1] ⟺ ρ ∈ [0.818, 1.222], close to PPO's ε = 0.2 on ρ; κ = 1; aggregation
`seq-mean-token-mean` (GRPO's); advantage `group_norm`.

At θ = θ_old: r = 1, ∂r/∂ℓ = r(1 − b r) = 1 − b, the regulariser's gradient (r − 1)·… is 0 and
no clip binds, so ∂loss/∂ℓ_{i,t} = −(1 − b) A_i × the token's aggregation weight: `grpo`'s
on-policy gradient scaled by 1 − b (one half at the default b).

Numerics: log r = −log(b + (1−b) e^{−x}) as a logaddexp, finite for any x (and exactly x at
b = 0); for b > 0 it never exceeds −log b, so no exp overflows. The clip is `clipped_surrogate`
on log r, one clamped branch per advantage sign; the regulariser reads r = exp(min(log r, M)),
M = `max_log_ratio`, which only binds for b < e^−M (the plain ratio at b = 0).
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
    NonNegative,
    PenaltyConfig,
    clipped_surrogate,
    kl_per_token,
    masked_fraction,
    masked_stats,
    token_reinforce_weights,
)
from ticgrpo.core.objectives.registry import register_objective
from ticgrpo.core.options import OPTIONS_CONFIG

# b = 1 would make r ≡ 1 (no gradient at all); b < 0 would let the denominator reach 0
RelativeBeta = Annotated[float, Field(ge=0, lt=1)]
# ε = 0 would make the regulariser's gain |A|/ε infinite; ε ≥ 1 would let the lower clip reach 0
Threshold = Annotated[float, Field(gt=0, lt=1)]


@pydantic_dataclass(config=OPTIONS_CONFIG)
class PPORPEConfig(PenaltyConfig):
    relative_beta: RelativeBeta = 0.5  # b of r = π/(b π + (1−b) π_old); not the KL penalty's `beta`
    epsilon: Threshold = 0.1  # symmetric threshold on r: the clip and the regulariser's gain |A|/ε
    rpe_coef: NonNegative = 1.0  # κ, the regulariser's weight (0: the clipped surrogate alone)
    aggregation: Aggregation = "seq-mean-token-mean"


def relative_log_ratio(log_ratio: Tensor, relative_beta: float) -> Tensor:
    """log r = log(π_θ / (b π_θ + (1−b) π_old)) = −log(b + (1−b) e^{−x}) from x = log(π_θ/π_old).

    A logaddexp, so it is finite and has a finite gradient for any finite x; at b = 0 the first
    term is log 0 = −inf and log r = x exactly."""
    log_b = torch.full_like(log_ratio, math.log(relative_beta) if relative_beta > 0 else -math.inf)
    return -torch.logaddexp(log_b, math.log1p(-relative_beta) - log_ratio)


def ppo_rpe_on_policy_weights(batch: PolicyBatch, options: PPORPEConfig, norms: StepNormalizers) -> Tensor:
    """(1 − b) A_{i,t} × the aggregation weight: at θ = θ_old, ∂r/∂ℓ = 1 − b and the regulariser is flat."""
    return (1.0 - options.relative_beta) * token_reinforce_weights(batch, options, norms)


@register_objective(
    "ppo_rpe", options=PPORPEConfig, default_advantage="group_norm", uses_old_logprobs=True,
    on_policy_weights=ppo_rpe_on_policy_weights,
)
def ppo_rpe_loss(
    batch: PolicyBatch, config: PPORPEConfig, norms: StepNormalizers
) -> tuple[Tensor, dict[str, Tensor]]:
    advantages = batch.token_advantages()
    log_relative = relative_log_ratio(batch.current_logprobs() - batch.behaviour_logprobs(), config.relative_beta)
    surrogate = clipped_surrogate(log_relative, advantages, config.epsilon, config.epsilon,
                                  max_log_ratio=config.max_log_ratio)
    relative = torch.exp(log_relative.clamp(max=config.max_log_ratio))
    divergence = 0.5 * (relative - 1.0) ** 2  # the integrand of PE_b(π_θ‖π_old)
    per_token = -surrogate.value + config.rpe_coef * (advantages.abs() / config.epsilon) * divergence
    kl = kl_per_token(batch, config)
    if kl is not None:
        per_token = per_token + config.beta * kl
    loss = aggregate(per_token, batch.mask, config.aggregation, norms)
    metrics = {
        "clip_frac_low": masked_fraction(surrogate.clipped_low, batch.mask),
        "clip_frac_high": masked_fraction(surrogate.clipped_high, batch.mask),
        "rpe_mean": masked_stats(divergence, batch.mask, "rpe")["rpe_mean"],
        **masked_stats(relative, batch.mask, "relative_ratio"),
    }
    if kl is not None:
        metrics["kl"] = masked_stats(kl, batch.mask, "kl")["kl_mean"]
    return loss, metrics
