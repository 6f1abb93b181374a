"""The training path a lab study measures along: θ_t after t optimizer steps of one algorithm.

`lab active_is` and `lab ope` ask what happens at the policies training actually visits, for
several rewards: one path per (reward, seed), trained by `converge.train` (sampled groups, the
algorithm's own update, exact J), with every optimizer step recorded, so that θ_{t−k} is the
policy k versions before θ_t.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ticgrpo.lab.converge import OPTIMIZERS, ConvergeConfig, train
from ticgrpo.lab.estimators import Problem
from ticgrpo.lab.options import SpaceConfig, option
from ticgrpo.lab.rewards import REWARDS
from ticgrpo.lab.variants import get_variant


@dataclass
class PathConfig(SpaceConfig):
    """The problem fields plus the training path's: rewards, algorithm, seeds, optimizer, steps."""

    rewards: tuple[str, ...] = option(
        ("target", "first"), "rewards, one training path each", choices=lambda: REWARDS.names()
    )
    algorithm: str = option("grpo", "the algorithm that trains the path (ALGORITHMS name or registered objective)")
    seeds: tuple[int, ...] = option((0, 1, 2, 3, 4), "seeds: θ_init and the path's sampler")
    iterations: int = option(40, "outer iterations of the training path", minimum=1)
    inner_steps: int = option(1, "μ of the training path (1: every optimizer step is a new policy version)", minimum=1)
    groups: int = option(4, "groups per outer iteration of the training path", minimum=1)
    lr: float = option(0.05, "learning rate of the training path", above=0)
    optimizer: str = option("adam", "optimizer of the training path", choices=lambda: OPTIMIZERS)
    measure_at: tuple[int, ...] = option((10, 20, 30, 40), "optimizer steps t at which to measure", minimum=0)


def check_path(cfg: PathConfig) -> None:
    """ValueError (one line) for a path the study cannot run: an unknown algorithm, a step past its end."""
    get_variant(cfg.algorithm)  # ValueError naming the choices
    total = cfg.iterations * cfg.inner_steps
    late = [t for t in cfg.measure_at if t > total]
    if late:
        raise ValueError(
            f"measure_at {late} is past the path's last step ({cfg.iterations}·{cfg.inner_steps} = {total})"
        )


def training_path(problem: Problem, cfg: PathConfig, seed: int) -> list[Tensor]:
    """θ_0 = the policy's init at `seed`, then θ after every optimizer step (iterations·μ + 1 tensors)."""
    train_cfg = ConvergeConfig(
        policy=cfg.policy, vocab=cfg.vocab, max_len=cfg.max_len, group_size=cfg.group_size,
        init_scale=cfg.init_scale, lr=cfg.lr, algorithms=(cfg.algorithm,), seeds=(seed,),
        iterations=cfg.iterations, inner_steps=cfg.inner_steps, groups=cfg.groups, optimizer=cfg.optimizer,
    )  # fmt: skip
    path: list[Tensor] = []
    train(problem, get_variant(cfg.algorithm), problem.policy.init(seed), train_cfg, seed, steps_path=path)
    return path


__all__ = ["PathConfig", "check_path", "training_path"]
