"""`tic_grpo`: trajectory-level importance correction (spec §4.3).

log w_i = Σ_t m_{i,t} (ℓ_{i,t} − ℓ^old_{i,t});  w_i = P_θ(o_i|q) / P_old(o_i|q)
(the full product of token ratios, not GSPO's geometric mean);
upper-only clip c_i = min(w_i, 1+ε_high) [optional lower clip: c_i = max(c_i, 1−ε_low)];
surrogate_i = min(w_i A_i, c_i A_i) [optionally / |o_i| with `length_normalize`];
L_i = −surrogate_i + β (1/|o_i|) Σ_t m KL_{i,t};  loss = (1/N_seq) Σ_i L_i.
Default advantage: `length_corrected` (rewards / |o_i| before group normalisation).

For A_i < 0 the upper-only clip never binds; `ratio_cap = c` bounds that branch at c·A_i
(dual clip). At θ = θ_old the gradient is A_i Σ_t ∇ℓ_{i,t} (sequence REINFORCE), where
`grpo`'s is A_i (1/|o_i|) Σ_t ∇ℓ_{i,t}.

The clamp: log w_i is clamped at `max_log_ratio` (M = 20) before exp, on every branch that
no clip bounds first (A_i < 0 without `ratio_cap`; A_i ≥ 0 with `epsilon_high=None`). Past
it the term is frozen at e^M·A_i and the sequence's gradient is exactly 0, so w_i is bounded
by e^M, and the unclipped estimator is unbiased only while every log w_i ≤ M. The metric
`clamped_log_ratio_frac` is the fraction of sequences where the clamp bound. Since log w_i
sums |o_i| token log-ratios, a mean token log-ratio of 20/|o_i| (0.42 for 48 tokens) is enough.

Pang, Luo, Jin, "TIC-GRPO: Provable and Efficient Optimization for RLHF"
(arXiv 2508.02833). ε_high = 0.2 is our choice: the paper's value is not public.
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
    RatioCap,
    clipped_surrogate,
    kl_per_token,
    sequence_reinforce_weights,
)
from ticgrpo.core.objectives.registry import register_objective
from ticgrpo.core.options import OPTIONS_CONFIG


@pydantic_dataclass(config=OPTIONS_CONFIG)
class TICGRPOConfig(PenaltyConfig):
    epsilon_high: NonNegative | None = 0.2  # None: no upper clip (the lab's unbiased estimator)
    epsilon_low: EpsilonLow | None = None  # [choice] optional lower clip, off by default
    ratio_cap: RatioCap | None = None  # [choice] dual clip for A < 0
    length_normalize: bool = False  # [choice] divide surrogate_i by |o_i|


@register_objective(
    "tic_grpo", options=TICGRPOConfig, default_advantage="length_corrected", uses_old_logprobs=True,
    sequence_advantages=True, on_policy_weights=lambda batch, options, norms: sequence_reinforce_weights(
        batch, norms, token_mean=options.length_normalize),
)
def tic_grpo_loss(
    batch: PolicyBatch, config: TICGRPOConfig, norms: StepNormalizers
) -> tuple[Tensor, dict[str, Tensor]]:
    log_w = masked_sum(batch.current_logprobs() - batch.behaviour_logprobs(), batch.float_mask, dim=1)
    return trajectory_weight_loss(batch, config, norms, log_w)


def trajectory_weight_loss(
    batch: PolicyBatch, config: TICGRPOConfig, norms: StepNormalizers, log_w: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """The clipped sequence surrogate of the module doc for a given [B] log-weight log w_i
    (differentiable in ℓ): tic_grpo's trajectory ratio, or trajectory_reuse's balance heuristic."""
    mask = batch.float_mask
    lengths = mask.sum(dim=1)
    advantages = batch.sequence_advantages()
    surrogate = clipped_surrogate(
        log_w,
        advantages,
        config.epsilon_low,
        config.epsilon_high,
        config.ratio_cap,
        config.max_log_ratio,
    )
    per_sequence = -surrogate.value
    if config.length_normalize:
        per_sequence = per_sequence / lengths.clamp(min=1.0)
    kl = kl_per_token(batch, config)
    if kl is not None:
        per_sequence = per_sequence + config.beta * sequence_mean(kl, mask)
    real = lengths > 0  # padded rows contribute nothing, not even through A·w
    per_sequence = torch.where(real, per_sequence, torch.zeros_like(per_sequence))
    loss = per_sequence.sum() / norms.num_sequences
    log_w_real = log_w.detach()[real]
    zero = log_w.new_zeros(())
    metrics = {
        "log_w_mean": log_w_real.mean() if log_w_real.numel() else zero,
        "log_w_min": log_w_real.min() if log_w_real.numel() else zero,
        "log_w_max": log_w_real.max() if log_w_real.numel() else zero,
        "clip_frac_high": surrogate.clipped_high[real].float().mean() if real.any() else zero,
        "clip_frac_low": surrogate.clipped_low[real].float().mean() if real.any() else zero,
        "clamped_log_ratio_frac": surrogate.clamped[real].float().mean() if real.any() else zero,
    }
    if kl is not None:
        metrics["kl"] = masked_sum(kl, mask) / mask.sum().clamp(min=1.0)
    return loss, metrics
