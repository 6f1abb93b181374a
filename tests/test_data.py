"""Task generators, held-out splits and dataset loaders."""

from __future__ import annotations

import json
import re

import pytest

from ticgrpo.data import TASKS, load_dataset_source, make_task_splits
from ticgrpo.data.tasks import SHOTS, arithmetic
from ticgrpo.registry import UnknownNameError

LEVELS = [1, 2, 3, 4, 5]


def _expr(example: dict) -> str:
    return example["id"].split("-", 2)[2]


def _question(example: dict) -> str:
    prompt = example["prompt"]
    return prompt[-1]["content"] if isinstance(prompt, list) else prompt


@pytest.mark.parametrize("level", LEVELS)
def test_deterministic_given_seed(level: int) -> None:
    assert arithmetic(level, 50, seed=3) == arithmetic(level, 50, seed=3)
    assert arithmetic(level, 50, seed=3) != arithmetic(level, 50, seed=4)


@pytest.mark.parametrize("level", LEVELS)
def test_answers_are_correct(level: int) -> None:
    for ex in arithmetic(level, 300, seed=1):
        expr = _expr(ex)
        assert re.fullmatch(r"[\d+\-*]+", expr)
        assert int(ex["answer"]) == eval(expr)  # safe: digits and + - * only
        assert int(ex["answer"]) >= 0
        assert ex["level"] == level
        numbers = re.findall(r"\d+", expr)
        question = _question(ex)
        assert all(n in question for n in numbers)


@pytest.mark.parametrize("level", LEVELS)
def test_held_out_split_is_fixed_unique_and_never_leaks(level: int) -> None:
    num_eval = 50 if level == 1 else 100
    train0, eval0 = make_task_splits("arithmetic", level, num_train=3000, num_eval=num_eval, seed=0)
    train1, eval1 = make_task_splits("arithmetic", level, num_train=3000, num_eval=num_eval, seed=1)
    assert eval0 == eval1  # independent of the training seed
    assert train0 != train1
    eval_ids = {ex["id"] for ex in eval0}
    assert len(eval_ids) == num_eval
    assert len(train0) == 3000
    assert not eval_ids & {ex["id"] for ex in train0 + train1}
    # a smaller eval split is a prefix of a larger one, so num_eval can change safely
    _, eval_small = make_task_splits("arithmetic", level, num_train=0, num_eval=10, seed=0)
    assert eval_small == eval0[:10]


def test_worked_examples_never_appear_as_problems() -> None:
    shot_keys = {key for key, _, _ in SHOTS.values()}
    for level in LEVELS:
        train, ev = make_task_splits("arithmetic", level, num_train=5000, num_eval=50, seed=0)
        assert not shot_keys & {_expr(ex) for ex in train + ev}


def test_prompt_styles() -> None:
    chat = arithmetic(2, 1, seed=0)[0]["prompt"]
    assert [m["role"] for m in chat] == ["user", "assistant", "user"]
    assert chat[1]["content"].endswith("Answer: 42")
    assert "Answer: <number>" in chat[2]["content"]
    text = arithmetic(2, 1, seed=0, prompt_style="text")[0]["prompt"]
    assert isinstance(text, str) and text.startswith("What is ") and "Answer: <number>" in text


def test_task_errors() -> None:
    with pytest.raises(ValueError, match="level must be 1-5"):
        arithmetic(6, 1, seed=0)
    with pytest.raises(ValueError, match="only 100 distinct problems"):
        make_task_splits("arithmetic", 1, num_train=10, num_eval=101)
    with pytest.raises(ValueError, match="prompt style"):
        arithmetic(2, 1, seed=0, prompt_style="xml")
    with pytest.raises(UnknownNameError, match="unknown task 'algebra'; choose one of: arithmetic"):
        TASKS.get("algebra")


# ------------------------------------------------------------------ loaders


def test_task_source_train_and_eval() -> None:
    train = load_dataset_source({"task": "arithmetic", "level": 2, "split": "train", "num_train": 20, "seed": 5})
    ev = load_dataset_source({"task": "arithmetic", "level": 2, "split": "eval", "num_eval": 30})
    assert len(train) == 20 and len(ev) == 30
    assert ev == make_task_splits("arithmetic", 2, num_train=0, num_eval=30)[1]
    text = load_dataset_source({"task": "arithmetic", "level": 3, "num_train": 2, "prompt_style": "text"})
    assert isinstance(text[0]["prompt"], str)


def _write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_jsonl_source_renames_prompt_and_passes_columns(tmp_path) -> None:
    rows = [{"question": "1+1?", "answer": "2", "topic": "add"}, {"question": "2+2?", "answer": "4", "topic": "add"}]
    out = load_dataset_source({"jsonl": _write_jsonl(tmp_path / "d.jsonl", rows), "prompt_column": "question"})
    assert out == [{"answer": "2", "topic": "add", "prompt": "1+1?"}, {"answer": "4", "topic": "add", "prompt": "2+2?"}]


def test_jsonl_source_chat_prompts_and_blank_lines(tmp_path) -> None:
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"prompt": [{"role": "user", "content": "hi"}], "answer": "1"}) + "\n\n")
    assert load_dataset_source({"jsonl": str(path)}) == [{"prompt": [{"role": "user", "content": "hi"}], "answer": "1"}]


