"""Compose an example verl config with verl's own Hydra tree and build verl's typed actor /
algorithm configs from it, without starting Ray or touching a GPU.

    python examples/verl/check_config.py examples/verl/ticgrpo_qwen3_1p7b_dapo_math.yaml

Checks: every key exists in verl's schema (Hydra struct mode), the actor section converts to
verl's ActorConfig, the policy loss named there is registered once ticgrpo's module is
imported (as `external_lib` does in the workers).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path


def check(path: str) -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from verl.trainer.ppo.core_algos import get_policy_loss_fn
    from verl.utils.config import omega_conf_to_dataclass

    file = Path(path).resolve()
    with initialize_config_dir(config_dir=str(file.parent), version_base=None):
        cfg = compose(config_name=file.stem)
    OmegaConf.resolve(cfg)
    importlib.import_module(cfg.actor_rollout_ref.model.external_lib)
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    algo = omega_conf_to_dataclass(cfg.algorithm)
    loss = get_policy_loss_fn(actor.policy_loss.loss_mode)
    print(
        f"{file.name}: model={cfg.actor_rollout_ref.model.path} loss_mode={actor.policy_loss.loss_mode} "
        f"({loss.__name__}) adv={algo.adv_estimator} nodes={cfg.trainer.nnodes}x{cfg.trainer.n_gpus_per_node} "
        f"n={cfg.actor_rollout_ref.rollout.n} val_n={cfg.actor_rollout_ref.rollout.val_kwargs.n}"
    )


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        check(arg)
