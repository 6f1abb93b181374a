"""`ticgrpo eval --engine vllm` against real vLLM: the same greedy completions and numbers as the HF engine
on a saved tiny model (run with bash scripts/test_vllm.sh)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ticgrpo.cli import main


def test_eval_with_vllm_matches_hf_greedy(tmp_path: Path, tiny_tok: Any, tiny_factory: Any) -> None:
    folder = tmp_path / "model"
    tiny_factory(tiny_tok, seed=3).save_pretrained(folder)
    tiny_tok.save_pretrained(folder)
    greedy = {}
    for engine in ("hf", "vllm"):
        out = tmp_path / engine
        code = main(["eval", "--model", str(folder), "--data", "arithmetic:level=2", "--num-examples", "4",
                     "--k", "1,2", "--max-new-tokens", "8", "--engine", engine, "--out", str(out), "--no-progress"])
        assert code == 0
        report = json.loads((out / "eval.json").read_text())
        samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
        assert {"greedy_accuracy", "pass@2", "maj@2"} <= set(report["metrics"]) and len(samples) == 4
        assert all(len(s["samples"]) == 2 for s in samples)
        greedy[engine] = [s["greedy"]["text"] for s in samples]
    assert greedy["vllm"] == greedy["hf"]