def test_hf_source_saved_with_save_to_disk(tmp_path) -> None:
    import datasets

    ds = datasets.Dataset.from_dict({"problem": ["1+2?", "3+4?"], "solution": ["3", "7"]})
    ds.save_to_disk(str(tmp_path / "single"))
    out = load_dataset_source({"hf": str(tmp_path / "single"), "prompt_column": "problem", "answer_column": "solution"})
    assert out == [{"prompt": "1+2?", "answer": "3"}, {"prompt": "3+4?", "answer": "7"}]

    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dict"))
    spec = {"hf": str(tmp_path / "dict"), "split": "test", "prompt_column": "problem"}
    assert load_dataset_source(spec) == [{"prompt": "1+2?", "solution": "3"}]
    with pytest.raises(ValueError, match="has no split 'validation'; available: \\['test', 'train'\\]"):
        load_dataset_source({**spec, "split": "validation"})


def test_hf_source_local_data_folder(tmp_path) -> None:
    folder = tmp_path / "raw"
    folder.mkdir()
    _write_jsonl(folder / "train.jsonl", [{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": "2"}])
    assert load_dataset_source({"hf": str(folder), "split": "train"}) == [
        {"prompt": "a", "answer": "1"},
        {"prompt": "b", "answer": "2"},
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"jsonl": "/no/such/file.jsonl"}, "jsonl file '/no/such/file.jsonl' does not exist"),
        ({"hf": "./no/such/folder"}, "dataset folder './no/such/folder' does not exist"),
        ({"task": "arithmetic", "split": "test"}, "dataset spec: split: unknown value 'test'; choose one of: train"),
        ({"task": "arithmetic", "levle": 2}, "dataset spec: unknown key 'levle'; did you mean 'level'\\?"),
        ({"task": "arithmetic", "level": 0}, "dataset spec: level must be >= 1, got 0"),
        ({"task": "arithmetic", "jsonl": "x"}, "exactly one of the keys"),
        ({}, "exactly one of the keys"),
        ("data.jsonl", "must be a dict"),
    ],
)
def test_source_spec_errors(spec, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_dataset_source(spec)


def test_unknown_task_lists_tasks() -> None:
    with pytest.raises(UnknownNameError, match="choose one of: arithmetic"):
        load_dataset_source({"task": "algebra"})


def test_jsonl_errors(tmp_path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        load_dataset_source({"jsonl": str(empty)})

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"prompt": "b",}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: malformed JSON line"):
        load_dataset_source({"jsonl": str(bad)})

    not_obj = tmp_path / "list.jsonl"
    not_obj.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match=r"list.jsonl:1: each line must be a JSON object"):
        load_dataset_source({"jsonl": str(not_obj)})

    rows = _write_jsonl(tmp_path / "cols.jsonl", [{"question": "a", "answer": "1"}])
    with pytest.raises(ValueError, match=r"no prompt column 'prompt'; available columns: \['answer', 'question'\]"):
        load_dataset_source({"jsonl": rows})
    with pytest.raises(ValueError, match=r"no answer column 'gold'"):
        load_dataset_source({"jsonl": rows, "prompt_column": "question", "answer_column": "gold"})


@pytest.mark.parametrize("prompt", [3, None, "", [], [{"role": "user"}], ["hi"]])
def test_bad_prompt_names_row(tmp_path, prompt) -> None:
    rows = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "ok"}, {"prompt": prompt}])
    with pytest.raises(ValueError, match=r"p.jsonl:2: prompt must be a string or a list of"):
        load_dataset_source({"jsonl": rows})


def test_jsonl_errors_name_the_files_line_not_the_row_index(tmp_path) -> None:
    path = tmp_path / "gaps.jsonl"
    path.write_text('{"prompt": "a"}\n\n\n{"prompt": "b"}\n{"question": "c"}\n')  # row 2 is on line 5
    with pytest.raises(ValueError, match=r"gaps.jsonl:5: no 'prompt' column"):
        load_dataset_source({"jsonl": str(path)})


def test_jsonl_bad_utf8_and_folder_are_named(tmp_path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"prompt": "ok"}\n{"prompt": "café"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.jsonl:2: not UTF-8 text \(byte 0xe9"):
        load_dataset_source({"jsonl": str(path)})
    with pytest.raises(ValueError, match=r"is a folder; give the path of the .jsonl file"):
        load_dataset_source({"jsonl": str(tmp_path)})


@pytest.mark.parametrize(
    ("tests", "message"),
    [
        (["add(1, 2) == 3"], "must be a single assert statement"),
        (["assert add(1, 2) =="], "is not valid Python"),
        ([{"input": "1"}], "needs keys 'input' and 'output'"),
        ([], "must be a non-empty list"),
        ("not json", "not a JSON list of tests"),
        (7, "must be a non-empty list"),
    ],
)
def test_tests_column_is_checked_when_the_data_loads(tmp_path, tests, message) -> None:
    good = {"prompt": "Write add.", "tests": ["assert add(1, 2) == 3", {"input": "1 2", "output": "3"}]}
    rows = _write_jsonl(tmp_path / "code.jsonl", [good, {"prompt": "Write add.", "tests": tests}])
    with pytest.raises(ValueError, match=rf"code.jsonl:2: column 'tests': .*{message}"):
        load_dataset_source({"jsonl": rows})
    as_string = _write_jsonl(tmp_path / "ok.jsonl", [{**good, "tests": json.dumps(good["tests"])}])
    assert load_dataset_source({"jsonl": as_string})[0]["tests"] == json.dumps(good["tests"])  # JSON text is fine
