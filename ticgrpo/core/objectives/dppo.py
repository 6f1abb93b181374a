"""`dppo_tv` and `dppo_kl`: Divergence Proximal Policy Optimization (spec §4.4).

PPO's ratio clip is replaced by a trust-region *mask* on a direct estimate of the per-token
policy divergence between π_θ and the behaviour policy (the "binary" approximation: the
sampled token against all others), applied only in the direction the update would push:

    π = exp ℓ, π_old = exp ℓ^old (per sampled token, detached);
    dppo_tv:  D = π − π_old;  drop the token when A > 0 and D > δ, or A < 0 and D < −δ;
    dppo_kl:  D = π_old log(π_old/π) + (1−π_old) log((1−π_old)/(1−π))  (binary KL ≥ 0);
              drop when D > δ and (A > 0 and π > π_old, or A < 0 and π < π_old);
    w = sg(min(ρ, C)), ρ = exp(ℓ − ℓ^old)  (truncated IS weight);
    per-token loss −keep·A·w·ℓ + β·KL_{i,t}, default aggregation `token-mean`.

Defaults δ = 0.15 (TV) / 0.05 (KL), C = 20, β = 0, advantage `group_norm`. Tokens inside the
trust region keep their full (IS-weighted) gradient; dropped ones have exactly zero.
Probabilities are formed from log-probs clamped at 0, and the (1−π_old)·log(1−π_old)
term is 0 at π_old = 1, so the mask never sees NaN.

Qi et al., "Rethinking the Trust Region in LLM Reinforcement Learning" (arXiv 2602.04879).
"""

from __future__ import annotations

import math

import torch
from pydantic.dataclasses import dataclass as pydantic_dataclass
from torch import Tensor

from ticgrpo.core.aggregation import Aggregation, aggregate
from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.objectives._common import (
    NonNegative,
    PenaltyConfig,
    Positive,
    kl_per_token,
    masked_fraction,
    masked_stats,
    token_reinforce_weights,
)
from ticgrpo.core.objectives.registry import register_objective
from ticgrpo.core.options import OPTIONS_CONFIG


@pydantic_dataclass(config=OPTIONS_CONFIG)
class DPPOTVConfig(PenaltyConfig):
    delta: NonNegative = 0.15
    is_cap: Positive | None = 20.0  # C; None: untruncated (up to max_log_ratio)
    aggregation: Aggregation = "token-mean"


@pydantic_dataclass(config=OPTIONS_CONFIG)
class DPPOKLConfig(DPPOTVConfig):
    delta: NonNegative = 0.05


def binary_tv(logprobs: Tensor, old_logprobs: Tensor) -> Tensor:
    """π − π_old of the sampled token (signed; its absolute value is the binary TV)."""
    return torch.exp(logprobs.clamp(max=0.0)) - torch.exp(old_logprobs.clamp(max=0.0))


def binary_kl(logprobs: Tensor, old_logprobs: Tensor) -> Tensor:
    """KL(Bernoulli(π_old) ‖ Bernoulli(π)) of the sampled token, ≥ 0 (inf when π = 1 ≠ π_old)."""
    log_p, log_q = logprobs.clamp(max=0.0), old_logprobs.clamp(max=0.0)
    q = torch.exp(log_q)
    rest = torch.where(q < 1, (1 - q) * (torch.log1p(-q) - torch.log1p(-torch.exp(log_p))), torch.zeros_like(q))
    return q * (log_q - log_p) + rest


def dppo_loss(
    batch: PolicyBatch, config: DPPOTVConfig, norms: StepNormalizers, divergence: str
) -> tuple[Tensor, dict[str, Tensor]]:
    logprobs = batch.current_logprobs()
    old = batch.behaviour_logprobs()
    current = logprobs.detach()
    advantages = batch.token_advantages()
    if divergence == "tv":
        moved = binary_tv(current, old)
        drop = ((advantages > 0) & (moved > config.delta)) | ((advantages < 0) & (moved < -config.delta))
        div_metric = {"tv_mean": masked_stats(moved.abs(), batch.mask, "tv")["tv_mean"]}
    else:
        kl_div = binary_kl(current, old)
        outside = kl_div > config.delta
        drop = outside & (((advantages > 0) & (current > old)) | ((advantages < 0) & (current < old)))
        div_metric = {"binary_kl_mean": masked_stats(kl_div.clamp(max=1e6), batch.mask, "kl")["kl_mean"]}
    log_ratio = current - old
    upper = config.max_log_ratio if config.is_cap is None else min(math.log(config.is_cap), config.max_log_ratio)
    weight = torch.exp(log_ratio.clamp(max=upper))
    term = -advantages * weight * logprobs
    per_token = torch.where(drop, torch.zeros_like(term), term)
    kl = kl_per_token(batch, config)
    if kl is not None:
        per_token = per_token + config.beta * kl
    loss = aggregate(per_token, batch.mask, config.aggregation, norms)
    metrics = {
        "masked_frac": masked_fraction(drop, batch.mask),
        "is_clip_frac": masked_fraction(log_ratio > upper, batch.mask),
        **div_metric,
        **masked_stats(torch.exp(log_ratio), batch.mask, "ratio"),
    }
    if kl is not None:
        metrics["kl"] = masked_stats(kl, batch.mask, "kl")["kl_mean"]
    return loss, metrics


@register_objective(
    "dppo_tv", options=DPPOTVConfig, default_advantage="group_norm", uses_old_logprobs=True,
    on_policy_weights=token_reinforce_weights,
)
def dppo_tv_loss(
    batch: PolicyBatch, config: DPPOTVConfig, norms: StepNormalizers
) -> tuple[Tensor, dict[str, Tensor]]:
    return dppo_loss(batch, config, norms, "tv")


@register_objective(
    "dppo_kl", options=DPPOKLConfig, default_advantage="group_norm", uses_old_logprobs=True,
    on_policy_weights=token_reinforce_weights,
)
def dppo_kl_loss(
    batch: PolicyBatch, config: DPPOKLConfig, norms: StepNormalizers
) -> tuple[Tensor, dict[str, Tensor]]:
    return dppo_loss(batch, config, norms, "kl")
