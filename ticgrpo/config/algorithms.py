"""ALGORITHMS: the one table of named methods and ablations.

`algorithm.preset: <name>` in a config, `ticgrpo compare --algorithms <names>` and
`ticgrpo lab ... --objectives/--algorithms <names>` all read this table, so a name means the
same objective, options and advantage everywhere.

An entry's `settings` is a partial `algorithm:` section in the config's own key names, with
the objective's options nested under it:

    ALGORITHMS["tic_ratio_only"].settings
    # {"objective": {"name": "tic_grpo", "epsilon_high": None}, "advantage": "group_norm"}

Keys other than `objective` and `advantage` are trainer mechanisms (DAPO's dynamic sampling
and soft overlong punishment, ...). Every registered objective that has no entry of its own
resolves to `{"objective": <name>}` (its defaults): see `algorithm_settings`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ticgrpo.config.schema import method_node
from ticgrpo.errors import unknown_choice
from ticgrpo.registry import UnknownNameError

# the keys of a settings mapping that choose the method; every other key is a trainer mechanism
METHOD_KEYS = ("objective", "advantage")


def _read_only(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({key: _read_only(item) for key, item in value.items()})
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return copy.deepcopy(value)


@dataclass(frozen=True)
class Algorithm:
    name: str
    description: str
    settings: Mapping[str, Any]  # partial `algorithm:` section, read-only (nested too)

    def __post_init__(self) -> None:
        if "objective" not in self.settings:
            raise ValueError(f"algorithm {self.name!r} must name an objective")
        object.__setattr__(self, "settings", _read_only(self.settings))

    def trainer_mechanisms(self) -> list[str]:
        """The settings keys that are not the objective or the advantage."""
        return [key for key in self.settings if key not in METHOD_KEYS]


_NO_CLIP = {"epsilon_low": None, "epsilon_high": None}
_TIC = "TIC-GRPO (arXiv 2508.02833)"

_TABLE = (
    Algorithm("grpo", "GRPO (DeepSeekMath, arXiv 2402.03300): token ratio, clip 0.2, seq-mean-token-mean",
              {"objective": "grpo"}),
    Algorithm("grpo_noclip", "grpo without clipping (keeps 1/|o|)",
              {"objective": {"name": "grpo", **_NO_CLIP}}),
    Algorithm("grpo_tokensum", "grpo without clipping and without 1/|o| (seq-mean-token-sum)",
              {"objective": {"name": "grpo", **_NO_CLIP, "aggregation": "seq-mean-token-sum"}}),
    Algorithm("no_is", f"no importance sampling: the gradient at θ_old at every inner step ({_TIC}, claim 2)",
              {"objective": "no_is"}),
    Algorithm("no_is_tokensum", "no_is (frozen) without 1/|o| (seq-mean-token-sum)",
              {"objective": {"name": "no_is", "aggregation": "seq-mean-token-sum"}}),
    Algorithm("no_is_stale", "no importance sampling, re-evaluated at the current θ (mode stale)",
              {"objective": {"name": "no_is", "mode": "stale"}}),
    # The paper's component ablation; ε_high = 0.2 is ticgrpo's choice (the paper's value is not public).
    Algorithm("tic_grpo", f"full {_TIC}: trajectory ratio + upper-only clip (ε_high 0.2) + length-corrected "
              "advantage", {"objective": {"name": "tic_grpo", "epsilon_high": 0.2}, "advantage": "length_corrected"}),
    Algorithm("tic_ratio_only", f"{_TIC} ablation: trajectory ratio only (no clip), group_norm advantage",
              {"objective": {"name": "tic_grpo", "epsilon_high": None}, "advantage": "group_norm"}),
    Algorithm("tic_ratio_lenadv", f"{_TIC} ablation: trajectory ratio + length-corrected advantage, no clip",
              {"objective": {"name": "tic_grpo", "epsilon_high": None}, "advantage": "length_corrected"}),
    Algorithm("tic_ratio_clip", f"{_TIC} ablation: trajectory ratio + upper-only clip (ε_high 0.2), group_norm "
              "advantage", {"objective": {"name": "tic_grpo", "epsilon_high": 0.2}, "advantage": "group_norm"}),
    Algorithm("gspo", "GSPO (Zheng et al., arXiv 2507.18071): sequence ratio", {"objective": "gspo"}),
    Algorithm("gmpo", "GMPO (Zhao et al., arXiv 2507.20673): geometric mean of clipped token ratios",
              {"objective": "gmpo"}),
    Algorithm("dr_grpo", "Dr. GRPO (Liu et al., arXiv 2503.20783): no 1/|o|, mean-only advantage",
              {"objective": "dr_grpo"}),
    # Overlong filtering was DAPO's ablation, superseded by the soft punishment; it stays a key.
    Algorithm("dapo", "DAPO (Yu et al., arXiv 2503.14476): clip-higher, token-mean, dynamic sampling and "
              "soft overlong punishment",
              {"objective": "dapo", "advantage": "group_norm", "dynamic_sampling": True, "overlong_reward": True}),
    Algorithm("dapo_loss", "DAPO's loss alone (clip-higher, token-mean), without its trainer mechanisms",
              {"objective": "dapo"}),
    Algorithm("bnpo", "BNPO (Xiao et al., arXiv 2506.02864): grpo with the Beta-normalised advantage",
              {"objective": {"name": "grpo", "epsilon_low": 0.2, "epsilon_high": 0.28,
                             "aggregation": "seq-mean-token-sum"}, "advantage": "beta_norm"}),
    # The strictly on-policy REINFORCE-LOO reading is no_is with seq-mean-token-sum and one inner step;
    # under grpo's clipped token ratio it stays valid over several inner iterations.
    Algorithm("rloo", "RLOO (Ahmadian et al., arXiv 2402.14740): leave-one-out advantage under grpo",
              {"objective": "grpo", "advantage": "rloo"}),
    Algorithm("gtpo", "GTPO (Simoni et al., arXiv 2508.03772): entropy control and conflict tokens",
              {"objective": "gtpo"}),
    Algorithm("cispo", "CISPO (MiniMax-M1, arXiv 2506.13585): clipped, stop-gradient IS weight",
              {"objective": "cispo"}),
    Algorithm("dppo_tv", "DPPO (Qi et al., arXiv 2602.04879): total-variation trust-region mask",
              {"objective": "dppo_tv"}),
    Algorithm("dppo_kl", "DPPO (Qi et al., arXiv 2602.04879): KL trust-region mask", {"objective": "dppo_kl"}),
    Algorithm("hpo", "HPO (Huang et al., arXiv 2110.13799): hinge loss |A|·max(0, ε − sgn(A)(ρ − 1)), ε 0.2: "
              "PPO-clip's gradient; a reconstruction", {"objective": "hpo"}),
    Algorithm("hpo_log", "HPO with the log classifier: |A|·max(0, ε − sgn(A) log ρ), ε 0.2",
              {"objective": {"name": "hpo", "classifier": "log_ratio"}}),
    Algorithm("hpo_sqrt", "HPO with the root classifier: |A|·max(0, ε − sgn(A)(√ρ − 1)), ε 0.2",
              {"objective": {"name": "hpo", "classifier": "sqrt_ratio_minus_one"}}),
    Algorithm("copg", "COPG (Markowitz & Staley, arXiv 2311.05846): PPO's clip on log π itself, "
              "ℓ ∈ [ℓ_old + log 0.8, ℓ_old + log 1.2]; a reconstruction", {"objective": "copg"}),
    Algorithm("ppo_rpe", "PPO-RPE (Kobayashi, arXiv 2010.03290): clipped relative density ratio "
              "π/(0.5π + 0.5π_old) with a relative Pearson regulariser; a reconstruction", {"objective": "ppo_rpe"}),
    Algorithm("ppo_rpe_clip_only", "ppo_rpe without its relative Pearson regulariser (rpe_coef 0): PPO's clip on "
              "the relative density ratio alone", {"objective": {"name": "ppo_rpe", "rpe_coef": 0.0}}),
    Algorithm("nthr", "NTHR (Deng et al., arXiv 2505.18830): GRPO with the penalty of negative tokens near the "
              "group's correct ones (hidden-state cosine) scaled down; a reconstruction", {"objective": "nthr"}),
    # RT-PG pools the batches of the last ω policy versions (a trainer mechanism) under balance-heuristic
    # weights (the objective); ω = 3 and the clip's 0.2 are our choices
    Algorithm("rt_pg", "RT-PG (Montenegro et al., arXiv 2506.06178): batches of the last 3 policy versions, "
              "balance-heuristic trajectory weights", {"objective": "trajectory_reuse", "reuse_window": 3}),
    Algorithm("trajectory_reuse", "balance-heuristic trajectory weights (RT-PG's objective); without "
              "algorithm.reuse_window a window of one: the unclipped trajectory ratio",
              {"objective": "trajectory_reuse"}),
    Algorithm("trajectory_reuse_clip", "trajectory_reuse with tic_grpo's upper-only clip (ε_high 0.2) of the weight",
              {"objective": {"name": "trajectory_reuse", "epsilon_high": 0.2}}),
)

ALGORITHMS: Mapping[str, Algorithm] = MappingProxyType({entry.name: entry for entry in _TABLE})


def algorithm_names() -> list[str]:
    """Every name `algorithm_settings` accepts: the table's, then objectives without an entry."""
    from ticgrpo.core.objectives import OBJECTIVES

    return list(ALGORITHMS) + [name for name in OBJECTIVES.names() if name not in ALGORITHMS]


