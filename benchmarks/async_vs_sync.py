"""Training throughput of rollout.mode: async (the HF producer process) against the synchronous loop.

Every variant is one real `ticgrpo train` run (a subprocess of this script) on the same config
and machine; its metrics.jsonl gives the figures. Variants:

    sync-1     rollout.mode: sync, threads 1 (sampling and training take turns on one core)
    sync-2     rollout.mode: sync, threads 2 (the same two cores the async runs use, both for each stage)
    async-K1   rollout.mode: async, queue_size 1, max_staleness 1; trainer 1 thread, producer 1 thread
    async-K2   rollout.mode: async, queue_size 2, max_staleness 2; trainer 1 thread, producer 1 thread

(an async run's producer takes the cores the trainer leaves: `threads: 1` on two cores gives it
one.) The first step of each run is left out (process start, the producer's spawn, warm-up);
steps/s = steps / Σ time_step of the others, rollout tokens/s = their completion tokens / the
same seconds (tokens that reached the trainer per second of training). The breakdown says where
a step's seconds go: `sampling` is time_rollout (the trainer's own sampling in sync runs; the
producer's, concurrent with training, in async runs), `wait` the trainer's wait for the producer,
`train` forward/backward + optimizer, `push` the weight copy into the producer's buffer.
Variants are interleaved over `--repeats` (medians reported), so that a background load hits
them alike.

    python benchmarks/async_vs_sync.py                       # tiny-test model (seconds per run)
    python benchmarks/async_vs_sync.py --model smollm2-135m-instruct --steps 6 --max-new-tokens 32
    python benchmarks/async_vs_sync.py --push-cost --model smollm2-135m-instruct   # one weight push, timed
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

VARIANTS: dict[str, list[str]] = {
    "sync-1": ["threads=1"],
    "sync-2": ["threads=2"],
    "async-K1": ["threads=1", "rollout.mode=async", "rollout.queue_size=1", "rollout.max_staleness=1"],
    "async-K2": ["threads=1", "rollout.mode=async", "rollout.queue_size=2", "rollout.max_staleness=2"],
}
BREAKDOWN = {"sampling": "time_rollout", "wait": "time_rollout_wait", "train": "time_train",
             "old_logp": "time_old_logprobs", "push": "time_weight_push", "step": "time_step"}


def run_variant(name: str, args: argparse.Namespace, folder: Path) -> dict:
    """One training run; its per-step figures (the first step left out)."""
    out = folder / name
    overrides = [
        f"max_steps={args.steps}", f"seed={args.seed}", f"model.name={args.model}",
        f"rollout.prompts_per_step={args.prompts}", f"rollout.num_generations={args.generations}",
        f"rollout.max_new_tokens={args.max_new_tokens}", "eval.at_start=false", "eval.at_end=false",
        "eval.every_steps=0", "data.eval=null", "checkpoint.every_steps=0", "checkpoint.save_final=false",
        "logging.progress_bar=false", "logging.plot=false", *VARIANTS[name],
    ]
    cmd = [sys.executable, "-m", "ticgrpo.cli", "train", "--config", str(REPO / "configs" / args.config),
           "--output-dir", str(out), "--overwrite"]
    for item in overrides:
        cmd += ["--set", item]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{name}: ticgrpo train exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
    seconds = sum(m["time_step"] for m in steps)
    tokens = sum(m["completion_length_mean"] * m["num_sequences"] for m in steps)
    return {
        "variant": name, "wall_s": wall, "steps_per_s": len(steps) / seconds, "tokens_per_s": tokens / seconds,
        "staleness_mean": statistics.mean(m["staleness_mean"] for m in steps),
        "stale_dropped": sum(m["stale_dropped"] for m in steps),
        **{key: statistics.mean(m.get(metric, 0.0) for m in steps) for key, metric in BREAKDOWN.items()},
    }


def push_cost(args: argparse.Namespace) -> None:
    """Seconds of HFProducer.push_weights (the trainer's side of a weight push) for the model, and
    of the worker's copy into its model at its next job (inside that job's sampling seconds)."""
    import torch

    from ticgrpo.config import load_config
    from ticgrpo.rollout import HFGenerateEngine
    from ticgrpo.rollout.producers.hf import HFProducer, HFWorkerSpec, trainable_weights
    from ticgrpo.train.components import step_settings
    from ticgrpo.train.setup import load_model

    torch.set_num_threads(1)
    cfg = load_config({"model": {"name": args.model, "chat_template": False}})
    model, tokenizer = load_model(cfg)
    size = sum(p.numel() * p.element_size() for p in trainable_weights(model).values())
    producer = HFProducer(HFWorkerSpec.of_engine(HFGenerateEngine(model, tokenizer), step_settings(cfg, None),
                                                 "cpu", 1))
    try:
        start = time.perf_counter()
        producer.start(model)
        started = time.perf_counter() - start
        seconds = []
        for version in range(1, args.repeats + 2):
            start = time.perf_counter()
            producer.push_weights(model, version)
            seconds.append(time.perf_counter() - start)
    finally:
        producer.close()
    print(f"{args.model}: {size / 2**20:.0f} MiB of trainable weights; producer start (spawn, copy, load) "
          f"{started:.1f} s; push_weights median {statistics.median(seconds[1:]):.3f} s over {args.repeats} "
          f"(first {seconds[0]:.3f} s)")


def report(trials: list[dict], variants: list[str]) -> None:
    def median(variant: str, key: str) -> float:
        return statistics.median(t[key] for t in trials if t["variant"] == variant)

    keys = ["steps_per_s", "tokens_per_s", "staleness_mean", "stale_dropped", *BREAKDOWN]
    print(f"\nmedians over {len(trials) // len(variants)} repeat(s); seconds are per step (first step left out)")
    print(f"{'variant':>9} " + " ".join(f"{k:>14}" for k in keys))
    for v in variants:
        print(f"{v:>9} " + " ".join(f"{median(v, k):14.3f}" for k in keys))
    for baseline in ("sync-1", "sync-2"):
        if baseline not in variants:
            continue
        print(f"\nratios to {baseline} (steps/s, rollout tokens/s)")
        for v in variants:
            if v.startswith("async"):
                print(f"  {v:>9} / {baseline}: {median(v, 'steps_per_s') / median(baseline, 'steps_per_s'):5.2f}x  "
                      f"{median(v, 'tokens_per_s') / median(baseline, 'tokens_per_s'):5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-test", help="tiny-test, or smollm2-135m-instruct")
    parser.add_argument("--config", default="tiny.yaml", help="a config under configs/ (its algorithm and rewards)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write every trial here")
    parser.add_argument("--push-cost", action="store_true", help="only time the HF producer's weight push")
    args = parser.parse_args()
    if args.push_cost:
        push_cost(args)
        return
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; model {args.model}, configs/{args.config}, "
          f"P={args.prompts} G={args.generations} max_new_tokens={args.max_new_tokens}, {args.steps} steps; "
          f"{args.repeats} repeats, interleaved", flush=True)
    trials = []
    with tempfile.TemporaryDirectory(prefix="async-vs-sync-") as folder:
        for repeat in range(args.repeats):
            for name in variants:
                trial = {"repeat": repeat, **run_variant(name, args, Path(folder))}
                trials.append(trial)
                print(f"  repeat {repeat} {name:>9}: {trial['steps_per_s']:.3f} steps/s, "
                      f"{trial['tokens_per_s']:.1f} tokens/s, staleness {trial['staleness_mean']:.2f} "
                      f"(run {trial['wall_s']:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)
    report(trials, variants)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "trials": trials}, indent=1))


if __name__ == "__main__":
    main()
