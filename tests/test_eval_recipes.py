"""The GSM8K and DAPO-17k → AIME24 recipes pass `ticgrpo train --dry-run` on local fixtures with the
real schemas, and an absent hub dataset is a prompt one-line error, not a hang (HF_HUB_OFFLINE)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _dry_run(config: str, *overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    args = [sys.executable, "-m", "ticgrpo.cli", "train", "--config", str(ROOT / "configs" / config), "--dry-run"]
    for item in overrides:
        args += ["--set", item]
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def _gsm8k_folder(tmp_path: Path) -> Path:
    import datasets

    row = {"question": "Tom has 3 apples and buys 2. How many?", "answer": "3 + 2 = <<3+2=5>>5\n#### 5"}
    folder = tmp_path / "gsm8k"
    datasets.DatasetDict({"train": datasets.Dataset.from_list([row] * 3),
                          "test": datasets.Dataset.from_list([row] * 2)}).save_to_disk(str(folder))
    return folder


@pytest.mark.slow
def test_gsm8k_recipe_dry_run_on_the_real_schema(tmp_path: Path) -> None:
    folder = _gsm8k_folder(tmp_path)
    done = _dry_run("gsm8k_qwen2.5_0.5b_instruct.yaml", f"data.train.path={folder}", f"data.eval.path={folder}",
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "dry run: 3 training rows and 2 eval rows load; rewards import: math_correctness" in done.stderr
    assert "name: Qwen/Qwen2.5-0.5B-Instruct" in done.stdout and "dataset: gsm8k" in done.stdout


@pytest.mark.slow
def test_dapo_aime_recipe_dry_run_on_the_real_schemas(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    dapo = tmp_path / "dapo.parquet"
    prompt = [{"content": "Solve. The last line of your response should be of the form Answer: $Answer\n\n"
                          "What is 6 * 7?", "role": "user"}]
    pq.write_table(pa.Table.from_pylist([{"data_source": "math_dapo", "prompt": prompt, "ability": "MATH",
                                          "reward_model": {"ground_truth": "42", "style": "rule"},
                                          "extra_info": {"index": str(i)}} for i in range(4)]), dapo)
    aime = tmp_path / "aime24.json"
    aime.write_text(json.dumps([{"id": i, "problem": f"Find n{i}.", "solution": "...", "answer": str(100 + i),
                                 "url": "", "year": "2024"} for i in range(30)]))
    done = _dry_run("dapo17k_qwen3_1.7b_aime24.yaml", f"data.train.path={dapo}", f"data.eval.path={aime}",
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "dry run: 4 training rows and 30 eval rows load" in done.stderr
    assert "ks:\n  - 32\n" in done.stdout


@pytest.mark.slow
def test_recipe_without_the_data_is_a_prompt_one_line_error(tmp_path: Path) -> None:
    started = time.monotonic()
    done = _dry_run("gsm8k_qwen2.5_0.5b_instruct.yaml", cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot load dataset 'openai/gsm8k'" in lines[0] and "save_to_disk" in lines[0]
    assert time.monotonic() - started < 120
