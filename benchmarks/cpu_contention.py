"""Training-step time on the CPU with and without a competing CPU load, per thread setting.

One timed step is the trainer's forward + backward of the policy loss on one micro-batch
(`ticgrpo.train.step.accumulate_gradients`: tic_grpo, ℓ^old given, bf16 autocast as in the
quickstart) of `--batch` sequences of `--prompt-tokens` + `--completion-tokens` tokens.

Each variant is one long-lived worker process (the OpenMP wait policy is read when torch
loads, so it must be in the environment before the worker imports torch); it loads the model
once and then times one step whenever the controller asks. The controller interleaves
everything: for each repeat, for each condition (idle, then `--load` busy-loop processes it
starts itself), every variant in turn, so that each ratio compares trials taken under the
same background load. Variants: `torch` (torch's defaults: as many threads as cores, the
default wait policy), `N` (N threads), `…:passive` (OMP_WAIT_POLICY=PASSIVE), `ticgrpo`
(what `ticgrpo train` does: `import ticgrpo` before torch, `threads` at its default).

    python benchmarks/cpu_contention.py                          # smollm2-135m-instruct
    python benchmarks/cpu_contention.py --model tiny-test --repeats 5
    python benchmarks/cpu_contention.py --variants torch,1,2:passive --load 6
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUSY_LOOP = "while True:\n    pass\n"


def _worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, REPO)
    threads = args.worker.split(":")[0]
    if threads == "ticgrpo":
        import ticgrpo  # noqa: F401  (first: it sets the wait policy before torch loads)
    import torch

    from ticgrpo.config import TrainConfig
    from ticgrpo.core.objectives import make_objective_config
    from ticgrpo.train.setup import configure_cpu_threads, disable_dropout, load_model
    from ticgrpo.train.step import StepSettings, TrainingBatch, accumulate_gradients, fixed_logprobs

    if threads == "ticgrpo":
        configure_cpu_threads(TrainConfig().threads)  # what the trainer does on the CPU
    elif threads != "torch":
        configure_cpu_threads(int(threads))
    cfg = TrainConfig()
    cfg.model.name, cfg.model.dtype = args.model, "float32"
    model, tokenizer = load_model(cfg)
    disable_dropout(model)
    model.train()
    g = torch.Generator().manual_seed(0)
    vocab = min(len(tokenizer), model.get_input_embeddings().num_embeddings)
    b, p, t = args.batch, args.prompt_tokens, args.completion_tokens
    input_ids = torch.randint(0, vocab, (b, p + t), generator=g)
    batch = TrainingBatch(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        completion_ids=input_ids[:, p:],
        completion_mask=torch.ones(b, t),
        advantages=torch.randn(b, generator=g),
        group_ids=torch.zeros(b, dtype=torch.long),
    )
    settings = StepSettings(
        objective="tic_grpo", objective_config=make_objective_config("tic_grpo"), num_iterations=2,
        micro_batch_size=b, max_new_tokens=t, autocast_dtype=torch.bfloat16,
    )
    batch.old_logprobs = fixed_logprobs(model, batch, settings)  # ℓ^old, as before the inner epochs

    def step() -> float:
        start = time.perf_counter()
        accumulate_gradients(model, batch, settings)
        seconds = time.perf_counter() - start
        model.zero_grad(set_to_none=True)
        return seconds

    step()  # warm-up: allocator, oneDNN kernels
    print(json.dumps({"ready": True, "threads": torch.get_num_threads(),
                      "wait_policy": os.environ.get("OMP_WAIT_POLICY", "default")}), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        print(json.dumps({"seconds": step()}), flush=True)


def _start_worker(variant: str, args: argparse.Namespace) -> subprocess.Popen:
    env = dict(os.environ)
    for key in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT", "MKL_NUM_THREADS"):
        env.pop(key, None)  # every variant starts from torch's defaults, whatever this shell has
    if variant.endswith(":passive"):
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", variant, "--model", args.model,
           "--batch", str(args.batch), "--prompt-tokens", str(args.prompt_tokens),
           "--completion-tokens", str(args.completion_tokens)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    return proc


def _read_json(proc: subprocess.Popen, variant: str) -> dict:
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"worker {variant!r} exited with code {proc.wait()}")


def _start_load(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(count)]


def _stop_load(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.kill()
    for proc in procs:
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a ticgrpo model name, or tiny-test")
    parser.add_argument("--variants", default="torch,1,torch:passive,ticgrpo",
                        help="comma-separated: torch | N | ticgrpo, each optionally :passive")
    parser.add_argument("--load", type=int, default=2 * (os.cpu_count() or 1),
                        help="busy-loop processes of the loaded condition (default: 2 per core)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--completion-tokens", type=int, default=48)
    parser.add_argument("--json", help="also write every trial here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    cores = os.cpu_count() or 1
    print(f"{cores} cores, load average before start {os.getloadavg()[0]:.1f}; model {args.model}; "
          f"loaded = {args.load} busy-loop processes; {args.repeats} repeats, interleaved", flush=True)
    workers = {}
    try:
        for variant in variants:  # loaded one after another: loading is not what is measured
            proc = _start_worker(variant, args)
            info = _read_json(proc, variant)
            workers[variant] = proc
            print(f"  {variant:>14}: {info['threads']} threads, OMP_WAIT_POLICY {info['wait_policy']}", flush=True)
        trials: list[dict] = []
        for repeat in range(args.repeats):
            for condition in ("idle", "loaded"):
                load = _start_load(args.load if condition == "loaded" else 0)
                try:
                    time.sleep(0.5 if load else 0.0)  # the busy loops are running before the clock starts
                    for variant in variants:
                        proc = workers[variant]
                        assert proc.stdin is not None
                        proc.stdin.write("step\n")
                        proc.stdin.flush()
                        seconds = _read_json(proc, variant)["seconds"]
                        trials.append({"repeat": repeat, "condition": condition, "variant": variant,
                                       "seconds": seconds, "loadavg": os.getloadavg()[0]})
                        print(f"  repeat {repeat} {condition:>6} {variant:>14}: {seconds:7.2f} s", flush=True)
                finally:
                    _stop_load(load)
    finally:
        for proc in workers.values():
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait()
    _report(trials, variants, args, cores)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "cores": cores, "trials": trials}, f, indent=1)


def _report(trials: list[dict], variants: list[str], args: argparse.Namespace, cores: int) -> None:
    def median(variant: str, condition: str) -> float:
        return statistics.median(t["seconds"] for t in trials
                                 if t["variant"] == variant and t["condition"] == condition)

    baseline = variants[0]
    print(f"\nmedian seconds per step over {args.repeats} repeats; slowdown = loaded / idle of the same variant;"
          f" vs {baseline} = loaded time / {baseline}'s loaded time")
    print(f"{'variant':>14} {'idle s':>8} {'loaded s':>9} {'slowdown':>9} {'vs ' + baseline:>12}")
    for variant in variants:
        idle, loaded = median(variant, "idle"), median(variant, "loaded")
        versus = loaded / median(baseline, "loaded")
        print(f"{variant:>14} {idle:8.2f} {loaded:9.2f} {loaded / idle:8.1f}x {versus:11.2f}x")
    # Under fair sharing, each of our T threads gets cores/(load + T) of a core.
    print(f"fair-share slowdown for T threads: (load + T) / cores = ({args.load} + T) / {cores}, "
          f"i.e. {(args.load + 1) / cores:.1f}x for T = 1, {(args.load + cores) / cores:.1f}x for T = {cores} "
          f"(ignoring the machine's own background load)")


if __name__ == "__main__":
    main()
