"""How per-token terms become one scalar (spec §3).

Every mode divides by counts of the whole optimizer step (`StepNormalizers`), never by
counts of the micro-batch at hand, so that the gradients of micro-batches add up to the
gradient of the step, however it is split across micro-batches or processes.
"""

from __future__ import annotations

from torch import Tensor

from ticgrpo.batch import StepNormalizers

AGGREGATIONS = (
    "seq-mean-token-mean",
    "token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
)


def check_aggregation(mode: str) -> str:
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; choose one of: {', '.join(AGGREGATIONS)}")
    return mode


def aggregate(per_token: Tensor, mask: Tensor, mode: str, norms: StepNormalizers) -> Tensor:
    """Reduce [B, T] per-token terms under `mask` to a scalar.

    seq-mean-token-mean:      (1/N_seq) Σ_i (Σ_t m x_{i,t}) / |o_i|      (GRPO)
    token-mean:               Σ_{i,t} m x_{i,t} / N_tok                  (DAPO)
    seq-mean-token-sum:       (1/N_seq) Σ_i Σ_t m x_{i,t}
    seq-mean-token-sum-norm:  (1/N_seq) Σ_i Σ_t m x_{i,t} / L_max        (Dr. GRPO)
    """
    check_aggregation(mode)
    m = mask.to(per_token.dtype)
    masked = per_token * m
    if mode == "token-mean":
        return masked.sum() / norms.num_tokens
    if mode == "seq-mean-token-mean":
        # Fully padded rows have sum 0; clamping the length keeps them at exactly 0.
        return (masked.sum(dim=1) / m.sum(dim=1).clamp(min=1.0)).sum() / norms.num_sequences
    if mode == "seq-mean-token-sum":
        return masked.sum() / norms.num_sequences
    if norms.max_new_tokens is None:
        raise ValueError("aggregation 'seq-mean-token-sum-norm' needs max_new_tokens in StepNormalizers")
    return masked.sum() / (norms.num_sequences * norms.max_new_tokens)


def sequence_mean(per_token: Tensor, mask: Tensor) -> Tensor:
    """[B] per-sequence token mean (0 for fully padded rows)."""
    m = mask.to(per_token.dtype)
    return (per_token * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
