"""Run set-up: seeding, the model, dropout, the learning-rate schedule."""

from __future__ import annotations

import math
import os
import random
from typing import Any

import numpy as np
import torch

from ticgrpo.config import TrainConfig

TINY_ALIAS = "tiny-test"


def configure_cpu_threads(threads: int | str) -> int:
    """Set torch's intra-op thread count for CPU work; returns the count in use.

    `threads` is a positive count or "auto" (`auto_cpu_threads`)."""
    count = auto_cpu_threads() if threads == "auto" else int(threads)
    torch.set_num_threads(count)
    return torch.get_num_threads()


def auto_cpu_threads() -> int:
    """OMP_NUM_THREADS when set (torchrun sets it to 1 per process), else the cores this process
    may run on (its affinity mask, not the machine's count) shared among the processes of this
    node, so that data-parallel processes never oversubscribe the cores."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) >= 1:
        return int(os.environ["OMP_NUM_THREADS"])
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(len(os.sched_getaffinity(0)) // max(local_processes, 1), 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def disable_dropout(model: Any) -> None:
    """Dropout would make ℓ^old differ from the first inner step's ℓ; RL fine-tuning turns it off."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def lr_lambda(cfg: TrainConfig) -> Any:
    """LR factor per training step: linear warm-up, then constant / cosine / linear decay."""
    o, total = cfg.optim, max(cfg.max_steps, 1)

    def factor(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / (o.warmup_steps + 1)
        if o.schedule == "constant":
            return 1.0
        progress = min((step - o.warmup_steps) / max(total - o.warmup_steps, 1), 1.0)
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if o.schedule == "cosine" else 1 - progress
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * decay

    return factor


def load_model(cfg: TrainConfig) -> tuple[Any, Any]:
    m = cfg.model
    if m.name == TINY_ALIAS:
        from ticgrpo import testing

        tokenizer = testing.make_tiny_tokenizer()
        model = testing.make_tiny_model(seed=cfg.seed, tokenizer=tokenizer)
        if m.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if m.lora is not None:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(**{"target_modules": "all-linear", "task_type": "CAUSAL_LM",
                                                        **m.lora}))
        return model, tokenizer
    from ticgrpo.models import load_model_and_tokenizer

    return load_model_and_tokenizer(m.name, m.dtype, m.gradient_checkpointing, m.lora, m.trust_remote_code)
