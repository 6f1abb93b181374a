"""How per-token terms become one scalar (spec §3).

Every mode divides by counts of the whole optimizer step (`StepNormalizers`), never by
counts of the micro-batch at hand, so that the gradients of micro-batches add up to the
gradient of the step, however it is split across micro-batches or processes.
"""

from __future__ import annotations

import typing
from typing import Literal

import torch
from torch import Tensor

from ticgrpo.core.batch import StepNormalizers

# an objective option's type (`aggregation: Aggregation = "token-mean"`): its choices are these
Aggregation = Literal[
    "seq-mean-token-mean",
    "token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
]
AGGREGATIONS: tuple[str, ...] = typing.get_args(Aggregation)


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
    masked = only_real(per_token, mask)
    if mode == "token-mean":
        return masked.sum() / norms.num_tokens
    if mode == "seq-mean-token-mean":
        # Fully padded rows have sum 0; clamping the length keeps them at exactly 0.
        return (masked.sum(dim=1) / _lengths(mask, per_token.dtype)).sum() / norms.num_sequences
    if mode == "seq-mean-token-sum":
        return masked.sum() / norms.num_sequences
    if norms.max_new_tokens is None:
        raise ValueError("aggregation 'seq-mean-token-sum-norm' needs max_new_tokens in StepNormalizers")
    return masked.sum() / (norms.num_sequences * norms.max_new_tokens)


def aggregation_weights(mask: Tensor, mode: str, norms: StepNormalizers, dtype: torch.dtype = torch.float32) -> Tensor:
    """[B, T] weight of each token in `aggregate`: aggregate(x, mask, mode, norms) = Σ w·x
    (0 on padding). What an objective's declared on-policy gradient is built from."""
    check_aggregation(mode)
    m = mask.to(dtype)
    if mode == "token-mean":
        return m / norms.num_tokens
    if mode == "seq-mean-token-mean":
        return m / _lengths(mask, dtype)[:, None] / norms.num_sequences
    if mode == "seq-mean-token-sum":
        return m / norms.num_sequences
    if norms.max_new_tokens is None:
        raise ValueError("aggregation 'seq-mean-token-sum-norm' needs max_new_tokens in StepNormalizers")
    return m / (norms.num_sequences * norms.max_new_tokens)


def only_real(values: Tensor, mask: Tensor) -> Tensor:
    """`values` with exactly 0 at padded positions, whatever they held there.

    Selecting instead of multiplying by the mask: inf·0 and NaN·0 are NaN, so a product would
    still read the padding, in the value and in the gradient."""
    return torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype, device=values.device))


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Σ over real positions (of the whole tensor, or along `dim`)."""
    real = only_real(values, mask)
    return real.sum() if dim is None else real.sum(dim=dim)


def sequence_mean(per_token: Tensor, mask: Tensor) -> Tensor:
    """[B] per-sequence token mean (0 for fully padded rows)."""
    return masked_sum(per_token, mask, dim=1) / _lengths(mask, per_token.dtype)


def _lengths(mask: Tensor, dtype: torch.dtype) -> Tensor:
    return mask.to(dtype).sum(dim=1).clamp(min=1.0)
