"""The standard math evaluation sets, with their real schemas, and the built-in tasks.

`--data` specs (`load_eval_rows`):

- ``arithmetic:level=2[,num_eval=200,...]``: a built-in task's fixed held-out split (the
  options of `ticgrpo.data.sources.TaskSource`), the same rows as training's ``data.eval``;
- ``gsm8k:PATH``, ``math500:PATH``, ``aime24:PATH``, ``aime25:PATH``, ``dapo17k:PATH``,
  ``jsonl:PATH``: a standard set (`BENCHMARKS`), where PATH is a `save_to_disk` folder, a local
  .json / .jsonl / .parquet file, another local dataset folder, or a hub id (read with
  `datasets.load_dataset`, so it needs access, or the hub cache with HF_HUB_OFFLINE=1).

Each benchmark names the columns it reads (the first present of each list), how its prompt is
built and how its gold answer is extracted. A row whose gold answer cannot be extracted is kept
as an `EvalRow` with ``gold=None``: the runner counts and reports it, never crashes on it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ticgrpo.errors import unknown_choice
from ticgrpo.registry import Registry

# The instruction most published math evaluations append (Qwen2.5-Math, DeepSeek-R1 and others):
# it makes the final answer extractable as the last \boxed{...}.
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
NUMBER_RE = re.compile(r"^-?\d+(?:\.\d+)?$")


@dataclass(frozen=True)
class EvalRow:
    """One problem: the prompt (a string or chat messages), its canonical gold answer (None when
    the dataset's answer field could not be parsed), the raw answer field and an id; `record`:
    the row in ticgrpo's data form it was made from (what a reward reads), when it was one."""

    prompt: str | list[dict]
    gold: str | None
    raw_gold: Any
    id: str
    record: dict | None = field(default=None, compare=False, repr=False)


def canonical_answer(text: Any) -> str | None:
    """The form answers are compared in for voting and for the baseline: stripped, surrounding
    $...$ removed, and a plain number written without thousands separators or a trailing ".0"
    ("1,200" → "1200", "72.0" → "72"); None for an empty answer."""
    if text is None:
        return None
    value = str(text).strip().strip("$").strip()
    if not value:
        return None
    number = value.replace(",", "")
    if NUMBER_RE.match(number):
        as_float = float(number)
        return str(int(as_float)) if as_float.is_integer() else repr(as_float)
    return value


@dataclass(frozen=True)
class BenchmarkSpec:
    """A standard dataset. prompt_columns / answer_columns: the accepted names of the problem and
    answer fields, the first present wins; gold(row, answer_column) → the gold answer text or
    None; prompt(problem) → the prompt; split: the split read by default; hub_id and hub_config:
    the usual hub source (the config is used only when reading from the hub); max_new_tokens:
    the default completion budget; columns: the schema in words, for errors and docs."""

    name: str
    prompt_columns: tuple[str, ...]
    answer_columns: tuple[str, ...]
    gold: Callable[[dict, str], str | None]
    prompt: Callable[[Any], Any]
    split: str
    hub_id: str
    max_new_tokens: int
    columns: str
    hub_config: str | None = None


BENCHMARKS: Registry[BenchmarkSpec] = Registry("dataset")


def _answer_field(row: dict, column: str) -> str | None:
    value = row.get(column)
    return None if value is None or (isinstance(value, str) and not value.strip()) else str(value)


def _gsm8k_gold(row: dict, column: str) -> str | None:
    from ticgrpo.rewards.math import gsm8k_final_answer

    value = row.get(column)
    return gsm8k_final_answer(value) if isinstance(value, str) else None


def _math500_gold(row: dict, column: str) -> str | None:
    """The `answer` field; when it is empty, the last \\boxed{} of the `solution`."""
    from ticgrpo.rewards.math import last_boxed

    answer = _answer_field(row, column)
    if answer is not None:
        return answer
    solution = row.get("solution")
    return last_boxed(solution) if isinstance(solution, str) else None


def _dapo_gold(row: dict, column: str) -> str | None:
    reward_model = row.get(column)
    if isinstance(reward_model, str):  # some exports store the struct as JSON text
        try:
            reward_model = json.loads(reward_model)
        except json.JSONDecodeError:
            return None
    if not isinstance(reward_model, dict):
        return None
    return _answer_field(reward_model, "ground_truth")


def boxed_prompt(problem: Any) -> str:
    return f"{problem}\n{BOXED_INSTRUCTION}"


def as_is(prompt: Any) -> Any:
    """The dataset's own prompt (checked by the loader: `_check_prompt`)."""
    return prompt


for _spec in (
    BenchmarkSpec("gsm8k", ("question",), ("answer",), _gsm8k_gold, boxed_prompt, "test", "openai/gsm8k", 512,
                  "question, answer (a worked solution ending in '#### <number>')", hub_config="main"),
    BenchmarkSpec("math500", ("problem",), ("answer",), _math500_gold, boxed_prompt, "test", "HuggingFaceH4/MATH-500",
                  1024, "problem, answer (the final answer; else the last \\boxed{} of solution)"),
    BenchmarkSpec("aime24", ("problem", "Problem", "question"), ("answer", "Answer"), _answer_field, boxed_prompt,
                  "train", "HuggingFaceH4/aime_2024", 4096,
                  "problem/Problem/question, answer/Answer (an integer 0-999)"),
    BenchmarkSpec("aime25", ("problem", "Problem", "question"), ("answer", "Answer"), _answer_field, boxed_prompt,
                  "train", "math-ai/aime25", 4096, "problem/Problem/question, answer/Answer (an integer 0-999)"),
    BenchmarkSpec("dapo17k", ("prompt",), ("reward_model",), _dapo_gold, as_is, "train",
                  "BytedTsinghua-SIA/DAPO-Math-17k", 2048,
                  "prompt (chat messages that ask for 'Answer: ...'), reward_model.ground_truth"),
    BenchmarkSpec("jsonl", ("prompt",), ("answer",), _answer_field, as_is, "train", "", 512,
                  "prompt (a string or chat messages), answer"),
):
    BENCHMARKS.add(_spec)


def _dataset_names() -> list[str]:
    from ticgrpo.data.tasks import TASKS

    return [*TASKS.names(), *BENCHMARKS.names()]


def parse_data_spec(spec: str) -> tuple[str, str]:
    """(name, argument) of a `--data` spec "NAME:ARG" (ARG may be empty for a task)."""
    name, _, argument = spec.partition(":")
    name = name.strip()
    names = _dataset_names()
    if name not in names:
        raise ValueError(f"--data: {unknown_choice('dataset', name, names)} (e.g. arithmetic:level=2 or gsm8k:PATH)")
    if name in BENCHMARKS and not argument.strip():
        raise ValueError(f"--data {name}: give the data after a colon, e.g. {name}:PATH with PATH a save_to_disk "
                         f"folder, a .json/.jsonl/.parquet file or a hub id (usually "
                         f"{BENCHMARKS.spec(name).hub_id or 'a local file'})")
    return name, argument.strip()


def _task_options(name: str, argument: str) -> dict[str, Any]:
    """`level=2,num_eval=200` → {"task": name, "split": "eval", "level": 2, "num_eval": 200}."""
    options: dict[str, Any] = {"task": name, "split": "eval"}
    for item in filter(None, (part.strip() for part in argument.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--data {name}: options are key=value separated by commas, got {item!r} "
                             f"(e.g. {name}:level=2)")
        options[key.strip()] = int(value) if re.fullmatch(r"-?\d+", value.strip()) else value.strip()
    return options


def load_eval_rows(spec: str, split: str | None = None, config: str | None = None,
                   num_examples: int | None = None) -> tuple[list[EvalRow], str, int]:
    """(rows, dataset name, default max_new_tokens) of a `--data` spec; the first `num_examples`
    rows when given (a task draws at least that many held-out problems)."""
    name, argument = parse_data_spec(spec)
    if name not in BENCHMARKS:
        from ticgrpo.data.sources import load_dataset_source

        options = _task_options(name, argument)
        if num_examples is not None and "num_eval" not in options:
            # the held-out split is generated in order: its first rows do not depend on num_eval
            options["num_eval"] = max(num_examples, 100)
        rows = eval_rows_from_records(load_dataset_source(options))
        return rows[:num_examples] if num_examples is not None else rows, name, 96
    benchmark = BENCHMARKS.spec(name)
    raw = read_records(argument, split or benchmark.split, config if config is not None else benchmark.hub_config)
    if num_examples is not None:
        raw = raw[:num_examples]
    return benchmark_rows(benchmark, raw, argument), name, benchmark.max_new_tokens


def eval_rows_from_records(records: list[dict]) -> list[EvalRow]:
    """`EvalRow`s of rows in ticgrpo's data form ({prompt, answer, id?}, what `load_dataset_source`
    returns, e.g. the trainer's held-out rows); a missing or empty answer gives gold None."""
    return [EvalRow(row["prompt"], canonical_answer(row.get("answer")), row.get("answer"), str(row.get("id", i)),
                    record=row) for i, row in enumerate(records)]


def benchmark_rows(benchmark: BenchmarkSpec, records: list[dict], where: str) -> list[EvalRow]:
    """The `EvalRow`s of a benchmark's records; ValueError naming the missing columns."""
    if not records:
        raise ValueError(f"dataset {where!r} is empty; it needs at least one row")
    available = sorted(records[0])
    prompt_column = next((c for c in benchmark.prompt_columns if c in records[0]), None)
    answer_column = next((c for c in benchmark.answer_columns if c in records[0]), None)
    if prompt_column is None or answer_column is None:
        missing = benchmark.prompt_columns if prompt_column is None else benchmark.answer_columns
        raise ValueError(f"dataset {where!r} has no {' / '.join(missing)} column for {benchmark.name} "
                         f"(expected columns: {benchmark.columns}); available columns: {available}")
    rows = []
    for index, record in enumerate(records):
        prompt = benchmark.prompt(record.get(prompt_column))
        _check_prompt(prompt, f"dataset {where!r} row {index}: column {prompt_column!r}")
        gold = canonical_answer(benchmark.gold(record, answer_column))
        ident = next((str(record[c]) for c in ("id", "ID", "unique_id", "problem_idx") if record.get(c) is not None),
                     str(index))
        rows.append(EvalRow(prompt, gold, record.get(answer_column), ident))
    return rows


def _check_prompt(prompt: Any, where: str) -> None:
    if isinstance(prompt, str) and prompt.strip():
        return
    if isinstance(prompt, list) and prompt and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt
    ):
        return
    raise ValueError(f"{where}: the prompt must be a non-empty string or a list of {{'role', 'content'}} messages, "
                     f"got {type(prompt).__name__}")


def read_records(source: str, split: str, config: str | None = None) -> list[dict]:
    """The records of a save_to_disk folder, a .json / .jsonl / .parquet file, a local dataset
    folder or a hub id (its `split`)."""
    path = os.path.expanduser(source)
    if os.path.isdir(path):
        return _read_folder(path, split, config)
    if os.path.isfile(path):
        return _read_file(path)
    if source.startswith(("/", ".", "~")) or source.endswith((".json", ".jsonl", ".parquet")):
        raise ValueError(f"dataset file or folder {source!r} does not exist; check the path after the colon")
    return _read_hub(source, split, config)


def _read_file(path: str) -> list[dict]:
    if path.endswith(".jsonl"):
        from ticgrpo.data.sources import read_jsonl_rows

        return read_jsonl_rows(path)[0]
    if path.endswith(".json"):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a JSON file ({exc}); give a JSON list of objects or a .jsonl file") from None
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))  # {"data": [...]}, a common export
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ValueError(f"{path}: a .json dataset must be a list of objects (one per problem)")
        return data
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow's errors have no common base class worth naming
            raise ValueError(f"{path}: cannot read the parquet file ({' '.join(str(exc).split())})") from None
    raise ValueError(f"{path}: unknown file type; use .json, .jsonl or .parquet (or a save_to_disk folder)")


def _read_folder(path: str, split: str, config: str | None) -> list[dict]:
    import datasets

    saved = any(os.path.isfile(os.path.join(path, f)) for f in ("state.json", "dataset_dict.json"))
    try:
        ds = datasets.load_from_disk(path) if saved else datasets.load_dataset(path, config, split=split)
    except Exception as exc:  # a folder that is no dataset: every kind of error surfaces here
        raise ValueError(f"cannot read dataset folder {path!r} (split {split!r}): "
                         f"{' '.join(str(exc).split())[:300]}") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ValueError(f"dataset {path!r} has no split {split!r}; available: {sorted(ds)} (pass --split)")
        ds = ds[split]
    return ds.to_list()


def _read_hub(name: str, split: str, config: str | None) -> list[dict]:
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # no network, no access, unknown name or config: all surface here
        reason = " ".join(str(exc).split())[:300]
        raise ValueError(f"cannot load dataset {name!r} (split {split!r}) from the Hugging Face hub: {reason}; "
                         f"pass a local save_to_disk folder or a .json/.jsonl/.parquet file instead") from None
    return ds.to_list()
