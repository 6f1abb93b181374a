"""ticgrpo's trainer vs TRL's GRPOTrainer: same model, data, G, batch, lengths and steps.

    python benchmarks/trainer_vs_trl.py                       # tiny Llama + SmolLM2 tokenizer
    python benchmarks/trainer_vs_trl.py --model smollm2-135m-instruct --steps 4

Each run is a separate subprocess (so that its RSS high-water mark is its own); μ = 1 and
μ = 2 (num_iterations) for both, TRL with loss_type "grpo" and ticgrpo with objective
"grpo" (the same loss). A "step" is one rollout batch of P prompts × G completions (TRL
takes μ optimizer steps per rollout batch, as does ticgrpo with one minibatch). Steps/s
leaves out the first step (warm-up). Prints a table, the ratios, and ticgrpo's time split.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def digit_fraction(prompts, completions, **kwargs):
    """A cheap reward with spread: the fraction of digit characters in the completion."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]  # TRL: chat messages
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


def prepare_model(args: argparse.Namespace, folder: Path) -> str:
    """The model folder both trainers load: a tiny random Llama with the SmolLM2 tokenizer by default."""
    from ticgrpo.models import SMOLLM2_ALIAS, resolve_model_path

    if args.model != "tiny":
        return resolve_model_path(args.model)
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(SMOLLM2_ALIAS))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=args.hidden * 2, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def prompts(n: int) -> list[dict]:
    from ticgrpo.data import make_task_splits

    train, _ = make_task_splits("arithmetic", 2, num_train=n, num_eval=4, seed=0)
    return [{"prompt": row["prompt"], "answer": row["answer"]} for row in train]


def run_ticgrpo(args: argparse.Namespace) -> dict:
    from ticgrpo.config import load_config
    from ticgrpo.train import Trainer

    out = Path(tempfile.mkdtemp(prefix="bench-ticgrpo-"))
    config = load_config({
        "output_dir": str(out), "seed": 0, "max_steps": args.steps,
        "model": {"name": args.model_path, "chat_template": True,  # as TRL does for chat prompts
                  "gradient_checkpointing": args.gradient_checkpointing == "on"},
        "rollout": {"prompts_per_step": args.prompts, "num_generations": args.g,
                    "max_new_tokens": args.max_new_tokens, "temperature": 1.0},
        "algorithm": {"objective": "grpo", "num_iterations": args.mu, "num_minibatches": 1,
                      "log_entropy": False},
        "optim": {"lr": 1e-6, "max_grad_norm": 1.0},
        "eval": {"at_start": False, "at_end": False, "every_steps": 0},
        "logging": {"progress_bar": False, "plot": False, "samples_per_step": 0},
        "checkpoint": {"every_steps": 0, "save_final": False},
    })
    trainer = Trainer(config, train_rows=prompts(args.prompts * args.steps), eval_rows=[],
                      reward_fns=[(digit_fraction, 1.0)])
    result = trainer.train()
    steps = result.history[1:] or result.history
    split = {k: sum(m[f"time_{k}"] for m in steps) / len(steps)
             for k in ("rollout", "reward", "old_logprobs", "forward_backward", "optimizer", "step")}
    return {"seconds_per_step": split["step"], "split": split,
            "completion_length": sum(m["completion_length_mean"] for m in steps) / len(steps)}


