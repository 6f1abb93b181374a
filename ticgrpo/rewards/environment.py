"""`environment_reward`: the reward a multi-turn episode's environment gave (rollout.environment)."""

from __future__ import annotations

from ticgrpo.rewards.registry import register_reward


@register_reward("environment_reward")
def environment_reward(completions: list[str], environment_reward: list[float | None]) -> list[float | None]:
    """The sum of the rewards the episode's environment returned from its steps (None, i.e. 0, when
    it returned none). With single completions every value is None: use it with rollout.environment."""
    return list(environment_reward)
