"""`grpo`: token-level importance ratio with PPO clipping (spec §4.1).

ρ_{i,t} = exp(ℓ_{i,t} − ℓ^old_{i,t});  s_{i,t} = min(ρ A_i, clip(ρ, 1−ε_low, 1+ε_high) A_i);
per-token loss −s_{i,t} + β·KL_{i,t}, aggregated (default `seq-mean-token-mean`, i.e.
1/G Σ_i 1/|o_i| Σ_t).

Shao et al., "DeepSeekMath" (arXiv 2402.03300), the GRPO objective; PPO clipping from
Schulman et al. (arXiv 1707.06347). TIC-GRPO's claim 1 (arXiv 2508.02833): this update
estimates the policy gradient at π_old, not at π_θ.
"""

from __future__ import annotations

from pydantic.dataclasses import dataclass as pydantic_dataclass
from torch import Tensor

from ticgrpo.core.aggregation import Aggregation, aggregate
from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.objectives._common import (
    EpsilonLow,
    NonNegative,
    PenaltyConfig,
    RatioCap,
    clipped_surrogate,
    kl_per_token,
    masked_fraction,
    masked_stats,
    token_reinforce_weights,
)
from ticgrpo.core.objectives.registry import register_objective
from ticgrpo.core.options import OPTIONS_CONFIG


@pydantic_dataclass(config=OPTIONS_CONFIG)
class GRPOConfig(PenaltyConfig):
    epsilon_low: EpsilonLow | None = 0.2
    epsilon_high: NonNegative | None = 0.2
    ratio_cap: RatioCap | None = None  # dual clip for A < 0 (off in GRPO)
    aggregation: Aggregation = "seq-mean-token-mean"


@register_objective(
    "grpo", options=GRPOConfig, default_advantage="group_norm", uses_old_logprobs=True,
    on_policy_weights=token_reinforce_weights,
)
def grpo_loss(
    batch: PolicyBatch, config: GRPOConfig, norms: StepNormalizers
) -> tuple[Tensor, dict[str, Tensor]]:
    logprobs = batch.current_logprobs()
    log_ratio = logprobs - batch.behaviour_logprobs()
    surrogate = clipped_surrogate(
        log_ratio,
        batch.token_advantages(),
        config.epsilon_low,
        config.epsilon_high,
        config.ratio_cap,
        config.max_log_ratio,
    )
    per_token = -surrogate.value
    kl = kl_per_token(batch, config)
    if kl is not None:
        per_token = per_token + config.beta * kl
    loss = aggregate(per_token, batch.mask, config.aggregation, norms)
    metrics = {
        "clip_frac_low": masked_fraction(surrogate.clipped_low, batch.mask),
        "clip_frac_high": masked_fraction(surrogate.clipped_high, batch.mask),
        **masked_stats(surrogate.ratio, batch.mask, "ratio"),
    }
    if kl is not None:
        metrics["kl"] = masked_stats(kl, batch.mask, "kl")["kl_mean"]
    return loss, metrics
