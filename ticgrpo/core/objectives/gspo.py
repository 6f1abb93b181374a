"""`gspo`: Group Sequence Policy Optimization (spec §4.4).

s_i = exp((1/|o_i|) Σ_t m_{i,t} (ℓ_{i,t} − ℓ^old_{i,t}))   (geometric mean of the token ratios);
surrogate_i = min(s_i A_i, clip(s_i, 1−ε_low, 1+ε_high) A_i);
L_i = −surrogate_i + β (1/|o_i|) Σ_t m KL_{i,t};  loss = (1/N_seq) Σ_i L_i.
Defaults ε_low = 3e-4, ε_high = 4e-4 (the paper's values), β = 0, advantage `group_norm`.

At θ = θ_old, ∂loss/∂ℓ_{i,t} = −A_i m_{i,t} / (|o_i| N_seq): the on-policy gradient with
sequence-mean token weights (the same as `grpo`'s at θ_old); away from it the whole
sequence shares one ratio, and one clip decision.

Zheng et al., "Group Sequence Policy Optimization" (arXiv 2507.18071).
"""

from __future__ import annotations

import torch
from pydantic.dataclasses import dataclass as pydantic_dataclass
from torch import Tensor

from ticgrpo.core.aggregation import masked_sum, sequence_mean
from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.objectives._common import (
    EpsilonLow,
    NonNegative,
    PenaltyConfig,
    clipped_surrogate,
    kl_per_token,
    sequence_reinforce_weights,
)
from ticgrpo.core.objectives.registry import register_objective
from ticgrpo.core.options import OPTIONS_CONFIG


@pydantic_dataclass(config=OPTIONS_CONFIG)
class GSPOConfig(PenaltyConfig):
    epsilon_low: EpsilonLow | None = 3e-4
    epsilon_high: NonNegative | None = 4e-4


@register_objective(
    "gspo", options=GSPOConfig, default_advantage="group_norm", uses_old_logprobs=True, sequence_advantages=True,
    on_policy_weights=lambda batch, options, norms: sequence_reinforce_weights(batch, norms, token_mean=True),
)
def gspo_loss(
    batch: PolicyBatch, config: GSPOConfig, norms: StepNormalizers
) -> tuple[Tensor, dict[str, Tensor]]:
    mask = batch.float_mask
    log_s = sequence_mean(batch.current_logprobs() - batch.behaviour_logprobs(), mask)
    surrogate = clipped_surrogate(
        log_s, batch.sequence_advantages(), config.epsilon_low, config.epsilon_high, None, config.max_log_ratio
    )
    per_sequence = -surrogate.value
    kl = kl_per_token(batch, config)
    if kl is not None:
        per_sequence = per_sequence + config.beta * sequence_mean(kl, mask)
    metrics = {
        **sequence_stats(log_s, mask, "log_ratio"),
        **sequence_fractions(mask, clip_frac_low=surrogate.clipped_low, clip_frac_high=surrogate.clipped_high),
    }
    if kl is not None:
        metrics["kl"] = masked_sum(kl, mask) / mask.sum().clamp(min=1.0)
    return sequence_level_loss(per_sequence, mask, norms), metrics


def sequence_level_loss(per_sequence: Tensor, mask: Tensor, norms: StepNormalizers) -> Tensor:
    """(1/N_seq) Σ_i L_i over real rows (fully padded rows contribute exactly 0)."""
    real = mask.sum(dim=1) > 0
    return torch.where(real, per_sequence, torch.zeros_like(per_sequence)).sum() / norms.num_sequences


def sequence_stats(values: Tensor, mask: Tensor, prefix: str) -> dict[str, Tensor]:
    """mean/min/max of a per-sequence quantity over real rows (detached; 0 when none)."""
    picked = values.detach()[mask.sum(dim=1) > 0].to(torch.float32)
    if picked.numel() == 0:
        zero = values.new_zeros((), dtype=torch.float32)
        return {f"{prefix}_mean": zero, f"{prefix}_min": zero, f"{prefix}_max": zero}
    return {f"{prefix}_mean": picked.mean(), f"{prefix}_min": picked.min(), f"{prefix}_max": picked.max()}


def sequence_fractions(mask: Tensor, **flags: Tensor) -> dict[str, Tensor]:
    """Fraction of real rows where each [B] flag holds."""
    real = mask.sum(dim=1) > 0
    count = real.sum().clamp(min=1).to(torch.float32)
    return {name: (flag & real).sum().to(torch.float32) / count for name, flag in flags.items()}
