"""The `rewards` registry: one typed `RewardSpec` per built-in reward function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ticgrpo.registry import Registry

RewardFn = Callable[..., list]


@dataclass(frozen=True)
class RewardSpec:
    name: str
    fn: RewardFn
    # the function bounds its own run time (math-verify's and the sandbox's timeouts), so the
    # reward timeout calls it directly, in the calling thread
    own_time_limit: bool = False
    # raises ValueError when `algorithm.reward_kwargs` cannot work on this machine (checked at load)
    check_options: Callable[[dict[str, Any]], None] | None = None


REWARDS: Registry[RewardSpec] = Registry("reward")


def register_reward(
    name: str, *, own_time_limit: bool = False, check_options: Callable[[dict[str, Any]], None] | None = None
) -> Callable[[RewardFn], RewardFn]:
    def decorator(fn: RewardFn) -> RewardFn:
        REWARDS.add(RewardSpec(name, fn, own_time_limit, check_options))
        return fn

    return decorator
