"""Run set-up: seeding, CPU threads, the model, dropout, the learning-rate schedule."""

from __future__ import annotations

import os
import random
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_with_min_lr_schedule_with_warmup,
    get_wsd_schedule,
)

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


def _linear_decay_after_warmup(index: int, *, warmup: int, total: int, floor: float) -> float:
    """The lr factor at schedule index `index`: linear warm-up over `warmup` indices, then linear decay
    to `floor` at `total` (the one combination transformers has no schedule for; see make_lr_scheduler)."""
    if index < warmup:
        return index / warmup
    progress = min((index - warmup) / max(total - warmup, 1), 1.0)
    return floor + (1 - floor) * (1 - progress)


def make_lr_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> LambdaLR:
    """optim.schedule as a transformers schedule: linear warm-up over optim.warmup_steps, then
    constant, or cosine / linear decay to min_lr_ratio·lr at max_steps.

    transformers' warm-up starts at lr 0, a training step that changes nothing. This schedule
    is transformers' with one more warm-up step, started one index in (`last_epoch=0`): training
    step s (from 0) runs at lr·(s+1)/(W+1) during warm-up and the decay ends at max_steps. The
    scheduler's last_epoch is therefore the step + 1, in checkpoints too.

    Linear decay after a warm-up keeps a small lambda when min_lr_ratio > 0 (or the warm-up lasts
    the whole run): transformers' warm-up-stable-decay schedule, the one with a floor for linear
    decay, warms up from min_lr_ratio·lr instead (and ends at the floor after a decay of no steps);
    its polynomial decay divides by max_steps − warmup_steps unguarded.
    """
    o = cfg.optim
    warmup, total = o.warmup_steps + 1, max(cfg.max_steps, 1) + 1
    for group in optimizer.param_groups:  # what a scheduler created at last_epoch=-1 records
        group.setdefault("initial_lr", group["lr"])
    if o.schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup, last_epoch=0)
    if o.schedule == "cosine":
        return get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup, total, min_lr_rate=o.min_lr_ratio,
                                                           last_epoch=0)
    if o.warmup_steps == 0 or (o.min_lr_ratio == 0 and cfg.max_steps > o.warmup_steps):
        return get_wsd_schedule(optimizer, warmup, num_decay_steps=max(total - warmup, 0), num_stable_steps=0,
                                decay_type="linear", min_lr_ratio=o.min_lr_ratio, last_epoch=0)
    return LambdaLR(optimizer, partial(_linear_decay_after_warmup, warmup=warmup, total=total, floor=o.min_lr_ratio),
                    last_epoch=0)


def load_model(cfg: TrainConfig) -> tuple[Any, Any]:
    m = cfg.model
    if m.name == TINY_ALIAS:
        from ticgrpo import testing

        tokenizer = testing.make_tiny_tokenizer()
        model = testing.make_tiny_model(seed=cfg.seed, tokenizer=tokenizer)
        if m.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if m.lora is not None:
            from peft import get_peft_model

            from ticgrpo.integrations.lora import lora_config

            model = get_peft_model(model, lora_config(m.lora))
        return model, tokenizer
    from ticgrpo.models import load_model_and_tokenizer

    return load_model_and_tokenizer(m.name, m.dtype, m.gradient_checkpointing, m.lora, m.trust_remote_code)