def run_trl(args: argparse.Namespace) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter())

    tokenizer = AutoTokenizer.from_pretrained(args.model_path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(args.model_path)
    batch = args.prompts * args.g
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-"), max_steps=args.steps * args.mu, learning_rate=1e-6,
        per_device_train_batch_size=batch, gradient_accumulation_steps=1, steps_per_generation=1,
        num_generations=args.g, num_iterations=args.mu, max_completion_length=args.max_new_tokens,
        temperature=1.0, loss_type="grpo", beta=0.0, epsilon=0.2, max_grad_norm=1.0, use_cpu=True,
        bf16=False, report_to="none", save_strategy="no", logging_steps=1000, seed=0, disable_dropout=True,
        gradient_checkpointing=args.gradient_checkpointing == "on",  # TRL 1.16 defaults to on
        shuffle_dataset=False, log_completions=False,
    )
    dataset = Dataset.from_list(prompts(args.prompts * args.steps))
    timer = StepTimer()
    trainer = GRPOTrainer(model=model, reward_funcs=digit_fraction, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[timer])
    start = time.perf_counter()
    trainer.train()
    ends = [start, *timer.times][:: args.mu]  # one entry per rollout batch (μ optimizer steps)
    per_step = [b - a for a, b in itertools.pairwise(ends)]
    steady = per_step[1:] or per_step
    return {"seconds_per_step": sum(steady) / len(steady)}


def child(args: argparse.Namespace) -> None:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    result = run_ticgrpo(args) if args.child == "ticgrpo" else run_trl(args)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="'tiny' (random 2-layer Llama, SmolLM2 tokenizer) or a "
                        "model name/path/alias, e.g. smollm2-135m-instruct")
    parser.add_argument("--hidden", type=int, default=128, help="hidden size of the tiny model")
    parser.add_argument("--steps", type=int, default=4, help="rollout batches per run")
    parser.add_argument("--prompts", type=int, default=2, help="P prompts per step")
    parser.add_argument("--g", type=int, default=4, help="G completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--mu", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--gradient-checkpointing", choices=["on", "off"], default="on",
                        help="the same for both trainers (TRL's GRPOConfig default is on)")
    parser.add_argument("--threads", type=int, default=max(1, min(os.cpu_count() or 1, 2)))
    parser.add_argument("--child", choices=["ticgrpo", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.mu = args.mu[0]
        child(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        model_path = prepare_model(args, Path(tmp) / "model")
        print(f"model={args.model} P={args.prompts} G={args.g} max_new_tokens={args.max_new_tokens} "
              f"steps={args.steps} threads={args.threads} gradient_checkpointing={args.gradient_checkpointing}")
        rows = []
        for mu in args.mu:
            for which in ("ticgrpo", "trl"):
                cmd = [sys.executable, __file__, "--child", which, "--model-path", model_path, "--mu", str(mu),
                       "--steps", str(args.steps), "--prompts", str(args.prompts), "--g", str(args.g),
                       "--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads),
                       "--gradient-checkpointing", args.gradient_checkpointing]
                env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                       "TOKENIZERS_PARALLELISM": "false"}
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if proc.returncode != 0 or not line:
                    print(f"{which} mu={mu} failed:\n{proc.stderr[-3000:]}")
                    continue
                rows.append({"trainer": which, "mu": mu, **json.loads(line[-1][7:])})
    print(f"\n{'trainer':<8} {'mu':>3} {'steps/s':>9} {'s/step':>8} {'peak RSS MiB':>13}")
    for r in rows:
        print(f"{r['trainer']:<8} {r['mu']:>3} {1 / r['seconds_per_step']:>9.3f} {r['seconds_per_step']:>8.2f} "
              f"{r['peak_rss_mib']:>13.0f}")
    for mu in args.mu:
        pair = {r["trainer"]: r for r in rows if r["mu"] == mu}
        if len(pair) == 2:
            speed = pair["trl"]["seconds_per_step"] / pair["ticgrpo"]["seconds_per_step"]
            mem = pair["ticgrpo"]["peak_rss_mib"] / pair["trl"]["peak_rss_mib"]
            print(f"mu={mu}: ticgrpo speed-up over TRL x{speed:.2f}; ticgrpo/TRL peak RSS {mem:.2f}")
        if "ticgrpo" in pair:
            split = pair["ticgrpo"]["split"]
            print(f"mu={mu}: ticgrpo time split per step (s): " + ", ".join(
                f"{k}={v:.3f}" for k, v in split.items()) +
                f"; mean completion length {pair['ticgrpo']['completion_length']:.1f}")


if __name__ == "__main__":
    main()
