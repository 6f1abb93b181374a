"""`gtpo`: Group-relative Trajectory-based Policy Optimization (spec §4.4).

On-policy (ratio ≡ 1, no clip, β = 0 by default), with two corrections to GRPO's update:

Entropy control. H_i = token-mean entropy of completion i (batch.entropies, detached);
H_i > τ (0.7) ⇒ A_i = 0 (the completion is filtered out); otherwise A_i ← A_i − γ·H_i (γ 0.1).

Conflict tokens. Within a group, token t of completion i is a conflict token when some
completion j of the group with advantage of the opposite sign has the same token id at the
same position, inside the leading run of equal tokens matched from the start, or inside the
run matched from the end (positions counted back from each completion's last token).
Token weights: λ⁺ = 2.0 on conflict tokens of positive completions (amplified), λ⁻ = 0 on
those of negative ones (their negative update is skipped), 1 everywhere else.

    L_i = (1/|o_i|) Σ_t m_{i,t} (−A'_i λ_{i,t} ℓ_{i,t}) / max(1, c_i)   (c_i = conflict-token count of i),
    loss = (1/N_seq) Σ_i L_i  (aggregation `seq-mean-token-mean`; + β·KL per token if β > 0).

[choice] The sign that defines conflicts is the sign of the advantage given to the
objective (the reward comparison), before the entropy adjustment; A' (after it) scales the
loss. [choice] The entropy penalty applies to every unfiltered completion, including those
of constant-reward groups (A = 0 ⇒ A' = −γH), as the spec's formula reads.
[choice] Without `group_ids` the whole batch is one group. Micro-batches must hold whole
groups (conflicts are found within the micro-batch).

Simoni, Fontana, Rossolini, Saracino, "GTPO: Trajectory-Based Policy Optimization in Large
Language Models" (arXiv 2508.03772).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic.dataclasses import dataclass as pydantic_dataclass
from torch import Tensor

from ticgrpo.core.aggregation import Aggregation, aggregate, aggregation_weights, sequence_mean
from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.objectives._common import (
    NonNegative,
    PenaltyConfig,
    kl_per_token,
    masked_fraction,
    masked_stats,
)
from ticgrpo.core.objectives.gspo import sequence_fractions
from ticgrpo.core.objectives.registry import register_objective
from ticgrpo.core.options import OPTIONS_CONFIG


@pydantic_dataclass(config=OPTIONS_CONFIG)
class GTPOConfig(PenaltyConfig):
    entropy_threshold: float | None = 0.7  # τ; None: no filter
    entropy_penalty: NonNegative = 0.1  # γ
    conflict_weight_positive: NonNegative = 2.0  # λ⁺
    conflict_weight_negative: NonNegative = 0.0  # λ⁻
    normalize_by_conflicts: bool = True  # divide L_i by max(1, c_i)
    aggregation: Aggregation = "seq-mean-token-mean"


def _reverse_rows(x: Tensor, lengths: Tensor) -> Tensor:
    """Row i's first lengths_i entries reversed (index k ↔ lengths_i − 1 − k); rest kept in place."""
    positions = torch.arange(x.shape[1], device=x.device)[None, :]
    inside = positions < lengths[:, None]
    index = torch.where(inside, lengths[:, None] - 1 - positions, positions)
    return torch.gather(x, 1, index)


