"""Training/inference mismatch: correcting for sampling with an inference engine.

An inference engine (vLLM: `ticgrpo.rollout.vllm`) samples o ~ μ, where μ is the old policy as
the engine computes it: other kernels, other precision, sometimes other weights for a moment.
The trainer's log-probs ℓ^old of the same tokens differ from the engine's ℓ^μ, so the batch is
slightly off-policy even at μ = 1 inner epoch. Truncated importance sampling (TIS; Yao et al.,
"Your Efficient RL Framework Secretly Brings You Off-Policy RL Training", 2025) reweights each
sample by π_old/μ, truncated at C to bound the variance:

    token:     w_{i,t} = min(exp(ℓ^old_{i,t} − ℓ^μ_{i,t}), C)
    sequence:  w_i     = min(exp(Σ_t m_{i,t}(ℓ^old_{i,t} − ℓ^μ_{i,t})), C)

The weight multiplies the advantage: every objective in `ticgrpo.core.objectives` is linear in a
token's (or sequence's) advantage, and w > 0 never changes its sign — nor, hence, which clip
branch applies — so A·w is exactly the policy-gradient term scaled by w (the KL penalty is
not). An objective registered with `sequence_advantages` reads one advantage per sequence:
it needs a correction whose `CorrectionSpec.sequence_level` is true (`sequence`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ticgrpo.registry import Registry

# (log π_old/μ [B, T], already 0 on padding; mask [B, T] in the wide dtype)
#   -> (log-weights before truncation: [B, T] or [B]; which of them count: same shape)
LogWeightFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class CorrectionSpec:
    name: str
    log_weights: LogWeightFn
    sequence_level: bool  # one weight per sequence ([B]); false: one per token ([B, T])


CORRECTIONS: Registry[CorrectionSpec] = Registry("behavior correction mode")


def _token_log_weights(log_ratio: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    return log_ratio, mask


def _sequence_log_weights(log_ratio: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    return log_ratio.sum(dim=1), (mask.sum(dim=1) > 0).to(mask.dtype)


CORRECTIONS.add(CorrectionSpec("token", _token_log_weights, sequence_level=False))
CORRECTIONS.add(CorrectionSpec("sequence", _sequence_log_weights, sequence_level=True))

MODES = tuple(CORRECTIONS.names())


@dataclass
class BehaviorCorrection:
    weights: Tensor  # [B, T] (token) or [B] (sequence), float32 (float64 for float64 inputs), detached
    metrics: dict[str, float]

    def apply(self, advantages: Tensor) -> Tensor:
        """A·w: [B] advantages become [B, T] under token weights; stay [B] under sequence weights."""
        w = self.weights.to(advantages.device)
        adv = advantages.to(torch.promote_types(advantages.dtype, w.dtype))
        return adv[:, None] * w if w.dim() == 2 and adv.dim() == 1 else adv * w


def mismatch_metrics(old_logprobs: Tensor, behavior_logprobs: Tensor, mask: Tensor) -> dict[str, float]:
    """How far the engine's log-probs are from the trainer's on the sampled tokens.

    `mismatch/kl_k3`: the mean over tokens of r − 1 − log r with r = π_old/μ, Schulman's k3
    estimate of KL(μ ‖ π_old) per token (the tokens are drawn from μ); ≥ 0, and 0 iff the
    log-probs agree. `mismatch/abs_diff_mean|max`: |ℓ^old − ℓ^μ| over tokens."""
    dtype = _wide(old_logprobs)
    m = mask.to(dtype)
    d = (old_logprobs.to(dtype) - behavior_logprobs.to(dtype)) * m  # log r
    tokens = m.sum().clamp(min=1.0)
    k3 = (torch.expm1(d) - d) * m
    return {
        "mismatch/kl_k3": float(k3.sum() / tokens),
        "mismatch/abs_diff_mean": float(d.abs().sum() / tokens),
        "mismatch/abs_diff_max": float(d.abs().max()) if d.numel() else 0.0,
    }


def behavior_correction(
    old_logprobs: Tensor, behavior_logprobs: Tensor, mask: Tensor, mode: str, cap: float = 2.0
) -> BehaviorCorrection:
    """TIS weights (see the module docstring) and their statistics; `mode` names a CORRECTIONS entry."""
    spec = CORRECTIONS.spec(mode)
    if not cap >= 1.0:
        raise ValueError(f"behavior correction cap must be >= 1, got {cap}")
    dtype = _wide(old_logprobs)
    m = mask.to(dtype)
    log_ratio = (old_logprobs.detach().to(dtype) - behavior_logprobs.detach().to(dtype)) * m
    log_weights, counted = spec.log_weights(log_ratio, m)
    raw = log_weights.clamp(max=30.0).exp()
    weights = raw.clamp(max=cap) * counted
    units = counted.sum().clamp(min=1.0)
    metrics = mismatch_metrics(old_logprobs, behavior_logprobs, mask)
    metrics.update({
        "mismatch/weight_mean": float((weights * counted).sum() / units),
        "mismatch/truncated_frac": float(((raw > cap).to(dtype) * counted).sum() / units),
    })
    return BehaviorCorrection(weights, metrics)


def _wide(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32
