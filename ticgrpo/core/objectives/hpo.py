"""`hpo`: Hinge Policy Optimization — policy improvement as large-margin classification.

x_{i,t} = ℓ_{i,t} − ℓ^old_{i,t}, ρ = eˣ; each token is a training example with label sgn(A) and
classifier score f(ρ); per-token loss
    |A_{i,t}| · max(0, ε − sgn(A_{i,t}) · f(ρ_{i,t})) + β KL_{i,t},
aggregated (default `seq-mean-token-mean`). The classifier `f` is one of HINGE_CLASSIFIERS:
`ratio_minus_one` ρ − 1, `log_ratio` log ρ, `sqrt_ratio_minus_one` √ρ − 1.

Huang, Hsieh, Ho, Wu, "Hinge Policy Optimization: Rethinking Policy Improvement and
Reinterpreting PPO" (arXiv 2110.13799; v4 "Neural PPO-Clip Attains Global Optimality: A Hinge
Loss Perspective"): the weighted hinge loss with label sgn(A), margin ε and a family of
classifiers, with PPO-Clip the member f = ρ − 1.

Reconstruction (the paper's equations and hyperparameter tables were not available to us; what is ours):
- the per-token form above is derived, not copied: for A ≠ 0 and symmetric ε,
      min(ρA, clip(ρ, 1−ε, 1+ε)A) = A + ε|A| − |A|·max(0, ε − sgn(A)(ρ − 1)),
  so with f = ρ − 1 this loss is PPO-clip's (`grpo` with ε_low = ε_high = ε) plus A + ε|A|, a
  constant in θ: the two have the same gradient in ℓ and different values (tests/test_objectives_hpo_copg.py);
- the hinge's subgradient at its kink (ε = sgn(A) f) is taken on the active side (clamp(min=0)
  passes the gradient at 0, relu would not), PPO's clamp convention at ρ = 1 ± ε; the kinks are
  computed in different spaces (x ≤ log(1+ε) in `grpo`, eˣ − 1 ≤ ε here), so within a rounding
  error of the kink the two can still disagree (measured in the test file);
- ε > 0 is required: at ε = 0 every token sits on the kink at θ = θ_old.
[choice] Defaults: ε = 0.2 (PPO's clipping range, under which `ratio_minus_one` is PPO-clip
with ε = 0.2; the paper's own value was not available to us), f = `ratio_minus_one`, aggregation
`seq-mean-token-mean` (GRPO's), advantage `group_norm`, β = 0.

At θ = θ_old: ρ = 1, f = 0 for every classifier and ε > 0, so every hinge is active and
∂loss/∂ℓ_{i,t} = −f'(0)·A_{i,t} × the token's aggregation weight: `grpo`'s on-policy gradient
times f'(0) = 1 (ρ − 1, log ρ) or ½ (√ρ − 1).

Numerics: ρ and √ρ are exps of x clamped at `max_log_ratio` M (past M the score is constant and
its gradient 0, as `grpo`'s unbounded branch), so x = ±1e4 gives a finite loss and gradient;
log ρ = x needs no clamp.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import torch
from pydantic.dataclasses import dataclass as pydantic_dataclass
from torch import Tensor

from ticgrpo.core.aggregation import Aggregation, aggregate
from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.objectives._common import (
    PenaltyConfig,
    Positive,
    kl_per_token,
    masked_fraction,
    masked_stats,
    token_reinforce_weights,
)
from ticgrpo.core.objectives.registry import register_objective
from ticgrpo.core.options import OPTIONS_CONFIG


@dataclass(frozen=True)
class HingeClassifier:
    """A classifier score f(ρ) of the hinge, from the log-ratio x and the exp clamp M."""

    score: Callable[[Tensor, float], Tensor]
    slope_at_old: float  # ∂f/∂ℓ at ρ = 1: the on-policy gradient's factor


def _ratio_minus_one(log_ratio: Tensor, max_log_ratio: float) -> Tensor:
    # exp(x) − 1, not expm1: autograd's exp backward reuses exp(x), bit for bit `grpo`'s factor ρ
    return torch.exp(log_ratio.clamp(max=max_log_ratio)) - 1.0


def _log_ratio(log_ratio: Tensor, max_log_ratio: float) -> Tensor:
    return log_ratio


def _sqrt_ratio_minus_one(log_ratio: Tensor, max_log_ratio: float) -> Tensor:
    return torch.exp(0.5 * log_ratio.clamp(max=max_log_ratio)) - 1.0


HingeClassifierName = Literal["ratio_minus_one", "log_ratio", "sqrt_ratio_minus_one"]
HINGE_CLASSIFIERS: Mapping[str, HingeClassifier] = MappingProxyType({
    "ratio_minus_one": HingeClassifier(_ratio_minus_one, slope_at_old=1.0),  # PPO-clip's gradient
    "log_ratio": HingeClassifier(_log_ratio, slope_at_old=1.0),
    "sqrt_ratio_minus_one": HingeClassifier(_sqrt_ratio_minus_one, slope_at_old=0.5),
})


@pydantic_dataclass(config=OPTIONS_CONFIG)
class HPOConfig(PenaltyConfig):
    epsilon: Positive = 0.2  # the hinge's margin ε (0 would put every token on the kink at θ_old)
    classifier: HingeClassifierName = "ratio_minus_one"  # f: ρ − 1 | log ρ | √ρ − 1
    aggregation: Aggregation = "seq-mean-token-mean"


def hpo_on_policy_weights(batch: PolicyBatch, options: HPOConfig, norms: StepNormalizers) -> Tensor:
    """f'(0)·A_{i,t} × the aggregation weight: at θ = θ_old every hinge is active (f = 0 < ε)."""
    return HINGE_CLASSIFIERS[options.classifier].slope_at_old * token_reinforce_weights(batch, options, norms)


@register_objective(
    "hpo", options=HPOConfig, default_advantage="group_norm", uses_old_logprobs=True,
    on_policy_weights=hpo_on_policy_weights,
)
def hpo_loss(
    batch: PolicyBatch, config: HPOConfig, norms: StepNormalizers
) -> tuple[Tensor, dict[str, Tensor]]:
    advantages = batch.token_advantages()
    log_ratio = batch.current_logprobs() - batch.behaviour_logprobs()
    score = HINGE_CLASSIFIERS[config.classifier].score(log_ratio, config.max_log_ratio)
    # clamp(min=0), not relu: at the kink the gradient passes, as PPO's clamp passes it at ρ = 1 ± ε
    margin_violation = (config.epsilon - torch.sign(advantages) * score).clamp(min=0.0)
    per_token = advantages.abs() * margin_violation
    kl = kl_per_token(batch, config)
    if kl is not None:
        per_token = per_token + config.beta * kl
    loss = aggregate(per_token, batch.mask, config.aggregation, norms)
    beyond_margin = (config.epsilon - torch.sign(advantages) * score.detach()) < 0  # gradient exactly 0
    metrics = {
        "clip_frac_low": masked_fraction(beyond_margin & (advantages < 0), batch.mask),
        "clip_frac_high": masked_fraction(beyond_margin & (advantages > 0), batch.mask),
        **masked_stats(torch.exp(log_ratio.detach()), batch.mask, "ratio"),
    }
    if kl is not None:
        metrics["kl"] = masked_stats(kl, batch.mask, "kl")["kl_mean"]
    return loss, metrics
