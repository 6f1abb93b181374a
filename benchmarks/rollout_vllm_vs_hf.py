"""Rollout throughput: VLLMEngine (colocate, bf16) vs HFGenerateEngine (bf16 autocast, fp32).

    .venv-vllm/bin/python benchmarks/rollout_vllm_vs_hf.py                # both settings
    .venv-vllm/bin/python benchmarks/rollout_vllm_vs_hf.py --settings short --repeats 5 --threads 1

One process, one model (SmolLM2-135M-Instruct, the bundled alias), the same prompts for every
engine. Settings:
  short — the quickstart's rollouts: P arithmetic prompts (the trainer's chat prompt) × G
          completions, max_new_tokens 48, temperature 1.0;
  long  — P long-form writing prompts × G, max_new_tokens 256 (most completions run to the cap).
Each engine is warmed up once per setting, then the engines take turns for ``--repeats``
timed rounds (so that load from other jobs spreads over all of them). Throughput counts real
completion tokens (``completion_lengths``, EOS included) per second of ``generate``.
Needs ``bash scripts/bootstrap_vllm.sh`` first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

LONG_TOPICS = [
    "a lighthouse keeper who finds a message in a bottle",
    "how bread is made, from the field to the table",
    "a city on Mars a hundred years from now",
    "the history of the bicycle",
    "a day in the life of a honeybee",
    "how a compiler turns source code into a program",
    "an expedition to the bottom of the ocean",
    "why the sky is blue, for a curious ten-year-old",
]


def arithmetic_prompts(tokenizer: Any, n: int) -> list[str]:
    from ticgrpo.data import make_task_splits
    from ticgrpo.models import chat_prompt

    train, _ = make_task_splits("arithmetic", 2, num_train=n, num_eval=4, seed=0)
    return [chat_prompt(tokenizer, row["prompt"]) for row in train]


def long_prompts(tokenizer: Any, n: int) -> list[str]:
    from ticgrpo.models import chat_prompt

    return [
        chat_prompt(tokenizer, f"Write a long, detailed essay of at least 600 words about {LONG_TOPICS[i % 8]}.")
        for i in range(n)
    ]


def _parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--settings", default="short,long", help="comma list of: short, long")
    ap.add_argument("--prompts", type=int, default=4, help="P (prompts per rollout batch)")
    ap.add_argument("--g", type=int, default=8, help="G (completions per prompt)")
    ap.add_argument("--long-prompts", type=int, default=None, help="P for the long setting (default --prompts)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--engines", default="hf-fp32,hf-bf16,vllm-bf16")
    ap.add_argument("--kv-cache-gib", default="2")
    ap.add_argument("--threads", type=int, default=None,
                    help="OMP/torch threads for every engine (default: torch's; vLLM may lower it to 1)")
    return ap.parse_args()


def _make_engine(name: str, model: Any, tok: Any, path: Any) -> Any:
    import torch

    from ticgrpo.rollout import HFGenerateEngine, VLLMEngine

    if name == "hf-fp32":
        return HFGenerateEngine(model, tok)
    if name == "hf-bf16":
        return HFGenerateEngine(model, tok, autocast_dtype=torch.bfloat16)
    vllm_dtypes = {"vllm-bf16": "bfloat16", "vllm-fp32": "float32"}
    if name in vllm_dtypes:
        t = time.perf_counter()
        engine = VLLMEngine(model, tok, model_path=path, dtype=vllm_dtypes[name], max_model_len=2048)
        print(f"[bench] vLLM engine start: {time.perf_counter() - t:.1f} s", flush=True)
        return engine
    raise SystemExit(f"unknown engine {name!r}")


def _setting(setting: str, tok: Any, args: argparse.Namespace) -> tuple[list[str], Any]:
    from ticgrpo.rollout import SamplingParams

    if setting == "short":
        return arithmetic_prompts(tok, args.prompts), SamplingParams(max_new_tokens=48, temperature=1.0)
    if setting == "long":
        return (long_prompts(tok, args.long_prompts or args.prompts),
                SamplingParams(max_new_tokens=256, temperature=1.0))
    raise SystemExit(f"unknown setting {setting!r}")


def _measure(setting: str, engines: dict[str, Any], tok: Any, args: argparse.Namespace) -> list[tuple]:
    """One table row per engine: (setting, P, G, max new, engine, mean length, median tok/s, every tok/s)."""
    import torch

    prompts, params = _setting(setting, tok, args)
    for engine in engines.values():  # warm-up
        engine.generate(prompts, args.g, params)
    rates: dict[str, list[float]] = {n: [] for n in engines}
    lengths: dict[str, list[float]] = {n: [] for n in engines}
    for r in range(args.repeats):
        for name, engine in engines.items():
            t = time.perf_counter()
            batch = engine.generate(prompts, args.g, params)
            dt = time.perf_counter() - t
            tokens = int(batch.completion_lengths.sum())
            rates[name].append(tokens / dt)
            lengths[name].append(float(batch.completion_lengths.float().mean()))
            print(f"[bench] {setting} round {r + 1} {name}: {tokens} tokens in {dt:.2f} s "
                  f"= {tokens / dt:.1f} tok/s (torch threads {torch.get_num_threads()})", flush=True)
    return [(setting, len(prompts), args.g, params.max_new_tokens, name, statistics.mean(lengths[name]),
             statistics.median(rates[name]), rates[name]) for name in engines]


def main() -> None:
    args = _parse_args()
    if args.threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch is imported

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", args.kv_cache_gib)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from ticgrpo.models import load_model_and_tokenizer, resolve_model_path

    path = resolve_model_path(args.model)
    model, tok = load_model_and_tokenizer(path, dtype="float32")
    model.eval()
    t0 = time.perf_counter()
    engines = {name: _make_engine(name, model, tok, path) for name in args.engines.split(",")}
    print(f"[bench] model {path}, torch threads {torch.get_num_threads()}, setup {time.perf_counter() - t0:.1f} s",
          flush=True)
    print(f"[bench] P×G {args.prompts}×{args.g}, repeats {args.repeats}, load average {os.getloadavg()}", flush=True)

    rows = [row for setting in args.settings.split(",") for row in _measure(setting, engines, tok, args)]
    print()
    print("| setting | P×G | max new | engine | mean length | tokens/s (median) | vs HF bf16 | vs HF fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    median = {(row[0], row[4]): row[6] for row in rows}
    for setting, p, g, m, name, length, rate, _ in rows:
        b16, f32 = median.get((setting, "hf-bf16")), median.get((setting, "hf-fp32"))
        r16 = f"{rate / b16:.2f}×" if b16 else "–"
        r32 = f"{rate / f32:.2f}×" if f32 else "–"
        print(f"| {setting} | {p}×{g} | {m} | {name} | {length:.1f} | {rate:.1f} | {r16} | {r32} |")
    print(f"\nload average at the end: {os.getloadavg()}")
    for engine in engines.values():
        engine.close()


if __name__ == "__main__":
    main()
