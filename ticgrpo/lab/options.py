"""The lab's experiment options: dataclass fields whose metadata is the CLI's help and checks.

    vocab: int = option(4, "vocabulary size V including EOS", minimum=2)

`ticgrpo lab` builds its flags from these fields (name, type, default, help), and
`check_options` enforces the ranges and choices for the CLI and for library callers alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ticgrpo.lab.policies import POLICIES
from ticgrpo.lab.rewards import REWARDS


def option(
    default: Any,
    help: str,
    *,
    minimum: float | None = None,
    above: float | None = None,
    choices: Callable[[], Sequence[str]] | None = None,
) -> Any:
    """A dataclass field with its default, help and checks (`minimum` inclusive, `above` exclusive;
    on a tuple they apply to every element). `choices` is called when checked: registries fill late."""
    metadata = {"help": help, "minimum": minimum, "above": above, "choices": choices}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for a sequence default (dataclass defaults must be immutable)")
    return dataclasses.field(default=default, metadata=metadata)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _problem(value: Any, metadata: Any) -> str | None:
    minimum, above, choices = metadata.get("minimum"), metadata.get("above"), metadata.get("choices")
    for item in value if isinstance(value, tuple) else (value,):
        if minimum is not None and item < minimum:
            return f"must be >= {minimum:g}, got {item}"
        if above is not None and item <= above:
            return f"must be > {above:g}, got {item}"
        if choices is not None and item not in choices():
            return f"must be one of: {', '.join(choices())}; got {item!r}"
    return None


def check_options(config: Any, as_flags: bool = False) -> None:
    """ValueError, one line naming the option (as `--flag` when `as_flags`), for the first value
    outside its field's range or choices."""
    for spec in dataclasses.fields(config):
        problem = _problem(getattr(config, spec.name), spec.metadata)
        if problem is not None:
            raise ValueError(f"{flag(spec.name) if as_flags else spec.name} {problem}")


@dataclass
class SpaceConfig:
    """The enumerable trajectory space, its policy and the group size: shared by every lab experiment,
    including those (`lab factorial`) that sweep the reward and the learning rate themselves."""

    policy: str = option("tabular", "policy parametrisation", choices=lambda: POLICIES)
    vocab: int = option(4, "vocabulary size V including EOS", minimum=2)
    max_len: int = option(5, "max completion length L", minimum=1)
    group_size: int = option(8, "G, completions per group", minimum=2)
    init_scale: float = option(1.0, "scale of the random initial θ")


@dataclass
class ProblemConfig(SpaceConfig):
    """One enumerable problem (one reward) and one learning rate."""

    reward: str = option("target", "reward of a trajectory", choices=lambda: REWARDS.names())
    lr: float = option(0.05, "learning rate of the inner steps", above=0)


__all__ = ["ProblemConfig", "SpaceConfig", "check_options", "flag", "option"]
