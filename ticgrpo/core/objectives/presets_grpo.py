"""`dr_grpo` and `dapo`: the `grpo` loss (spec §4.1) under other defaults (spec §4.4).

Both are registered with the very same function `grpo_loss`; only the config class (and so
the defaults) and the default advantage differ.

- `dr_grpo`: aggregation `seq-mean-token-sum-norm` ((1/N_seq) Σ_i Σ_t / L_max, no 1/|o_i|
  length bias), advantage `mean_only` (no std division), ε 0.2, β 0.
  Liu et al., "Understanding R1-Zero-Like Training: A Critical Perspective" (arXiv 2503.20783).
- `dapo`: clip-higher ε_low = 0.2, ε_high = 0.28, aggregation `token-mean`, β 0, advantage
  `group_norm`. Dynamic sampling and soft overlong punishment are trainer mechanisms
  (spec §5), switched on by the `dapo` entry of `ticgrpo.config.algorithms.ALGORITHMS`.
  Yu et al., "DAPO: An Open-Source LLM Reinforcement Learning System at Scale" (arXiv 2503.14476).

`bnpo` is not an objective but a preset: `grpo` + the `beta_norm` advantage.
"""

from __future__ import annotations

from pydantic.dataclasses import dataclass as pydantic_dataclass

from ticgrpo.core.aggregation import Aggregation
from ticgrpo.core.objectives._common import EpsilonLow, NonNegative, token_reinforce_weights
from ticgrpo.core.objectives.grpo import GRPOConfig, grpo_loss
from ticgrpo.core.objectives.registry import register_objective
from ticgrpo.core.options import OPTIONS_CONFIG


@pydantic_dataclass(config=OPTIONS_CONFIG)
class DrGRPOConfig(GRPOConfig):
    aggregation: Aggregation = "seq-mean-token-sum-norm"


@pydantic_dataclass(config=OPTIONS_CONFIG)
class DAPOConfig(GRPOConfig):
    epsilon_low: EpsilonLow | None = 0.2
    epsilon_high: NonNegative | None = 0.28
    aggregation: Aggregation = "token-mean"
    beta: NonNegative = 0.0


register_objective(
    "dr_grpo", options=DrGRPOConfig, default_advantage="mean_only", uses_old_logprobs=True,
    on_policy_weights=token_reinforce_weights,
)(grpo_loss)
register_objective(
    "dapo", options=DAPOConfig, default_advantage="group_norm", uses_old_logprobs=True,
    on_policy_weights=token_reinforce_weights,
)(grpo_loss)
