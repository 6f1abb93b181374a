"""Load prompt datasets from a built-in task, a JSONL file or a Hugging Face dataset.

Every loader returns a list of row dicts with the prompt under ``"prompt"`` (a string or a
list of chat messages); the other columns pass through unchanged and reach the reward
functions as keyword lists (e.g. ``answer=[...]``).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, ValidationError

from ticgrpo.config.schema import SECTION, Integer, Text
from ticgrpo.data.tasks import EVAL_SEED, TASKS, make_task_splits

logger = logging.getLogger(__name__)


class TaskSource(BaseModel):
    """A built-in task (ticgrpo.data.tasks); its eval split is the fixed held-out set."""

    KIND: ClassVar[str] = "task"
    model_config = SECTION
    task: Text = Field(description="task name, e.g. arithmetic")
    level: Integer = Field(default=1, ge=1, description="difficulty level")
    split: Literal["train", "eval"] = Field(default="train", description="train or the fixed held-out eval split")
    num_train: Integer = Field(default=10_000, ge=1, description="training problems generated")
    num_eval: Integer = Field(default=100, ge=1, description="held-out problems")
    seed: Integer = Field(default=0, description="seed of the training problems")
    eval_seed: Integer = Field(default=EVAL_SEED,
        description="seed of the held-out problems (fixed: the same eval set in every run)")
    prompt_style: Literal["chat", "text"] = Field(default="chat",
        description="one-shot chat messages, or a plain string")


class JsonlSource(BaseModel):
    """One JSON object per line."""

    KIND: ClassVar[str] = "jsonl"
    model_config = SECTION
    jsonl: Text = Field(description="path of the .jsonl file (relative to the working folder)")
    prompt_column: Text = Field(default="prompt", description="the column holding the prompt")
    answer_column: Text | None = Field(default=None, description="the column holding the reference answer")


class HFSource(BaseModel):
    """A Hugging Face dataset: a save_to_disk folder, a local dataset folder or a hub name."""

    KIND: ClassVar[str] = "hf"
    model_config = SECTION
    hf: Text = Field(description="folder or hub name")
    split: Text = Field(default="train", description="split to read")
    config: Text | None = Field(default=None, description="dataset configuration name")
    prompt_column: Text = Field(default="prompt", description="the column holding the prompt")
    answer_column: Text | None = Field(default=None, description="the column holding the reference answer")


class BenchmarkSource(BaseModel):
    """A standard math set (ticgrpo.eval.datasets: gsm8k, math500, aime24, aime25, dapo17k) read
    with its real schema: rows {prompt, answer (the extracted gold answer), id}; rows whose answer
    cannot be parsed are dropped with a warning."""

    KIND: ClassVar[str] = "dataset"
    model_config = SECTION
    dataset: Text = Field(description="gsm8k, math500, aime24, aime25 or dapo17k (docs/eval.md)")
    path: Text = Field(description="a save_to_disk folder, a .json/.jsonl/.parquet file or a hub id")
    split: Text | None = Field(default=None, description="split to read; null = the dataset's usual one "
                               "(gsm8k/math500: test, the others: train)")
    config: Text | None = Field(default=None, description="hub configuration; null = the dataset's usual one "
                                "(gsm8k: main)")


SOURCES = (TaskSource, JsonlSource, HFSource, BenchmarkSource)
SOURCE_KEYS = tuple(model.KIND for model in SOURCES)


def load_dataset_source(spec: dict) -> list[dict]:
    """Rows of the dataset described by ``spec``, a mapping with the keys of one source model:

    - ``{"task": "arithmetic", "level": 2, "split": "train" | "eval", ...}`` (`TaskSource`): a
      built-in task (eval is the fixed held-out split);
    - ``{"jsonl": "path.jsonl", "prompt_column": "prompt"}`` (`JsonlSource`): one JSON object per line;
    - ``{"hf": "name or local dir", "split": "train", "prompt_column": "problem",
      "answer_column": "solution"}`` (`HFSource`): a Hugging Face dataset (a folder saved with
      ``save_to_disk``, a local dataset folder, or a hub name).
    """
    if not isinstance(spec, dict):
        raise ValueError(f"dataset spec must be a dict with one of the keys {SOURCE_KEYS}, got {type(spec).__name__}")
    kinds = [model for model in SOURCES if model.KIND in spec]
    if len(kinds) != 1:
        raise ValueError(f"dataset spec must have exactly one of the keys {SOURCE_KEYS}, got keys {sorted(spec)}")
    try:
        source = kinds[0].model_validate(spec)
    except ValidationError as exc:
        from ticgrpo.config.loading import one_line

        raise ValueError(f"dataset spec: {one_line(exc, kinds[0])}") from None
    if isinstance(source, TaskSource):
        return _load_task(source)
    if isinstance(source, JsonlSource):
        rows, lines = read_jsonl_rows(source.jsonl)
        # errors name the file's 1-based line (blank lines are skipped, so row index and line differ)
        locations = [f"{os.path.expanduser(source.jsonl)}:{line}" for line in lines]
        return normalise_rows(rows, source.jsonl, source.prompt_column, source.answer_column, locations)
    if isinstance(source, BenchmarkSource):
        return _load_benchmark(source)
    assert isinstance(source, HFSource)
    return normalise_rows(_load_hf(source), source.hf, source.prompt_column, source.answer_column)


def _load_benchmark(source: BenchmarkSource) -> list[dict]:
    from ticgrpo.eval.datasets import BENCHMARKS, benchmark_rows, read_records

    benchmark = BENCHMARKS.spec(source.dataset)  # unknown name → error listing the datasets
    records = read_records(source.path, source.split or benchmark.split,
                           source.config if source.config is not None else benchmark.hub_config)
    rows = benchmark_rows(benchmark, records, source.path)
    kept = [{"prompt": row.prompt, "answer": row.gold, "id": row.id} for row in rows if row.gold is not None]
    if len(kept) < len(rows):
        logger.warning(f"dataset {source.path!r}: dropped {len(rows) - len(kept)} of {len(rows)} rows whose "
                       f"{benchmark.name} answer cannot be parsed")
    if not kept:
        raise ValueError(f"dataset {source.path!r}: no row has a parseable {benchmark.name} answer "
                         f"(expected columns: {benchmark.columns})")
    return kept


def _load_task(source: TaskSource) -> list[dict]:
    TASKS.spec(source.task)  # unknown task → error listing the built-in tasks
    train, eval_split = make_task_splits(
        source.task,
        level=source.level,
        num_train=source.num_train if source.split == "train" else 0,
        num_eval=source.num_eval,
        seed=source.seed,
        eval_seed=source.eval_seed,
        # only where written: not every task's generator takes a prompt style
        **({"prompt_style": source.prompt_style} if "prompt_style" in source.model_fields_set else {}),
    )
    return train if source.split == "train" else eval_split


def read_jsonl_rows(path: str) -> tuple[list[dict], list[int]]:
    """(rows, the 1-based line number of each row) of a JSONL file."""
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        raise ValueError(f"jsonl file {path!r} is a folder; give the path of the .jsonl file in the dataset spec")
    if not os.path.isfile(path):
        raise ValueError(f"jsonl file {path!r} does not exist; check the 'jsonl' path in the dataset spec")
    rows, lines = [], []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text (byte {raw[exc.start]:#04x} at column "
                                 f"{exc.start + 1}); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: malformed JSON line ({exc.msg}); fix or remove it") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: each line must be a JSON object, got {type(row).__name__}")
            rows.append(row)
            lines.append(lineno)
    return rows, lines


def _load_hf(source: HFSource) -> list[dict]:
    import datasets

    name, split, config = source.hf, source.split, source.config
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
    rows: list[dict],
    where: str,
    prompt_column: str = "prompt",
    answer_column: str | None = None,
    locations: list[str] | None = None,
) -> list[dict]:
    """Rename the prompt (and answer) column to "prompt" ("answer") and check every row.

    `locations` name each row in error messages (e.g. "data.jsonl:57"); by default
    "dataset '<where>' row <i>" with the 0-based index that `datasets` uses.
    """
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
        at = locations[i] if locations is not None else f"dataset {where!r} row {i}"
        if prompt_column not in row:
            raise ValueError(f"{at}: no {prompt_column!r} column (the first row has one); add it or drop the row")
        new = dict(row)
        prompt = new.pop(prompt_column)
        if not _is_prompt(prompt):
            raise ValueError(
                f"{at}: prompt must be a string or a list of "
                f"{{'role', 'content'}} messages, got {type(prompt).__name__}"
            )
        for column, check in COLUMN_CHECKS.items():
            if column in new:
                try:
                    check(new[column])
                except ValueError as exc:
                    raise ValueError(f"{at}: column {column!r}: {exc}") from None
        new["prompt"] = prompt
        if answer_column is not None and answer_column != "answer":
            new["answer"] = new.pop(answer_column)
        out.append(new)
    return out


def check_tests_column(value: Any) -> None:
    """The `tests` column of code tasks (reward code_tests): a non-empty list of tests, or a JSON
    string of one, each an assert statement or an {input, output} pair that the sandbox can run."""
    from ticgrpo.rewards.sandbox import parse_test

    cases = value
    if isinstance(cases, str):
        try:
            cases = json.loads(cases)
        except json.JSONDecodeError:
            raise ValueError("a string that is not a JSON list of tests; write a list of assert statements or "
                             "{input, output} pairs") from None
    if not isinstance(cases, list) or not cases:
        raise ValueError(f"must be a non-empty list of assert statements or {{input, output}} pairs, "
                         f"got {json.dumps(cases)[:80]}")
    for case in cases:
        parse_test(case)  # ValueError naming the test


# dataset columns whose structure is documented: checked on every row when the data loads, not
# when a reward first reads them (a bad row would otherwise stop the run at the step it is drawn)
COLUMN_CHECKS = {"tests": check_tests_column}


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
