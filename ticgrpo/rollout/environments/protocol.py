"""The environment protocol of multi-turn episodes (docs/agentic.md).

ticgrpo makes one environment instance per episode (``cls(**rollout.environment options)``),
then::

    messages = env.reset(row)                  # the first observation: chat messages
    result = env.step(assistant_message)       # after each agent turn
    result.observation                         # messages shown before the next turn (None: no more)
    result.reward                              # added to the episode's environment reward (None: none)
    result.done                                # the episode is over
    result.tool_calls, result.tool_errors      # counted in the logs

Only the agent's tokens are sampled by the policy: the environment's messages are rendered
with the model's chat template and enter the context, never a loss.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ticgrpo.registry import Registry

Message = dict[str, Any]  # {"role": "user" | "tool" | "system" | ..., "content": str}


@dataclass(frozen=True)
class StepResult:
    """What an environment answers to one assistant message."""

    observation: list[Message] | None = None
    reward: float | None = None
    done: bool = False
    tool_calls: int = 0  # tool calls the message made
    tool_errors: int = 0  # of which failed (raised, timed out, malformed)


class Environment(ABC):
    """One episode's environment; see the module docstring. `tools`: JSON schemas of the tools it
    offers (OpenAI function format), passed to the chat template with the first observation, so
    that a template with a tool format describes them in it; None: none."""

    tools: list[dict] | None = None

    @abstractmethod
    def reset(self, row: dict) -> list[Message]:
        """The first observation for dataset row `row` (its "prompt" and other columns)."""

    @abstractmethod
    def step(self, assistant_message: str) -> StepResult:
        """The environment's answer to the agent's latest message (its text, special tokens removed)."""


@dataclass(frozen=True)
class EnvironmentSpec:
    name: str
    cls: Callable[..., Environment]
    description: str


ENVIRONMENTS: Registry[EnvironmentSpec] = Registry("environment")


def register_environment(name: str, description: str) -> Callable[[type[Environment]], type[Environment]]:
    def decorator(cls: type[Environment]) -> type[Environment]:
        ENVIRONMENTS.add(EnvironmentSpec(name, cls, description))
        return cls

    return decorator


def check_messages(messages: Any, where: str) -> list[Message]:
    """`messages` if it is a non-empty list of {"role": str, "content": str}; else ValueError naming `where`."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where} must return a non-empty list of messages, got {type(messages).__name__}")
    for m in messages:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise ValueError(f"{where} returned a malformed message {str(m)[:80]!r}: "
                             f"each must be {{'role': str, 'content': str}}")
    return [dict(m) for m in messages]
