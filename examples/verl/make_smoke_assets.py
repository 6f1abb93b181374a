"""Offline assets for examples/verl/gpu_smoke.sh: the bundled SmolLM2-135M-Instruct as an HF folder
(converted by ticgrpo's own `resolve_model_path`) and a tiny addition dataset in verl's parquet format.

    python examples/verl/make_smoke_assets.py OUT_DIR

Writes OUT_DIR/model (config.json, safetensors, tokenizer), OUT_DIR/train.parquet, OUT_DIR/val.parquet.
Rows use verl's `openai/gsm8k` data source, whose built-in reward reads the number after "####".
"""

from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path

import pandas as pd

from ticgrpo.models import SMOLLM2_ALIAS, resolve_model_path


def addition_rows(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        question = f"What is {a} + {b}? Answer with the number after '####', e.g. '#### 7'."
        rows.append(
            {
                "data_source": "openai/gsm8k",
                "prompt": [{"role": "user", "content": question}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": str(a + b)},
                "extra_info": {"index": index},
            }
        )
    return rows


def main(out: str) -> None:
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    model = root / "model"
    if not (model / "config.json").is_file():
        converted = Path(resolve_model_path(SMOLLM2_ALIAS, cache_dir=str(root / "cache")))
        shutil.copytree(converted, model)
    pd.DataFrame(addition_rows(64, seed=0)).to_parquet(root / "train.parquet")
    pd.DataFrame(addition_rows(16, seed=1)).to_parquet(root / "val.parquet")
    print(f"assets in {root}: model/, train.parquet (64 rows), val.parquet (16 rows)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/verl/make_smoke_assets.py OUT_DIR")
    main(sys.argv[1])
