"""`gmpo`: Geometric-Mean Policy Optimization (spec §4.4).

Per-token log-ratio x_{i,t} = ℓ_{i,t} − ℓ^old_{i,t}, clipped sign-aware in log space
(clip range (e^{−ε}, e^{ε}) on the ratio):  A_i > 0: min(x, ε);  A_i < 0: max(x, −ε);
s_i = exp((1/|o_i|) Σ_t m x̃_{i,t})  (geometric mean of the clipped token ratios);
L_i = −A_i s_i + β (1/|o_i|) Σ_t m KL_{i,t};  loss = (1/N_seq) Σ_i L_i.
This is the paper's sgn(A)·(Π_t |min(ρ A, clip(ρ) A)|)^{1/|o|} written in log space.
Defaults ε = 0.4, β = 0, advantage `group_norm`.

A clipped token has zero gradient; the geometric mean of the others is bounded below and
the mean log-ratio is capped at `max_log_ratio` before exp (no overflow for A_i < 0 and
huge ratios).

Zhao et al., "Geometric-Mean Policy Optimization" (arXiv 2507.20673).
"""

from __future__ import annotations

import torch
from pydantic.dataclasses import dataclass as pydantic_dataclass
from torch import Tensor

from ticgrpo.core.aggregation import masked_sum, sequence_mean
from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.objectives._common import (
    NonNegative,
    PenaltyConfig,
    kl_per_token,
    masked_fraction,
    sequence_reinforce_weights,
)
from ticgrpo.core.objectives.gspo import sequence_level_loss, sequence_stats
from ticgrpo.core.objectives.registry import register_objective
from ticgrpo.core.options import OPTIONS_CONFIG


@pydantic_dataclass(config=OPTIONS_CONFIG)
class GMPOConfig(PenaltyConfig):
    epsilon: NonNegative | None = 0.4  # log-space clip; None: no clipping


@register_objective(
    "gmpo", options=GMPOConfig, default_advantage="group_norm", uses_old_logprobs=True, sequence_advantages=True,
    on_policy_weights=lambda batch, options, norms: sequence_reinforce_weights(batch, norms, token_mean=True),
)
def gmpo_loss(
    batch: PolicyBatch, config: GMPOConfig, norms: StepNormalizers
) -> tuple[Tensor, dict[str, Tensor]]:
    mask = batch.float_mask
    log_ratio = batch.current_logprobs() - batch.behaviour_logprobs()
    advantages = batch.sequence_advantages()
    positive = (advantages >= 0)[:, None].expand_as(log_ratio)
    eps = config.epsilon
    if eps is None:
        clipped = log_ratio
        clip_high = clip_low = torch.zeros_like(positive)
    else:
        clipped = torch.where(positive, log_ratio.clamp(max=eps), log_ratio.clamp(min=-eps))
        detached = log_ratio.detach()
        clip_high = (advantages > 0)[:, None] & (detached > eps)
        clip_low = (advantages < 0)[:, None] & (detached < -eps)
    log_s = sequence_mean(clipped, mask)
    per_sequence = -advantages * torch.exp(log_s.clamp(max=config.max_log_ratio))
    kl = kl_per_token(batch, config)
    if kl is not None:
        per_sequence = per_sequence + config.beta * sequence_mean(kl, mask)
    metrics = {
        "clip_frac_low": masked_fraction(clip_low, mask),
        "clip_frac_high": masked_fraction(clip_high, mask),
        **sequence_stats(sequence_mean(log_ratio.detach(), mask), mask, "log_ratio"),
    }
    if kl is not None:
        metrics["kl"] = masked_sum(kl, mask) / mask.sum().clamp(min=1.0)
    return sequence_level_loss(per_sequence, mask, norms), metrics
