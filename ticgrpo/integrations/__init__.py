"""Plug-ins that run ticgrpo's objectives and advantages inside other frameworks.

- `ticgrpo.integrations.trl`: `TicGRPOTrainer`, a TRL `GRPOTrainer` whose loss (and,
  optionally, advantage estimator) is any ticgrpo registry entry.
- `ticgrpo.integrations.verl`: ticgrpo objectives as verl policy losses
  (`actor_rollout_ref.actor.policy_loss.loss_mode=ticgrpo_<name>`).
- `ticgrpo.integrations.lora`: merge a LoRA adapter into its base model for inference.

Each submodule imports its framework lazily or on import; importing this package imports
none of them. See docs/scaling.md.
"""

__all__ = ["lora", "trl", "verl"]