def _leading_runs(tokens: Tensor, valid: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
    """[B, T] bool: inside the leading run of equal tokens with some opposite-sign row."""
    flags = torch.zeros_like(valid)
    pos_rows, neg_rows = positive.nonzero().flatten(), negative.nonzero().flatten()
    if pos_rows.numel() == 0 or neg_rows.numel() == 0:
        return flags
    both = valid[pos_rows, None, :] & valid[None, neg_rows, :]
    same = (tokens[pos_rows, None, :] == tokens[None, neg_rows, :]) & both
    run = torch.cumprod(same.to(torch.int8), dim=2).bool()  # [n_pos, n_neg, T]
    flags[pos_rows] = run.any(dim=1)
    flags[neg_rows] = run.any(dim=0)
    return flags


def conflict_tokens(token_ids: Tensor, mask: Tensor, advantages: Tensor, group_ids: Tensor | None) -> Tensor:
    """[B, T] bool conflict-token flags (runs matched from the start and from the end).

    Assumes right-padded rows (the real tokens of a row are its first |o_i| positions)."""
    valid = mask.bool()
    lengths = valid.sum(dim=1)
    reversed_tokens, reversed_valid = _reverse_rows(token_ids, lengths), _reverse_rows(valid, lengths)
    groups = torch.zeros_like(lengths) if group_ids is None else group_ids
    flags = torch.zeros_like(valid)
    for group in torch.unique(groups):
        rows = (groups == group).nonzero().flatten()
        positive, negative = advantages[rows] > 0, advantages[rows] < 0
        start = _leading_runs(token_ids[rows], valid[rows], positive, negative)
        end = _leading_runs(reversed_tokens[rows], reversed_valid[rows], positive, negative)
        flags[rows] = start | _reverse_rows(end, lengths[rows])
    return flags & valid


@dataclass(frozen=True)
class _TokenCoefficients:
    coefficients: Tensor  # [B, T] c with per-token loss −c·ℓ: A'_i λ_{i,t} / max(1, c_i)
    filtered: Tensor  # [B] bool: entropy above τ
    conflict: Tensor  # [B, T] bool conflict tokens
    entropies: Tensor  # [B, T] the batch's (checked present)


def _token_coefficients(batch: PolicyBatch, config: GTPOConfig) -> _TokenCoefficients:
    if batch.entropies is None or batch.token_ids is None:
        raise ValueError("gtpo needs token_ids and entropies in the batch (conflict tokens, entropy filter)")
    dtype = batch.current_logprobs().dtype
    mask = batch.float_mask.to(dtype)
    advantages = batch.sequence_advantages()
    entropy = sequence_mean(batch.entropies.detach().to(dtype), mask)
    if config.entropy_threshold is None:
        filtered = torch.zeros_like(entropy, dtype=torch.bool)
    else:
        filtered = entropy > config.entropy_threshold
    adjusted = torch.where(filtered, torch.zeros_like(advantages), advantages - config.entropy_penalty * entropy)
    conflict = conflict_tokens(batch.token_ids, batch.mask, advantages, batch.group_ids)
    weights = torch.ones_like(mask)
    weights = torch.where(conflict & (advantages > 0)[:, None], config.conflict_weight_positive, weights)
    weights = torch.where(conflict & (advantages < 0)[:, None], config.conflict_weight_negative, weights)
    coefficients = adjusted[:, None] * weights
    if config.normalize_by_conflicts:
        coefficients = coefficients / conflict.sum(dim=1).clamp(min=1).to(dtype)[:, None]
    return _TokenCoefficients(coefficients, filtered, conflict, batch.entropies)


def _on_policy_weights(batch: PolicyBatch, config: GTPOConfig, norms: StepNormalizers) -> Tensor:
    """The loss is linear in ℓ: its gradient is the coefficients times the aggregation weights, everywhere."""
    coefficients = _token_coefficients(batch, config).coefficients
    return coefficients * aggregation_weights(batch.mask, config.aggregation, norms, coefficients.dtype)


@register_objective(
    "gtpo", options=GTPOConfig, default_advantage="group_norm", uses_old_logprobs=False, sequence_advantages=True,
    couples_group=True, needs_token_ids=True, needs_entropies=True, on_policy_weights=_on_policy_weights,
)
def gtpo_loss(
    batch: PolicyBatch, config: GTPOConfig, norms: StepNormalizers
) -> tuple[Tensor, dict[str, Tensor]]:
    logprobs = batch.current_logprobs()
    mask = batch.float_mask.to(logprobs.dtype)
    terms = _token_coefficients(batch, config)
    filtered, conflict = terms.filtered, terms.conflict
    per_token = -terms.coefficients * logprobs
    kl = kl_per_token(batch, config)
    if kl is not None:
        per_token = per_token + config.beta * kl
    loss = aggregate(per_token, batch.mask, config.aggregation, norms)
    metrics = {
        **sequence_fractions(mask, entropy_filtered_frac=filtered),
        "conflict_frac": masked_fraction(conflict, mask),
        "entropy_mean": masked_stats(terms.entropies, mask, "entropy")["entropy_mean"],
    }
    if kl is not None:
        metrics["kl"] = masked_stats(kl, mask, "kl")["kl_mean"]
    return loss, metrics
