"""The standard math sets on small fixtures written here with the real schemas (save_to_disk
folders, JSON, JSONL, parquet); nothing is downloaded."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from ticgrpo.data import load_dataset_source
from ticgrpo.eval.datasets import BOXED_INSTRUCTION, canonical_answer, load_eval_rows
from ticgrpo.rewards.math import gsm8k_final_answer

GSM8K_TEST = [
    {"question": "Janet has 3 ducks and buys 4 more. How many ducks?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
    {"question": "A farm sells 1200 eggs a week. How many in two weeks?",
     "answer": "1200 * 2 = <<1200*2=2400>>2400\n#### 2,400"},
    {"question": "A broken row without a final answer.", "answer": "no marker here"},
]
GSM8K_TRAIN = [{"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"}]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture
def gsm8k_folder(tmp_path: Path) -> Path:
    import datasets

    folder = tmp_path / "gsm8k"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(GSM8K_TRAIN),
                          "test": datasets.Dataset.from_list(GSM8K_TEST)}).save_to_disk(str(folder))
    return folder


def test_gsm8k_final_answer() -> None:
    assert gsm8k_final_answer("so 5 + 7 = 12\n#### 12") == "12"
    assert gsm8k_final_answer("#### 1,200.") == "1200"
    assert gsm8k_final_answer("#### -3") == "-3"
    assert gsm8k_final_answer("no final answer") is None


def test_canonical_answer() -> None:
    assert canonical_answer("1,200") == "1200" and canonical_answer(" 72.0 ") == "72"
    assert canonical_answer(33) == "33" and canonical_answer("$\\frac{1}{2}$") == "\\frac{1}{2}"
    assert canonical_answer("  ") is None and canonical_answer(None) is None


def test_gsm8k_from_a_save_to_disk_folder(gsm8k_folder: Path) -> None:
    rows, name, max_tokens = load_eval_rows(f"gsm8k:{gsm8k_folder}")
    assert name == "gsm8k" and max_tokens == 512
    assert [r.gold for r in rows] == ["7", "2400", None]  # the test split by default; the broken row kept
    assert rows[0].prompt == f"{GSM8K_TEST[0]['question']}\n{BOXED_INSTRUCTION}"
    assert rows[2].raw_gold == "no marker here"
    train, _, _ = load_eval_rows(f"gsm8k:{gsm8k_folder}", split="train")
    assert [r.gold for r in train] == ["4"]
    with pytest.raises(ValueError, match=r"has no split 'validation'; available: \['test', 'train'\]"):
        load_eval_rows(f"gsm8k:{gsm8k_folder}", split="validation")


def test_gsm8k_as_a_training_source_drops_unparsed_rows(gsm8k_folder: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="ticgrpo"):
        rows = load_dataset_source({"dataset": "gsm8k", "path": str(gsm8k_folder)})
    assert [r["answer"] for r in rows] == ["7", "2400"] and BOXED_INSTRUCTION in rows[0]["prompt"]
    assert "dropped 1 of 3 rows whose gsm8k answer cannot be parsed" in caplog.text
    with pytest.raises(ValueError, match="unknown dataset 'gsm9k'"):
        load_dataset_source({"dataset": "gsm9k", "path": str(gsm8k_folder)})
    with pytest.raises(ValueError, match="path"):
        load_dataset_source({"dataset": "gsm8k"})


def test_math500_jsonl_with_boxed_answers(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "math500.jsonl", [
        {"problem": "Compute $1/2 + 0$.", "solution": "It is $\\boxed{\\frac{1}{2}}$.", "answer": "\\frac{1}{2}",
         "subject": "Algebra", "level": 1, "unique_id": "test/algebra/1.json"},
        {"problem": "What is $\\sqrt{4}$?", "solution": "$\\sqrt{4} = \\boxed{2}$", "answer": "",
         "subject": "Algebra", "level": 1, "unique_id": "test/algebra/2.json"},
    ])
    rows, _, _ = load_eval_rows(f"math500:{path}")
    assert [r.gold for r in rows] == ["\\frac{1}{2}", "2"]  # an empty answer falls back to the solution's box
    assert [r.id for r in rows] == ["test/algebra/1.json", "test/algebra/2.json"]


def test_aime24_in_both_common_hub_schemas(tmp_path: Path) -> None:
    # HuggingFaceH4/aime_2024: id, problem, solution, answer (text), url, year
    h4 = tmp_path / "aime_h4.json"
    h4.write_text(json.dumps([{"id": 60, "problem": "Find x.", "solution": "...", "answer": "033",
                               "url": "https://example.invalid", "year": "2024"}]))
    # Maxwell-Jia/AIME_2024: ID, Problem, Solution, Answer (an integer), as parquet
    mj = _write_parquet(tmp_path / "aime_mj.parquet", [{"ID": "2024-I-1", "Problem": "Find y.", "Solution": "...",
                                                         "Answer": 204}])
    rows, _, max_tokens = load_eval_rows(f"aime24:{h4}")
    assert (rows[0].gold, rows[0].id, max_tokens) == ("33", "60", 4096)
    rows, _, _ = load_eval_rows(f"aime24:{mj}")
    assert (rows[0].gold, rows[0].id) == ("204", "2024-I-1") and rows[0].prompt.startswith("Find y.")


def test_aime25_question_answer_schema(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "aime25.jsonl", [{"question": "Find z.", "answer": "70"}])
    rows, _, _ = load_eval_rows(f"aime25:{path}")
    assert rows[0].gold == "70" and rows[0].prompt == f"Find z.\n{BOXED_INSTRUCTION}"


def test_dapo17k_parquet_with_chat_prompts_and_ground_truth(tmp_path: Path) -> None:
    prompt = [{"content": "Solve ... The last line of your response should be of the form Answer: $Answer.\n\n"
                          "What is 6 * 7?", "role": "user"}]
    path = _write_parquet(tmp_path / "dapo.parquet", [
        {"data_source": "math_dapo", "prompt": prompt, "ability": "MATH",
         "reward_model": {"ground_truth": "42", "style": "rule-lighteval/MATH_v2"}, "extra_info": {"index": "a1"}},
        {"data_source": "math_dapo", "prompt": prompt, "ability": "MATH",
         "reward_model": {"ground_truth": "", "style": "rule"}, "extra_info": {"index": "a2"}},
    ])
    rows, _, _ = load_eval_rows(f"dapo17k:{path}")
    assert rows[0].prompt == prompt and [r.gold for r in rows] == ["42", None]


def test_jsonl_generic_and_num_examples(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "mine.jsonl", [{"prompt": f"What is {i} + 1?", "answer": i + 1} for i in range(5)])
    rows, _, _ = load_eval_rows(f"jsonl:{path}", num_examples=3)
    assert [r.gold for r in rows] == ["1", "2", "3"] and rows[0].prompt == "What is 0 + 1?"


def test_arithmetic_task_matches_the_training_eval_split() -> None:
    rows, name, max_tokens = load_eval_rows("arithmetic:level=2", num_examples=5)
    expected = load_dataset_source({"task": "arithmetic", "level": 2, "split": "eval"})[:5]
    assert name == "arithmetic" and max_tokens == 96
    assert [(r.prompt, r.gold, r.id) for r in rows] == [(e["prompt"], e["answer"], e["id"]) for e in expected]
    more, _, _ = load_eval_rows("arithmetic:level=2", num_examples=150)
    assert len(more) == 150 and [r.id for r in more[:5]] == [r.id for r in rows]


def test_bad_data_specs_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'gsm8j' \(did you mean 'gsm8k'\?\)"):
        load_eval_rows("gsm8j:/x")
    with pytest.raises(ValueError, match=r"give the data after a colon, e\.g\. math500:PATH"):
        load_eval_rows("math500")
    with pytest.raises(ValueError, match="does not exist"):
        load_eval_rows(f"gsm8k:{tmp_path / 'missing.jsonl'}")
    wrong = _write_jsonl(tmp_path / "wrong.jsonl", [{"text": "What?", "label": "1"}])
    with pytest.raises(ValueError, match=r"no question column for gsm8k .*available columns: \['label', 'text'\]"):
        load_eval_rows(f"gsm8k:{wrong}")
    with pytest.raises(ValueError, match="no problem / Problem / question column"):
        load_eval_rows(f"aime24:{wrong}")
    with pytest.raises(ValueError, match="options are key=value"):
        load_eval_rows("arithmetic:2")
    with pytest.raises(ValueError, match="level"):
        load_eval_rows("arithmetic:level=9")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON file"):
        load_eval_rows(f"aime24:{bad_json}")


def test_a_hub_id_offline_is_a_one_line_error(monkeypatch) -> None:
    import datasets
    import huggingface_hub

    # read at import time by both libraries: the variables alone come too late in this process
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=r"cannot load dataset 'no-such-org/no-such-set'.*pass a local") as info:
        load_eval_rows("gsm8k:no-such-org/no-such-set")
    assert "\n" not in str(info.value)
