"""Environments of multi-turn episodes: the protocol, the registry and the built-ins.

    factory = EnvironmentFactory("my_pkg.envs:MyEnv", {"max_calls": 3})   # or a registry name
    env = factory.make()                                            # one per episode
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ticgrpo.rollout.environments import guess_number as _guess_number  # noqa: F401  (registers)
from ticgrpo.rollout.environments import python_tool as _python_tool  # noqa: F401  (registers)
from ticgrpo.rollout.environments import single_turn as _single_turn  # noqa: F401  (registers)
from ticgrpo.rollout.environments.protocol import (
    ENVIRONMENTS,
    Environment,
    EnvironmentSpec,
    Message,
    StepResult,
    check_messages,
    register_environment,
)


@dataclass(frozen=True)
class EnvironmentFactory:
    """Makes one environment per episode: a registry name or "module:Class" / "path/file.py:Class"
    (resolved like rewards, from `config_dir` first), called with `options`. Constructing the
    factory makes one instance, so that a bad name or option fails at start, in one line."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    config_dir: str | Path | None = None

    def __post_init__(self) -> None:
        self.make()

    def make(self) -> Environment:
        cls = environment_class(self.name, self.config_dir)
        try:
            env = cls(**self.options)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"rollout.environment {self.name!r}: {exc}") from None
        if not (callable(getattr(env, "reset", None)) and callable(getattr(env, "step", None))):
            raise ValueError(f"rollout.environment {self.name!r} makes {type(env).__name__}, which has no "
                             f"reset(row) and step(message) methods")
        return env


def environment_class(name: str, config_dir: str | Path | None = None) -> Any:
    """The class (or factory) a registry name or an import path names; ValueError in one line."""
    if ":" not in name:
        return ENVIRONMENTS.spec(name).cls
    from ticgrpo.rewards import import_attribute

    return import_attribute(name, config_dir, "environment")


__all__ = [
    "ENVIRONMENTS", "Environment", "EnvironmentFactory", "EnvironmentSpec", "Message", "StepResult",
    "check_messages", "environment_class", "register_environment",
]
