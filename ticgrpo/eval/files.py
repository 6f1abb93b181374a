"""An evaluation's files: eval.json (the summary: every metric with its interval, the constant
baseline, the answer distributions) and samples.jsonl (one line per problem: prompt, gold, the
greedy completion and the samples, each with its extracted answer and correctness). `ticgrpo
eval` writes them in --out; a training run writes them per evaluation in evals/step-NNNN/."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EVAL_FILES = ("eval.json", "samples.jsonl")


def write_eval_files(folder: str | Path, report: dict, records: Sequence[Any] | None) -> None:
    """eval.json, and samples.jsonl of the `records` (`ProblemRecord`s) unless None, each written
    to a temporary file and renamed into place (a crash leaves the old file or the new one)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    texts = {"eval.json": json.dumps(report, indent=1, allow_nan=True) + "\n"}
    if records is not None:
        texts["samples.jsonl"] = "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in records)
    for name, text in texts.items():
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out / name)
