"""Advantage estimators (spec §1): rewards of P groups of G completions → advantages.

All functions are pure: `rewards` is [P, G] (one row per prompt group), `lengths` is [P, G]
(completion lengths |o_i|, needed by `length_corrected`). A group whose rewards are all
equal gets advantage exactly 0 — whatever the estimator — and is counted in
`num_zero_std` / `frac_zero_std`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ticgrpo.registry import Registry

ADVANTAGES: Registry = Registry("advantage")

DEFAULT_DELTA = 1e-4


@dataclass(frozen=True)
class AdvantageResult:
    advantages: Tensor  # [P, G]
    num_zero_std: int  # groups whose rewards are all equal (advantage 0)
    frac_zero_std: float


def compute_advantages(
    name: str, rewards: Tensor, lengths: Tensor | None = None, **options: float
) -> AdvantageResult:
    """Advantages by registry name. `options` go to the estimator (e.g. delta)."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [num_groups, group_size], got shape {tuple(rewards.shape)}")
    if rewards.shape[1] < 2:
        raise ValueError(f"group size must be at least 2 to form advantages, got {rewards.shape[1]}")
    if lengths is not None and lengths.shape != rewards.shape:
        raise ValueError(f"lengths shape {tuple(lengths.shape)} != rewards shape {tuple(rewards.shape)}")
    rewards = rewards.to(torch.float64 if rewards.dtype == torch.float64 else torch.float32)
    constant = _constant_groups(rewards)
    adv = ADVANTAGES.get(name)(rewards, lengths, **options)
    # Exactly 0 for constant groups, even where an estimator's arithmetic leaves residue.
    adv = torch.where(constant[:, None], torch.zeros_like(adv), adv)
    num_zero = int(constant.sum().item())
    return AdvantageResult(adv, num_zero, num_zero / rewards.shape[0])


def _constant_groups(rewards: Tensor) -> Tensor:
    return (rewards == rewards[:, :1]).all(dim=1)


@ADVANTAGES.register("group_norm")
def group_norm(rewards: Tensor, lengths: Tensor | None = None, delta: float = DEFAULT_DELTA) -> Tensor:
    """A_i = (r_i − mean_g r) / (std_g r + δ), Bessel-corrected std (GRPO, DeepSeekMath)."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=True)
    return (rewards - mean) / (std + delta)


@ADVANTAGES.register("length_corrected")
def length_corrected(
    rewards: Tensor, lengths: Tensor | None = None, delta: float = DEFAULT_DELTA
) -> Tensor:
    """r'_i = r_i / |o_i|, then `group_norm` on r' (TIC-GRPO's length-corrected normalisation).

    Constant-reward groups still get A = 0 (the check is on the raw rewards), so an
    all-correct group does not turn into a pure length preference.
    """
    if lengths is None:
        raise ValueError("advantage 'length_corrected' needs the completion lengths")
    return group_norm(rewards / lengths.to(rewards.dtype).clamp(min=1.0), delta=delta)


@ADVANTAGES.register("mean_only")
def mean_only(rewards: Tensor, lengths: Tensor | None = None) -> Tensor:
    """A_i = r_i − mean_g r (Dr. GRPO: no std division)."""
    return rewards - rewards.mean(dim=1, keepdim=True)


@ADVANTAGES.register("rloo")
def rloo(rewards: Tensor, lengths: Tensor | None = None) -> Tensor:
    """A_i = r_i − (Σ_{j≠i} r_j)/(G−1) (leave-one-out baseline)."""
    group_size = rewards.shape[1]
    others = (rewards.sum(dim=1, keepdim=True) - rewards) / (group_size - 1)
    return rewards - others


@ADVANTAGES.register("batch_std")
def batch_std(rewards: Tensor, lengths: Tensor | None = None, delta: float = DEFAULT_DELTA) -> Tensor:
    """A_i = (r_i − mean_g r) / (std over the whole batch + δ) (Lite-PPO)."""
    std = rewards.flatten().std(unbiased=True) if rewards.numel() > 1 else rewards.new_tensor(0.0)
    return (rewards - rewards.mean(dim=1, keepdim=True)) / (std + delta)
