"""The parts of a training run, built from its config: what `Trainer.__init__` assembles.

    rewards  = training_rewards(cfg, reward_fns, config_dir)
    scorer, eval_scorer = scorers(cfg, rewards, config_dir)      # ticgrpo.rewards.scoring
    engine   = rollout_engine(cfg, model, tokenizer, autocast_dtype, rank)
    ref, ctx = reference_policy(model, cfg.algorithm.objective.options)
    settings = step_settings(cfg, autocast_dtype)                 # ticgrpo.train.step
    optimizer = adamw(model, cfg)
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from ticgrpo.config import TrainConfig
from ticgrpo.rewards import resolve_reward
from ticgrpo.rewards.registry import RewardFn
from ticgrpo.rewards.scoring import Scorer
from ticgrpo.rollout import HFGenerateEngine
from ticgrpo.train.setup import TINY_ALIAS
from ticgrpo.train.step import StepSettings


def training_rewards(config: TrainConfig, reward_fns: list[tuple[Any, float]] | None,
                     config_dir: str | Path | None) -> list[tuple[RewardFn, float]]:
    """(function, weight) of every training reward: the given ones or the config's, and DAPO's
    soft overlong punishment (weight 1) with algorithm.overlong_reward unless it is listed."""
    named = reward_fns or [(resolve_reward(s.name, config_dir), s.weight) for s in config.algorithm.rewards]
    rewards = [(resolve_reward(fn), w) for fn, w in named]
    overlong = resolve_reward("overlong_soft")
    if config.algorithm.overlong_reward and overlong not in [fn for fn, _ in rewards]:
        rewards.append((overlong, 1.0))
    return rewards


def scorers(config: TrainConfig, rewards: list[tuple[RewardFn, float]],
            config_dir: str | Path | None) -> tuple[Scorer, Scorer]:
    """(training scorer, held-out scorer). Evaluation never zeroes a failure: it raises."""
    a = config.algorithm
    train = Scorer(tuple(rewards), config.rollout.max_new_tokens, a.reward_kwargs, a.on_reward_error,
                   a.reward_timeout_s)
    held_out = Scorer(((resolve_reward(config.eval.reward, config_dir), 1.0),),
                      config.eval.max_new_tokens or config.rollout.max_new_tokens, a.reward_kwargs, "raise",
                      a.reward_timeout_s)
    return train, held_out


def rollout_engine(config: TrainConfig, model: Any, tokenizer: Any, autocast_dtype: torch.dtype | None,
                   rank: int) -> Any:
    """The engine that samples completions: HF generate on the training model, or vLLM."""
    r = config.rollout
    if r.engine == "hf":
        return HFGenerateEngine(model, tokenizer, r.generation_batch_size, r.max_prompt_length, autocast_dtype)
    from ticgrpo.rollout.vllm import VLLMEngine  # its own environment: docs/vllm.md

    options = dict(r.vllm)
    if "model_path" not in options and config.model.name != TINY_ALIAS and config.model.lora is None:
        from ticgrpo.models import resolve_model_path

        options["model_path"] = resolve_model_path(config.model.name)  # else the engine saves the model
    options.setdefault("seed", config.seed + 7919 * rank)  # one sampling stream per process
    return VLLMEngine(model, tokenizer, max_prompt_length=r.max_prompt_length, **options)


def episode_engine(config: TrainConfig, engine: Any, tokenizer: Any, config_dir: Any = None) -> Any:
    """`engine` itself, or with rollout.environment the `EpisodeEngine` running episodes through it."""
    r = config.rollout
    if r.environment is None:
        return engine
    from ticgrpo.rollout.episodes import EpisodeLimits
    from ticgrpo.rollout.episodes import episode_engine as build

    return build(engine, tokenizer, r.environment.name, dict(r.environment.options),
                 EpisodeLimits(r.max_turns, r.max_episode_tokens), config.model.chat_template,
                 config.model.system_prompt, config_dir)


def reference_policy(model: Any, objective_options: Any) -> tuple[Any, Any]:
    """(model, context) giving reference log-probs, or (None, None) when β = 0."""
    if float(getattr(objective_options, "beta", 0.0)) == 0:
        return None, None
    if hasattr(model, "disable_adapter"):  # LoRA: the base model is the reference
        return model, model.disable_adapter
    # The reference is the initial policy: a frozen copy of the freshly loaded model.
    return copy.deepcopy(model).eval().requires_grad_(False), None


def step_settings(config: TrainConfig, autocast_dtype: torch.dtype | None) -> StepSettings:
    a = config.algorithm
    return StepSettings(
        objective=a.objective.name,
        objective_config=a.objective.options,
        num_iterations=a.num_iterations,
        num_minibatches=a.num_minibatches,
        micro_batch_size=a.micro_batch_size,
        max_grad_norm=config.optim.max_grad_norm,
        max_new_tokens=config.rollout.max_new_tokens,
        temperature=config.rollout.temperature,
        chunk_size=a.logprob_chunk_size,
        log_entropy=a.log_entropy,
        autocast_dtype=autocast_dtype,
        espo_delta=a.espo_delta,
    )


def adamw(model: Any, config: TrainConfig) -> torch.optim.AdamW:
    o = config.optim
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay)


def describe_values(t: torch.Tensor) -> str:
    """'non-finite k/n, finite range a..b' of a tensor, for the non-finite step warning."""
    t = t.detach().float().flatten()
    finite = t[torch.isfinite(t)]
    span = f"{float(finite.min()):.4g}..{float(finite.max()):.4g}" if finite.numel() else "-"
    return f"non-finite {int((~torch.isfinite(t)).sum())}/{t.numel()}, finite range {span}"


__all__ = [
    "adamw", "describe_values", "reference_policy", "rollout_engine", "scorers", "step_settings", "training_rewards",
]
