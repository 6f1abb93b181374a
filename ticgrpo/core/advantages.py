"""Advantage estimators (spec §1): rewards of P groups of G completions → advantages.

All functions are pure: `rewards` is [P, G] (one row per prompt group), `lengths` is [P, G]
(completion lengths |o_i|, needed by `length_corrected`). A group whose rewards are all
equal gets advantage exactly 0 — whatever the estimator — and is counted in
`num_zero_std` / `frac_zero_std`.

Each estimator is registered with its options class (`AdvantageSpec.options`), a pydantic
dataclass whose fields are the options, their defaults and their ranges:

    compute_advantages("beta_norm", rewards, reward_min=-1.0)
    make_advantage_options("beta_norm", {"reward_min": -1})   # {"reward_min": -1.0}, validated
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass
from torch import Tensor

from ticgrpo.core.options import OPTIONS_CONFIG, build_options
from ticgrpo.registry import Registry

# (rewards [P, G], lengths [P, G] or None, the estimator's options instance) -> advantages [P, G]
AdvantageFn = Callable[[Tensor, "Tensor | None", Any], Tensor]
# what an advantage option may hold once validated (`make_advantage_options`)
AdvantageOptionValue = float | bool | None

DEFAULT_DELTA = 1e-4


@dataclass(frozen=True)
class AdvantageSpec:
    name: str
    fn: AdvantageFn
    options: type[Any]  # pydantic dataclass of the estimator's options; its defaults are the method's


ADVANTAGES: Registry[AdvantageSpec] = Registry("advantage")


@pydantic_dataclass(config=OPTIONS_CONFIG)
class NoOptions:
    """The options of an estimator that has none."""


def register_advantage(name: str, *, options: type[Any] = NoOptions) -> Callable[[AdvantageFn], AdvantageFn]:
    """Decorator registering `fn(rewards, lengths, options)` as advantage estimator `name`."""

    def decorator(fn: AdvantageFn) -> AdvantageFn:
        ADVANTAGES.add(AdvantageSpec(name, fn, options))
        return fn

    return decorator


def make_advantage_options(
    name: str, overrides: Mapping[str, Any] | None = None
) -> dict[str, AdvantageOptionValue]:
    """The validated options `overrides` for estimator `name` (numbers as float), only the
    keys given: the estimator's defaults fill the rest when it runs.

    Raises ValueError, one line: an unknown key (`unknown option 'x' for advantage
    'beta_norm'; allowed: ...`), a non-number, a non-finite number, a value out of range."""
    options = build_options(ADVANTAGES.spec(name).options, overrides, "advantage", name)
    return {key: getattr(options, key) for key in (overrides or {})}


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
    spec = ADVANTAGES.spec(name)
    estimator_options = build_options(spec.options, options, "advantage", name)
    rewards = rewards.to(torch.float64 if rewards.dtype == torch.float64 else torch.float32)
    constant = _constant_groups(rewards)
    adv = spec.fn(rewards, lengths, estimator_options)
    # Exactly 0 for constant groups, even where an estimator's arithmetic leaves residue.
    adv = torch.where(constant[:, None], torch.zeros_like(adv), adv)
    num_zero = int(constant.sum().item())
    return AdvantageResult(adv, num_zero, num_zero / rewards.shape[0])


def _constant_groups(rewards: Tensor) -> Tensor:
    return (rewards == rewards[:, :1]).all(dim=1)


@pydantic_dataclass(config=OPTIONS_CONFIG)
class GroupNormOptions:
    delta: Annotated[float, Field(ge=0)] = DEFAULT_DELTA  # added to the std


@register_advantage("group_norm", options=GroupNormOptions)
def group_norm(rewards: Tensor, lengths: Tensor | None, options: GroupNormOptions) -> Tensor:
    """A_i = (r_i − mean_g r) / (std_g r + δ), Bessel-corrected std (GRPO, DeepSeekMath)."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=True)
    return (rewards - mean) / (std + options.delta)


@register_advantage("length_corrected", options=GroupNormOptions)
def length_corrected(rewards: Tensor, lengths: Tensor | None, options: GroupNormOptions) -> Tensor:
    """r'_i = r_i / |o_i|, then `group_norm` on r' (TIC-GRPO's length-corrected normalisation).

    Constant-reward groups still get A = 0 (the check is on the raw rewards), so an
    all-correct group does not turn into a pure length preference.
    """
    if lengths is None:
        raise ValueError("advantage 'length_corrected' needs the completion lengths")
    return group_norm(rewards / lengths.to(rewards.dtype).clamp(min=1.0), lengths, options)


@register_advantage("mean_only")
def mean_only(rewards: Tensor, lengths: Tensor | None, options: NoOptions) -> Tensor:
    """A_i = r_i − mean_g r (Dr. GRPO: no std division)."""
    return rewards - rewards.mean(dim=1, keepdim=True)


@register_advantage("rloo")
def rloo(rewards: Tensor, lengths: Tensor | None, options: NoOptions) -> Tensor:
    """A_i = r_i − (Σ_{j≠i} r_j)/(G−1) (leave-one-out baseline)."""
    group_size = rewards.shape[1]
    others = (rewards.sum(dim=1, keepdim=True) - rewards) / (group_size - 1)
    return rewards - others


