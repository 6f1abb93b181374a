"""Prompt datasets: built-in task generators and loaders for JSONL / Hugging Face data."""

from ticgrpo.data.sources import load_dataset_source, normalise_rows
from ticgrpo.data.tasks import (
    ANSWER_PREFIX,
    EVAL_SEED,
    TASKS,
    format_prompt,
    generate_task,
    make_task_splits,
)

__all__ = [
    "ANSWER_PREFIX",
    "EVAL_SEED",
    "TASKS",
    "format_prompt",
    "generate_task",
    "load_dataset_source",
    "make_task_splits",
    "normalise_rows",
]
