"""Small autoregressive policies with a flat float64 parameter vector θ.

A policy maps θ to the [P, V] table of next-token log-probabilities, one row per prefix of the
`TrajectorySpace`: table[p, v] = log π_θ(v | prefix p). Everything else (trajectory log-probs,
J, the estimators) is computed from that table, so a policy is just `log_prob_table(θ)`.

- `tabular`: independent logits per prefix, table = log_softmax(θ.view(P, V)). Gradients of
  different prefixes never interact.
- `neural`: parameters shared across prefixes, as in an LLM. With e(·) a token embedding
  (V+1 ids, the last one BOS), p(·) a position embedding and c ∈ R^V the token counts of the prefix,
      h = tanh(W1ᵀ (e(last) + p(|prefix|) + Uᵀ c / L) + b1),   logits = W2ᵀ h + b2,
  so one update moves the distribution after every prefix that shares features.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

from ticgrpo.lab.enumerate import EOS, TrajectorySpace

POLICIES = ("tabular", "neural")


class Policy(Protocol):
    """θ (flat, float64) → [P, V] log π_θ(v | prefix p)."""

    name: str
    num_params: int

    def init(self, seed: int) -> Tensor: ...

    def log_prob_table(self, theta: Tensor) -> Tensor: ...

    def shift_eos_logit(self, theta: Tensor, shift: float) -> Tensor: ...


class TabularPolicy:
    """log π_θ(v | p) = θ[p, v] − logsumexp_u θ[p, u] (softmax per prefix)."""

    name = "tabular"

    def __init__(self, space: TrajectorySpace, init_scale: float = 1.0) -> None:
        self.space = space
        self.init_scale = init_scale
        self.num_params = space.num_prefixes * space.vocab_size

    def init(self, seed: int) -> Tensor:
        """Logits ~ N(0, init_scale²), float64."""
        gen = torch.Generator().manual_seed(seed)
        return self.init_scale * torch.randn(self.num_params, generator=gen, dtype=torch.float64)

    def log_prob_table(self, theta: Tensor) -> Tensor:
        logits = theta.view(self.space.num_prefixes, self.space.vocab_size)
        return torch.log_softmax(logits, dim=-1)

    def shift_eos_logit(self, theta: Tensor, shift: float) -> Tensor:
        """θ with `shift` added to the EOS logit after every prefix (shift < 0: longer completions)."""
        out = theta.detach().clone()
        out.view(self.space.num_prefixes, self.space.vocab_size)[:, EOS] += shift
        return out


class NeuralPolicy:
    """Shared-parameter MLP over (last token, position, token counts) of the prefix."""

    name = "neural"

    def __init__(self, space: TrajectorySpace, dim: int = 8, hidden: int = 16, init_scale: float = 1.0) -> None:
        self.space = space
        self.dim, self.hidden, self.init_scale = dim, hidden, init_scale
        v, big_l = space.vocab_size, space.max_len
        self._shapes = {
            "tok": (v + 1, dim),
            "pos": (big_l, dim),
            "cnt": (v, dim),
            "w1": (dim, hidden),
            "b1": (hidden,),
            "w2": (hidden, v),
            "b2": (v,),
        }
        self._sizes = {k: math.prod(s) for k, s in self._shapes.items()}
        self.num_params = sum(self._sizes.values())

    def init(self, seed: int) -> Tensor:
        """Embeddings ~ N(0, 1); weights ~ N(0, 1/fan_in); biases 0; all × init_scale."""
        gen = torch.Generator().manual_seed(seed)
        parts = []
        for key, shape in self._shapes.items():
            if key.startswith("b"):
                parts.append(torch.zeros(shape, dtype=torch.float64))
                continue
            std = 1.0 if key in ("tok", "pos", "cnt") else 1.0 / math.sqrt(shape[0])
            parts.append(std * torch.randn(shape, generator=gen, dtype=torch.float64))
        return self.init_scale * torch.cat([p.reshape(-1) for p in parts])

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        pieces = torch.split(theta, list(self._sizes.values()))
        return {k: p.view(self._shapes[k]) for k, p in zip(self._shapes, pieces, strict=True)}

    def log_prob_table(self, theta: Tensor) -> Tensor:
        w = self.unflatten(theta)
        s = self.space
        x = w["tok"][s.prefix_last] + w["pos"][s.prefix_len] + (s.prefix_counts / s.max_len) @ w["cnt"]
        h = torch.tanh(x @ w["w1"] + w["b1"])
        return torch.log_softmax(h @ w["w2"] + w["b2"], dim=-1)

    def shift_eos_logit(self, theta: Tensor, shift: float) -> Tensor:
        """θ with `shift` added to the output bias of EOS (shift < 0: longer completions)."""
        out = theta.detach().clone()
        self.unflatten(out)["b2"][EOS] += shift  # unflatten's views share out's storage
        return out


def make_policy(name: str, space: TrajectorySpace, init_scale: float = 1.0) -> Policy:
    """`tabular` or `neural` policy on `space`."""
    if name == "tabular":
        return TabularPolicy(space, init_scale=init_scale)
    if name == "neural":
        return NeuralPolicy(space, init_scale=init_scale)
    raise ValueError(f"unknown lab policy {name!r}; choose one of: {', '.join(POLICIES)}")