@register_advantage("batch_std", options=GroupNormOptions)
def batch_std(rewards: Tensor, lengths: Tensor | None, options: GroupNormOptions) -> Tensor:
    """A_i = (r_i − mean_g r) / (std over the whole batch + δ) (Lite-PPO)."""
    std = rewards.flatten().std(unbiased=True) if rewards.numel() > 1 else rewards.new_tensor(0.0)
    return (rewards - rewards.mean(dim=1, keepdim=True)) / (std + options.delta)


@pydantic_dataclass(config=OPTIONS_CONFIG)
class BetaNormOptions:
    reward_min: float = 0.0  # the reward's known bounds, mapped to [0, 1]
    reward_max: float = 1.0
    fixed_alpha: Annotated[float, Field(gt=0)] | None = None  # None: estimated from the batch
    fixed_beta: Annotated[float, Field(gt=0)] | None = None
    unbiased_variance: bool = True  # Bessel-corrected σ² of the group means
    max_weight: Annotated[float, Field(gt=0)] = 1e6  # cap of 1/Beta_pdf

    @model_validator(mode="after")
    def _bounds_ordered(self) -> BetaNormOptions:
        if self.reward_max <= self.reward_min:
            raise ValueError(
                f"beta_norm needs reward_max > reward_min, got [{self.reward_min}, {self.reward_max}]"
            )
        return self


@register_advantage("beta_norm", options=BetaNormOptions)
def beta_norm(rewards: Tensor, lengths: Tensor | None, options: BetaNormOptions) -> Tensor:
    """BNPO's Beta-normalised advantage (Xiao et al., arXiv 2506.02864).

    Rewards are mapped to [0, 1] by r' = (r − reward_min)/(reward_max − reward_min); the
    defaults (0, 1) assume they already are, and a reward outside the stated bounds raises
    ValueError (no silent clamping) — pass the reward's known bounds for other scales.
    Advantages are in these mapped units.

    p = group mean of r';  μ, σ² = mean and variance of p over the batch's groups
    [choice: Bessel-corrected σ², as in the method-of-moments Beta fit; `unbiased_variance`
    = False gives the population variance];
    a = (μ(1−μ)/σ² − 1)μ,  b = (μ(1−μ)/σ² − 1)(1−μ);  α = max(1 + a/3, 1), β = max(1 + b/3, 1);
    A_i = clamp(1/Beta_pdf(p; α, β), 0, max_weight)·(r'_i − p).

    `fixed_alpha` / `fixed_beta` bypass the estimate (α = β = 1: A = r' − p, the mean-baseline
    REINFORCE advantage; α = β = 3/2 and binary rewards: ∝ (r − p)/sqrt(p(1−p)), `group_norm`
    up to a constant). [choice] When σ² cannot be estimated (one group) or is 0, α = β = 1.
    The pdf is evaluated in log space (xlogy, so p ∈ {0, 1} with α = 1 is finite) and the
    weight is capped before exp, so no inf ever appears.
    """
    reward_min, reward_max = options.reward_min, options.reward_max
    scaled = (rewards - reward_min) / (reward_max - reward_min)
    low, high = float(scaled.min()), float(scaled.max())
    if low < -1e-6 or high > 1 + 1e-6:
        raise ValueError(
            f"beta_norm needs rewards in [{reward_min}, {reward_max}] (mapped to [0, 1]); got range "
            f"[{float(rewards.min())}, {float(rewards.max())}]; set the advantage options reward_min / "
            "reward_max to the reward's known bounds"
        )
    scaled = scaled.clamp(0.0, 1.0)
    p = scaled.mean(dim=1, keepdim=True)
    alpha, beta = _beta_parameters(p.flatten(), options.unbiased_variance)
    if options.fixed_alpha is not None:
        alpha = p.new_tensor(options.fixed_alpha)
    if options.fixed_beta is not None:
        beta = p.new_tensor(options.fixed_beta)
    log_norm = torch.lgamma(alpha) + torch.lgamma(beta) - torch.lgamma(alpha + beta)
    log_pdf = torch.xlogy(alpha - 1, p) + torch.xlogy(beta - 1, 1 - p) - log_norm
    log_cap = torch.log(p.new_tensor(options.max_weight))
    weight = torch.exp(torch.minimum(-log_pdf, log_cap)).clamp(min=0.0)
    return weight * (scaled - p)


def _beta_parameters(p: Tensor, unbiased: bool) -> tuple[Tensor, Tensor]:
    """BNPO's α, β from the batch's group means p (method of moments, shrunk by 1/3, ≥ 1)."""
    one = p.new_tensor(1.0)
    if p.numel() < 2:
        return one, one
    mu = p.mean()
    var = p.var(unbiased=unbiased)
    if var <= 0:
        return one, one
    scale = mu * (1 - mu) / var - 1
    return torch.clamp(1 + scale * mu / 3, min=1.0), torch.clamp(1 + scale * (1 - mu) / 3, min=1.0)
