"""Named algorithm presets: objective + advantage + their options + trainer mechanisms.

    preset = get_preset("dapo")
    config = make_objective_config(preset.objective, dict(preset.objective_options))
    adv = compute_advantages(preset.advantage, rewards, lengths, **preset.advantage_options)

Options left out take the registry defaults (the spec's). `trainer` records the method's
trainer-level mechanisms (spec §5) for the trainer to act on; its keys are always all of:

    dynamic_sampling: bool       drop groups with accuracy 0 or 1 and resample (DAPO)
    overlong_filter: bool        mask truncated completions out of the loss (DAPO)
    overlong_reward: bool        soft overlong punishment added to the reward (DAPO)
    espo_delta: float | None     stop the inner epochs once mean |ρ − 1| > δ (ESPO); None: off

All mappings of a preset are read-only; copy them (`dict(...)`) to modify.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ticgrpo.registry import UnknownNameError

TRAINER_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {"dynamic_sampling": False, "overlong_filter": False, "overlong_reward": False, "espo_delta": None}
)


@dataclass(frozen=True)
class Preset:
    objective: str
    advantage: str
    objective_options: Mapping[str, Any] = field(default_factory=dict)
    advantage_options: Mapping[str, Any] = field(default_factory=dict)
    trainer: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.trainer) - set(TRAINER_DEFAULTS)
        if unknown:
            raise ValueError(
                f"unknown trainer option(s) {sorted(unknown)}; allowed: {', '.join(TRAINER_DEFAULTS)}"
            )
        object.__setattr__(self, "objective_options", MappingProxyType(dict(self.objective_options)))
        object.__setattr__(self, "advantage_options", MappingProxyType(dict(self.advantage_options)))
        object.__setattr__(self, "trainer", MappingProxyType({**TRAINER_DEFAULTS, **self.trainer}))


PRESETS: dict[str, Preset] = {
    "grpo": Preset("grpo", "group_norm"),
    "no_is": Preset("no_is", "group_norm"),
    "tic_grpo": Preset("tic_grpo", "length_corrected"),
    "gspo": Preset("gspo", "group_norm"),
    "gmpo": Preset("gmpo", "group_norm"),
    "dr_grpo": Preset("dr_grpo", "mean_only"),
    # DAPO (arXiv 2503.14476): clip-higher, token-mean (objective defaults), dynamic sampling
    # and soft overlong punishment; overlong filtering was their ablation, superseded by shaping.
    "dapo": Preset("dapo", "group_norm", trainer={"dynamic_sampling": True, "overlong_reward": True}),
    # BNPO (arXiv 2506.02864): grpo objective with the Beta-normalised advantage.
    "bnpo": Preset(
        "grpo",
        "beta_norm",
        objective_options={"epsilon_low": 0.2, "epsilon_high": 0.28, "aggregation": "seq-mean-token-sum"},
    ),
    "gtpo": Preset("gtpo", "group_norm"),
    "dppo_tv": Preset("dppo_tv", "group_norm"),
    "dppo_kl": Preset("dppo_kl", "group_norm"),
    "cispo": Preset("cispo", "group_norm"),
    # RLOO (Ahmadian et al., arXiv 2402.14740) with the `grpo` objective: leave-one-out
    # advantage under GRPO's clipped token ratio, so it stays valid over several inner
    # iterations. The strictly on-policy sequence-level REINFORCE-LOO reading is
    # objective `no_is` with aggregation `seq-mean-token-sum` and one inner step.
    "rloo": Preset("grpo", "rloo"),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownNameError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}") from None


__all__ = ["PRESETS", "TRAINER_DEFAULTS", "Preset", "get_preset"]
