"""Independent, deliberately naive reference implementations (explicit loops over
sequences and tokens, Python-level branching) used to check the vectorised objectives."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def naive_kl(name: str, logprob: Tensor, ref: Tensor) -> Tensor:
    x = ref - logprob
    if name == "k1":
        return -x
    if name == "k2":
        return x * x / 2
    return torch.exp(x) - x - 1


def naive_aggregate(rows: list[list[Tensor]], mode: str, n_seq: float, n_tok: float, l_max: int) -> Tensor:
    """rows[i] = the per-token terms of sequence i (only real tokens)."""
    total = torch.zeros((), dtype=torch.float64)
    for terms in rows:
        if not terms:
            continue
        row_sum = sum(terms)
        if mode == "seq-mean-token-mean":
            total = total + row_sum / len(terms) / n_seq
        elif mode == "token-mean":
            total = total + row_sum / n_tok
        elif mode == "seq-mean-token-sum":
            total = total + row_sum / n_seq
        elif mode == "seq-mean-token-sum-norm":
            total = total + row_sum / (n_seq * l_max)
        else:
            raise ValueError(mode)
    return total


def _real_tokens(mask: Tensor, i: int) -> list[int]:
    return [t for t in range(mask.shape[1]) if mask[i, t] > 0]


def naive_grpo(logp, old, ref, mask, adv, *, eps_low, eps_high, beta, kl, aggregation, n_seq, n_tok, l_max,
               no_ratio=False):
    rows = []
    for i in range(logp.shape[0]):
        terms = []
        for t in _real_tokens(mask, i):
            a = adv[i, t] if adv.dim() == 2 else adv[i]  # [B, T] per-token advantages (nthr's A')
            if no_ratio:
                s = a * logp[i, t]
            else:
                rho = torch.exp(logp[i, t] - old[i, t])
                lo = 1 - eps_low if eps_low is not None else -math.inf
                hi = 1 + eps_high if eps_high is not None else math.inf
                clipped = torch.clamp(rho, lo, hi)
                s = torch.minimum(rho * a, clipped * a)
            term = -s
            if beta:
                term = term + beta * naive_kl(kl, logp[i, t], ref[i, t])
            terms.append(term)
        rows.append(terms)
    return naive_aggregate(rows, aggregation, n_seq, n_tok, l_max)


def naive_tic_grpo(logp, old, ref, mask, adv, *, eps_low, eps_high, ratio_cap, length_normalize, beta, kl,
                   n_seq):
    total = torch.zeros((), dtype=torch.float64)
    for i in range(logp.shape[0]):
        tokens = _real_tokens(mask, i)
        if not tokens:
            continue
        log_w = sum(logp[i, t] - old[i, t] for t in tokens)
        w = torch.exp(log_w)
        c = torch.clamp(w, max=1 + eps_high) if eps_high is not None else w
        if eps_low is not None:
            c = torch.clamp(c, min=1 - eps_low)
        a = adv[i]
        surrogate = torch.minimum(w * a, c * a)
        if ratio_cap is not None and a < 0:
            surrogate = torch.maximum(surrogate, ratio_cap * a)
        if length_normalize:
            surrogate = surrogate / len(tokens)
        loss_i = -surrogate
        if beta:
            loss_i = loss_i + beta * sum(naive_kl(kl, logp[i, t], ref[i, t]) for t in tokens) / len(tokens)
        total = total + loss_i / n_seq
    return total
