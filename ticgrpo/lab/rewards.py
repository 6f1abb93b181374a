"""Reward functions on an enumerated `TrajectorySpace`: one float64 reward in [0, 1] per trajectory.

| name     | r(o)                                                                        |
|----------|-----------------------------------------------------------------------------|
| `target` | (# positions t < min(|o|, |y|) with o_t = y_t) / max(|o|, |y|), y = target + EOS |
| `count`  | (# occurrences of `symbol` in o) / L                                        |
| `short`  | (L − |o|) / (L − 1)   (1 for an immediate EOS, 0 at max length)             |
| `long`   | (|o| − 1) / (L − 1)                                                         |
| `count_short` | ½·count + ½·short (a trade-off between length and content)             |
| `first`  | 1 if o_1 = `symbol` (default 1), else 0                                     |

The first five are length-dependent, so completions of different lengths get different
rewards and the 1/|o| factor of `seq-mean-token-mean` matters. `first` is the length-neutral
control: given a first token other than EOS, the reward does not depend on the length, and the
rewarded completions have every length 2..L (the one length-1 completion, an immediate EOS,
scores 0 because its first token is EOS, not because it is short).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ticgrpo.lab.enumerate import EOS, TrajectorySpace
from ticgrpo.registry import FunctionRegistry

REWARDS: FunctionRegistry[Callable[..., Tensor]] = FunctionRegistry("lab reward")


def default_target(space: TrajectorySpace) -> list[int]:
    """Symbols 1, 2, …, K, 1, … of length min(3, L − 1) (then EOS)."""
    k = space.vocab_size - 1
    return [1 + (i % k) for i in range(min(3, max(space.max_len - 1, 0)))]


@REWARDS.register("target")
def target_reward(space: TrajectorySpace, target: list[int] | None = None) -> Tensor:
    """Partial credit for matching `target` followed by EOS, position by position."""
    target = default_target(space) if target is None else list(target)
    if any(not 1 <= t < space.vocab_size for t in target):
        raise ValueError(f"target symbols must be in 1..{space.vocab_size - 1} (0 is EOS), got {target}")
    y = [*target, EOS] if len(target) < space.max_len else target[: space.max_len]
    padded = torch.full((space.max_len,), -1, dtype=torch.long)
    padded[: len(y)] = torch.tensor(y, dtype=torch.long)
    matches = ((space.tokens == padded[None, :]) & space.mask).sum(dim=1).to(torch.float64)
    denom = torch.clamp(space.lengths, min=len(y)).to(torch.float64)
    return matches / denom


@REWARDS.register("count")
def count_reward(space: TrajectorySpace, symbol: int = 1) -> Tensor:
    """(# occurrences of `symbol`) / L."""
    if not 1 <= symbol < space.vocab_size:
        raise ValueError(f"symbol must be in 1..{space.vocab_size - 1}, got {symbol}")
    hits = ((space.tokens == symbol) & space.mask).sum(dim=1)
    return hits.to(torch.float64) / space.max_len


@REWARDS.register("short")
def short_reward(space: TrajectorySpace) -> Tensor:
    """(L − |o|) / (L − 1)."""
    big_l = space.max_len
    return (big_l - space.lengths).to(torch.float64) / max(big_l - 1, 1)


@REWARDS.register("long")
def long_reward(space: TrajectorySpace) -> Tensor:
    """(|o| − 1) / (L − 1)."""
    return (space.lengths - 1).to(torch.float64) / max(space.max_len - 1, 1)


@REWARDS.register("count_short")
def count_short_reward(space: TrajectorySpace, symbol: int = 1) -> Tensor:
    """½ (count of `symbol`)/L + ½ (L − |o|)/(L − 1)."""
    return 0.5 * count_reward(space, symbol) + 0.5 * short_reward(space)


@REWARDS.register("first")
def first_token_reward(space: TrajectorySpace, symbol: int = 1) -> Tensor:
    """1 if the first token is `symbol`, else 0: length-neutral (see the module doc)."""
    if not 1 <= symbol < space.vocab_size:
        raise ValueError(f"symbol must be in 1..{space.vocab_size - 1}, got {symbol}")
    return (space.tokens[:, 0] == symbol).to(torch.float64)


def make_rewards(name: str, space: TrajectorySpace) -> Tensor:
    """Rewards [N] (float64, in [0, 1]) of reward `name` with its default options."""
    rewards = REWARDS.get(name)(space)
    assert rewards.shape == (space.num_trajectories,)
    return rewards
