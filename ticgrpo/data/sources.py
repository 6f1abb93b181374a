"""Load prompt datasets from a built-in task, a JSONL file or a Hugging Face dataset.

Every loader returns a list of row dicts with the prompt under ``"prompt"`` (a string or a
list of chat messages); the other columns pass through unchanged and reach the reward
functions as keyword lists (e.g. ``answer=[...]``).
"""

from __future__ import annotations

import json
import os
from typing import Any

from ticgrpo.data.tasks import EVAL_SEED, TASKS, make_task_splits

SOURCE_KEYS = ("task", "jsonl", "hf")


def load_dataset_source(spec: dict) -> list[dict]:
    """Rows of the dataset described by ``spec``.

    - ``{"task": "arithmetic", "level": 2, "split": "train" | "eval", "num_train": 10000,
      "num_eval": 100, "seed": 0}``: a built-in task (eval is the fixed held-out split);
    - ``{"jsonl": "path.jsonl", "prompt_column": "prompt"}``: one JSON object per line;
    - ``{"hf": "name or local dir", "split": "train", "config": None,
      "prompt_column": "problem", "answer_column": "solution"}``: a Hugging Face dataset
      (a folder saved with ``save_to_disk``, a local dataset folder, or a hub name).
    """
    if not isinstance(spec, dict):
        raise ValueError(f"dataset spec must be a dict with one of the keys {SOURCE_KEYS}, got {type(spec).__name__}")
    kinds = [k for k in SOURCE_KEYS if k in spec]
    if len(kinds) != 1:
        raise ValueError(f"dataset spec must have exactly one of the keys {SOURCE_KEYS}, got keys {sorted(spec)}")
    kind = kinds[0]
    if kind == "task":
        return _load_task(spec)
    if kind == "jsonl":
        rows = _load_jsonl(spec["jsonl"])
        where = spec["jsonl"]
    else:
        rows = _load_hf(spec)
        where = spec["hf"]
    return normalise_rows(
        rows, where, prompt_column=spec.get("prompt_column", "prompt"), answer_column=spec.get("answer_column")
    )


def _load_task(spec: dict) -> list[dict]:
    allowed = {"task", "level", "split", "num_train", "num_eval", "seed", "eval_seed", "prompt_style"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in task dataset spec; allowed: {sorted(allowed)}")
    name = spec["task"]
    TASKS.entry(name)  # unknown task → error listing the built-in tasks
    split = spec.get("split", "train")
    if split not in ("train", "eval"):
        raise ValueError(f"task split must be 'train' or 'eval', got {split!r}")
    train, eval_split = make_task_splits(
        name,
        level=int(spec.get("level", 1)),
        num_train=int(spec.get("num_train", 10_000)) if split == "train" else 0,
        num_eval=int(spec.get("num_eval", 100)),
        seed=int(spec.get("seed", 0)),
        eval_seed=int(spec.get("eval_seed", EVAL_SEED)),
        **({"prompt_style": spec["prompt_style"]} if "prompt_style" in spec else {}),
    )
    return train if split == "train" else eval_split


def _load_jsonl(path: str) -> list[dict]:
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise ValueError(f"jsonl file {path!r} does not exist; check the 'jsonl' path in the dataset spec")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: malformed JSON line ({exc.msg}); fix or remove it") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: each line must be a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def _load_hf(spec: dict) -> list[dict]:
    import datasets

    name = spec["hf"]
    split = spec.get("split", "train")
    config = spec.get("config")
    local = os.path.expanduser(name)
    if os.path.isdir(local):
        # save_to_disk writes state.json (Dataset) or dataset_dict.json (DatasetDict);
        # any other folder is a raw dataset (csv/json/parquet files) for load_dataset.
        saved = any(os.path.isfile(os.path.join(local, f)) for f in ("state.json", "dataset_dict.json"))
        ds = datasets.load_from_disk(local) if saved else datasets.load_dataset(local, config, split=split)
    elif name.startswith(("/", ".", "~")):
        raise ValueError(f"dataset folder {name!r} does not exist; check the 'hf' path in the dataset spec")
    else:
        try:
            ds = datasets.load_dataset(name, config, split=split)
        except Exception as exc:  # network, unknown name, bad config: all surface here
            raise ValueError(f"cannot load Hugging Face dataset {name!r} (split {split!r}): {exc}") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ValueError(f"dataset {name!r} has no split {split!r}; available: {sorted(ds)}")
        ds = ds[split]
    return ds.to_list()


def normalise_rows(
    rows: list[dict], where: str, prompt_column: str = "prompt", answer_column: str | None = None
) -> list[dict]:
    """Rename the prompt (and answer) column to "prompt" ("answer") and check every prompt."""
    if not rows:
        raise ValueError(f"dataset {where!r} is empty; it needs at least one row")
    if prompt_column not in rows[0]:
        raise ValueError(
            f"dataset {where!r} has no prompt column {prompt_column!r}; available columns: "
            f"{sorted(rows[0])} — set 'prompt_column'"
        )
    if answer_column is not None and answer_column not in rows[0]:
        raise ValueError(
            f"dataset {where!r} has no answer column {answer_column!r}; available columns: {sorted(rows[0])}"
        )
    out = []
    for i, row in enumerate(rows):
        if prompt_column not in row:
            raise ValueError(f"dataset {where!r} row {i} has no {prompt_column!r} column")
        new = dict(row)
        prompt = new.pop(prompt_column)
        if not _is_prompt(prompt):
            raise ValueError(
                f"dataset {where!r} row {i}: prompt must be a string or a list of "
                f"{{'role', 'content'}} messages, got {type(prompt).__name__}"
            )
        new["prompt"] = prompt
        if answer_column is not None and answer_column != "answer":
            new["answer"] = new.pop(answer_column)
        out.append(new)
    return out


def _is_prompt(prompt: Any) -> bool:
    if isinstance(prompt, str):
        return bool(prompt.strip())
    return (
        isinstance(prompt, list)
        and bool(prompt)
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt
        )
    )
