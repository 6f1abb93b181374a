"""Pieces shared by the policy objectives: the clipped importance-weighted surrogate and
the KL penalty. Pure tensor functions; no model, no optimizer."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from pydantic import AfterValidator, Field
from pydantic.dataclasses import dataclass as pydantic_dataclass
from torch import Tensor

from ticgrpo.core.aggregation import aggregation_weights, only_real
from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.kl import KL_ESTIMATORS, token_kl
from ticgrpo.core.options import OPTIONS_CONFIG

# Option types shared by the objectives' options classes: the range is part of the type, so a
# subclass that changes a default keeps the range by reusing the type.
NonNegative = Annotated[float, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]
EpsilonLow = Annotated[float, Field(ge=0, lt=1)]  # 1 − ε_low must stay a positive ratio
RatioCap = Annotated[float, Field(gt=1)]  # a dual clip at or below 1 would bind at θ = θ_old


def _known_kl_estimator(name: str) -> str:
    KL_ESTIMATORS.spec(name)  # raises, listing the registered estimators
    return name


# a registry name, not a Literal: estimators registered later are valid choices too
KLEstimatorName = Annotated[str, AfterValidator(_known_kl_estimator)]


@pydantic_dataclass(config=OPTIONS_CONFIG)
class PenaltyConfig:
    """KL penalty β·KL(π_θ‖π_ref) added to the loss; β = 0 needs no reference model."""

    beta: NonNegative = 0.0
    kl_estimator: KLEstimatorName = "k3"
    # Log-ratios are clamped here before exp() so that no branch overflows. Past the clamp a
    # term is constant (zero gradient); per token that takes a probability moved by e^20 ≈ 5e8,
    # but tic_grpo's trajectory log-ratio sums the tokens and reaches it far sooner.
    max_log_ratio: Positive = 20.0


@dataclass(frozen=True)
class ClippedSurrogate:
    value: Tensor  # surrogate (to be maximised), same shape as log_ratio
    ratio: Tensor  # exp(log_ratio), detached, for metrics (may be inf)
    clipped_low: Tensor  # bool: A < 0 and ratio < 1 − ε_low (zero gradient)
    clipped_high: Tensor  # bool: A > 0 and ratio > 1 + ε_high (zero gradient)
    # bool: log_ratio > max_log_ratio on a branch that no ε clip or ratio_cap bounds first:
    # the term is frozen at e^max_log_ratio·A and its gradient is exactly 0
    clamped: Tensor


def clipped_surrogate(
    log_ratio: Tensor,
    advantages: Tensor,
    epsilon_low: float | None,
    epsilon_high: float | None,
    ratio_cap: float | None = None,
    max_log_ratio: float = 20.0,
) -> ClippedSurrogate:
    """min(ρ A, clip(ρ, 1−ε_low, 1+ε_high) A), written branch by branch.

    For A ≥ 0 the PPO min equals A·min(ρ, 1+ε_high); for A < 0 it equals A·max(ρ, 1−ε_low),
    optionally bounded by the dual clip A·min(·, ratio_cap). Each branch is an exp of a
    *clamped* log-ratio, so a clipped branch has exactly zero gradient and no branch ever
    evaluates exp(1e4) — no inf·0 = NaN in value or gradient. `None` disables a bound.
    """
    upper_pos = max_log_ratio if epsilon_high is None else min(math.log1p(epsilon_high), max_log_ratio)
    lower_neg = -math.inf if epsilon_low is None else math.log1p(-epsilon_low)
    upper_neg = max_log_ratio if ratio_cap is None else min(math.log(ratio_cap), max_log_ratio)
    positive = advantages >= 0
    ratio_pos = torch.exp(log_ratio.clamp(max=upper_pos))
    ratio_neg = torch.exp(log_ratio.clamp(min=lower_neg, max=upper_neg))
    effective_ratio = torch.where(positive, ratio_pos, ratio_neg)
    detached = log_ratio.detach()
    beyond_clamp = detached > max_log_ratio
    clamp_bounds_positive, clamp_bounds_negative = upper_pos == max_log_ratio, upper_neg == max_log_ratio
    return ClippedSurrogate(
        value=effective_ratio * advantages,
        ratio=torch.exp(detached),
        clipped_low=(advantages < 0) & (detached < lower_neg),
        clipped_high=(advantages > 0) & (detached > upper_pos),
        clamped=beyond_clamp & ((positive & clamp_bounds_positive) | (~positive & clamp_bounds_negative)),
    )


def without_padded_values(batch: PolicyBatch) -> PolicyBatch:
    """`batch` with 0 in every padded position of every float input, and a 0 advantage for
    fully padded rows.

    Padding may hold anything: −inf from a masked logit, NaN from a bf16 overflow, garbage
    from an engine. A padded position that reached an exp() or a product would turn the loss
    NaN, and its NaN gradient would flow back into the model; selecting here, once, before any
    arithmetic, means no objective ever reads it. The gradient of a padded position is exactly 0.
    """
    real_rows = batch.mask.bool().any(dim=1)
    advantages = batch.advantages
    advantages = (only_real(advantages, batch.mask) if advantages.dim() == 2
                  else only_real(advantages, real_rows))
    per_token = {name: only_real(value, batch.mask)
                 for name in ("logprobs", "old_logprobs", "ref_logprobs", "entropies")
                 if (value := getattr(batch, name)) is not None}
    per_sequence = {} if batch.mixture_logprobs is None else {
        "mixture_logprobs": only_real(batch.mixture_logprobs, real_rows)}
    # hidden states: 0 at padded positions (selected, not multiplied) and detached (stop-gradient weights)
    hidden = {} if batch.hidden_states is None else {
        "hidden_states": torch.where(batch.mask.bool()[..., None], batch.hidden_states.detach(),
                                     torch.zeros((), dtype=batch.hidden_states.dtype))}
    return dataclasses.replace(batch, advantages=advantages, **per_token, **per_sequence, **hidden)


def token_reinforce_weights(batch: PolicyBatch, options: Any, norms: StepNormalizers) -> Tensor:
    """A_{i,t} × the token's weight in `options.aggregation`: the on-policy gradient weights of
    a token-level objective whose ratio is 1 and whose clips do not bind at θ = θ_old."""
    logprobs = batch.current_logprobs()
    return batch.token_advantages() * aggregation_weights(batch.mask, options.aggregation, norms, logprobs.dtype)


def sequence_reinforce_weights(batch: PolicyBatch, norms: StepNormalizers, token_mean: bool) -> Tensor:
    """A_i / N_seq on every real token of sequence i (divided by |o_i| when `token_mean`): the
    on-policy gradient weights of a sequence-level objective, (1/N_seq) Σ_i A_i Σ_t ∇ℓ_{i,t}
    (tic_grpo) or its per-token mean (gspo, gmpo)."""
    mask = batch.mask.to(batch.current_logprobs().dtype)
    per_sequence = batch.sequence_advantages() / norms.num_sequences
    if token_mean:
        per_sequence = per_sequence / mask.sum(dim=1).clamp(min=1.0)
    return per_sequence[:, None] * mask


def kl_per_token(batch: PolicyBatch, config: PenaltyConfig) -> Tensor | None:
    """β-free per-token KL [B, T], or None when β = 0."""
    if config.beta == 0:
        return None
    if batch.ref_logprobs is None:
        raise ValueError("beta > 0 needs ref_logprobs in the batch (a reference model)")
    return token_kl(config.kl_estimator, batch.logprobs, batch.ref_logprobs)


def masked_fraction(flags: Tensor, mask: Tensor) -> Tensor:
    real = mask.bool()
    return (flags & real).sum().to(torch.float32) / real.sum().clamp(min=1).to(torch.float32)


def masked_stats(values: Tensor, mask: Tensor, prefix: str) -> dict[str, Tensor]:
    """mean/min/max of values over mask (detached); zeros when the mask is empty."""
    keep = mask.bool()
    picked = values.detach()[keep].to(torch.float32)
    if picked.numel() == 0:
        zero = values.new_zeros((), dtype=torch.float32)
        return {f"{prefix}_mean": zero, f"{prefix}_min": zero, f"{prefix}_max": zero}
    return {f"{prefix}_mean": picked.mean(), f"{prefix}_min": picked.min(), f"{prefix}_max": picked.max()}