def get_algorithm(name: str) -> Algorithm:
    """The table's entry, or a registered objective with its defaults."""
    from ticgrpo.core.objectives import OBJECTIVES

    if name in ALGORITHMS:
        return ALGORITHMS[name]
    if name in OBJECTIVES:
        return Algorithm(name, f"objective {name} with its defaults", {"objective": name})
    raise UnknownNameError(unknown_choice("algorithm", name, algorithm_names()))


def algorithm_settings(name: str) -> dict[str, Any]:
    """A mutable copy of the settings of `name` (see `get_algorithm`)."""
    return plain_settings(get_algorithm(name).settings)


def plain_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Nested plain dicts: a caller-owned copy of read-only settings."""
    return _plain(settings)


def objective_option_sets(objective: str) -> dict[str, dict[str, Any]]:
    """{entry name: options} of the table's entries that are only `objective` with other options.

    Hosts that bring their own advantages and trainer (verl, TRL) serve exactly these: verl
    registers each as `ticgrpo_<entry name>` (e.g. `no_is_stale`)."""
    sets = {}
    for entry in ALGORITHMS.values():
        if set(entry.settings) != {"objective"}:
            continue
        name, options = method_node(f"{entry.name}.objective", entry.settings["objective"])
        if name == objective and options:
            sets[entry.name] = options
    return sets


__all__ = [
    "ALGORITHMS",
    "METHOD_KEYS",
    "Algorithm",
    "algorithm_names",
    "algorithm_settings",
    "get_algorithm",
    "objective_option_sets",
    "plain_settings",
]
