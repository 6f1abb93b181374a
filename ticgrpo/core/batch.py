"""The tensors a policy objective reads, and the step-level normalisers.

Shapes: B sequences (completions), T completion positions (right-padded).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class PolicyBatch:
    """Inputs of every objective in `ticgrpo.core.objectives`.

    logprobs:      [B, T] ℓ = log π_θ of the sampled tokens, differentiable (any float dtype).
    mask:          [B, T] 1 for completion tokens, 0 for padding (bool or float).
    advantages:    [B] one advantage per sequence, or [B, T] per token.
    old_logprobs:  [B, T] behaviour log-probs ℓ^old, detached; None means on-policy
                   (ℓ^old = ℓ.detach(), every ratio is exactly 1).
    ref_logprobs:  [B, T] reference-model log-probs, detached; needed only when β > 0.
    token_ids:     [B, T] sampled token ids (GTPO's conflict tokens).
    group_ids:     [B] index of the prompt group each sequence belongs to.
    entropies:     [B, T] per-token entropy of π_θ (GTPO's entropy filter, logging).
    mixture_logprobs: [B] log Σ_j (n_j/N) P_θj(o_i|q), detached: the behaviour density of a pool of
                   batches from several policy versions (`trajectory_reuse`'s balance heuristic);
                   None: each row's own ℓ^old is its behaviour.
    hidden_states: [B, T, H] last-layer hidden state at the position that produced each completion
                   token (NTHR's token influence), detached: the objective weights by them, never
                   differentiates through them.
    """

    logprobs: Tensor
    mask: Tensor
    advantages: Tensor
    old_logprobs: Tensor | None = None
    ref_logprobs: Tensor | None = None
    token_ids: Tensor | None = None
    group_ids: Tensor | None = None
    entropies: Tensor | None = None
    mixture_logprobs: Tensor | None = None
    hidden_states: Tensor | None = None

    def __post_init__(self) -> None:
        if self.logprobs.dim() != 2:
            raise ValueError(f"logprobs must be [B, T], got shape {tuple(self.logprobs.shape)}")
        if self.mask.shape != self.logprobs.shape:
            raise ValueError(
                f"mask shape {tuple(self.mask.shape)} != logprobs shape {tuple(self.logprobs.shape)}"
            )
        for name in ("old_logprobs", "ref_logprobs", "token_ids", "entropies"):
            value = getattr(self, name)
            if value is not None and value.shape != self.logprobs.shape:
                raise ValueError(
                    f"{name} shape {tuple(value.shape)} != logprobs shape {tuple(self.logprobs.shape)}"
                )
        if self.mixture_logprobs is not None and self.mixture_logprobs.shape != self.logprobs.shape[:1]:
            raise ValueError(
                f"mixture_logprobs must be [B] (one per sequence), got shape {tuple(self.mixture_logprobs.shape)} "
                f"for logprobs {tuple(self.logprobs.shape)}"
            )
        if self.hidden_states is not None and (
                self.hidden_states.dim() != 3 or self.hidden_states.shape[:2] != self.logprobs.shape):
            raise ValueError(
                f"hidden_states must be [B, T, H] with [B, T] = logprobs shape {tuple(self.logprobs.shape)}, "
                f"got shape {tuple(self.hidden_states.shape)}"
            )
        if self.advantages.shape not in (self.logprobs.shape[:1], self.logprobs.shape):
            raise ValueError(
                f"advantages must be [B] or [B, T]; got {tuple(self.advantages.shape)} "
                f"for logprobs {tuple(self.logprobs.shape)}"
            )

    @property
    def float_mask(self) -> Tensor:
        return self.mask.to(torch.float32)

    @property
    def lengths(self) -> Tensor:
        """|o_i| as float32 [B] (0 for fully padded rows)."""
        return self.float_mask.sum(dim=1)

    def current_logprobs(self) -> Tensor:
        """ℓ in float32 (ratios are always formed in float32 or wider)."""
        return _widen(self.logprobs)

    def behaviour_logprobs(self) -> Tensor:
        """ℓ^old in float32, detached; the current log-probs when the batch is on-policy."""
        old = self.logprobs.detach() if self.old_logprobs is None else self.old_logprobs.detach()
        return _widen(old)

    def token_advantages(self) -> Tensor:
        """Advantages broadcast to [B, T] in float32 (or float64)."""
        adv = _widen(self.advantages.detach())
        return adv if adv.dim() == 2 else adv[:, None].expand_as(self.logprobs)

    def sequence_advantages(self) -> Tensor:
        if self.advantages.dim() != 1:
            raise ValueError("this objective needs one advantage per sequence ([B]), got [B, T]")
        return _widen(self.advantages.detach())


@dataclass(frozen=True)
class StepNormalizers:
    """Counts over the whole optimizer step (all micro-batches, all processes).

    Passing the same normalisers to every micro-batch makes the summed gradient of the
    micro-batches equal to the gradient of the whole step, whatever the split.
    """

    num_sequences: float
    num_tokens: float
    max_new_tokens: int | None = None

    @staticmethod
    def from_mask(mask: Tensor, max_new_tokens: int | None = None) -> StepNormalizers:
        """Normalisers when the batch *is* the whole step (no accumulation)."""
        m = mask.to(torch.float32)
        num_sequences = float((m.sum(dim=1) > 0).sum().item())
        return StepNormalizers(
            num_sequences=max(num_sequences, 1.0),
            num_tokens=max(float(m.sum().item()), 1.0),
            # Without a configured budget, L_max is the longest completion present (not the
            # padded width, so that extra padding never changes the loss).
            max_new_tokens=max_new_tokens or max(int(m.sum(dim=1).max().item()), 1),
        )


def _widen(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.to(torch.float32)
