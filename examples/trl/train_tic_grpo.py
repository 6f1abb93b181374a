"""TIC-GRPO with TRL: `TicGRPOTrainer` on a math dataset, single process or `accelerate launch`.

    # laptop smoke run (tiny in-process model, 2 steps, CPU; tested in this repo):
    python examples/trl/train_tic_grpo.py --smoke

    # one GPU
    python examples/trl/train_tic_grpo.py --model Qwen/Qwen3-1.7B --output-dir runs/trl-tic

    # 8 GPUs (NOT yet tested with the ticgrpo trainer: multi-process support is in progress)
    accelerate launch --config_file examples/accelerate/ddp_8gpu.yaml \
        examples/trl/train_tic_grpo.py --model Qwen/Qwen3-1.7B --output-dir runs/trl-tic

Dataset default: open-r1/DAPO-Math-17k-Processed (config "en"; columns `prompt`, `solution`),
evaluated on HuggingFaceH4/aime_2024 (`problem`, `answer`). Column names are options, since
hub datasets change; they were not downloadable (no network) where this script was written.
The reward is ticgrpo's `math_correctness` (math-verify when installed).
"""

from __future__ import annotations

import argparse
import tempfile


def math_reward(prompts, completions, answer, **kwargs):
    from ticgrpo.rewards.math import math_correctness

    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return math_correctness(prompts, texts, answer=answer)


def _hub_dataset(name, config, split, prompt_column, answer_column, limit=None):
    import datasets

    ds = datasets.load_dataset(name, config, split=split)
    ds = ds.rename_columns({k: v for k, v in {prompt_column: "prompt", answer_column: "answer"}.items() if k != v})
    ds = ds.select_columns(["prompt", "answer"])
    return ds.select(range(min(limit, len(ds)))) if limit else ds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny model, 4 prompts, 2 steps on CPU")
    p.add_argument("--model", default="Qwen/Qwen3-1.7B")
    p.add_argument("--objective", default="tic_grpo")
    p.add_argument("--advantage", default="auto", help="'auto' (objective's default), 'trl', or a ticgrpo name")
    p.add_argument("--dataset", default="open-r1/DAPO-Math-17k-Processed")
    p.add_argument("--dataset-config", default="en")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--answer-column", default="solution")
    p.add_argument("--eval-dataset", default="HuggingFaceH4/aime_2024")
    p.add_argument("--output-dir", default=None)
    p.add_argument("--max-steps", type=int, default=500)
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--per-device-batch", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=4)
    p.add_argument("--max-completion-length", type=int, default=4096)
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--lora-r", type=int, default=0, help="> 0: train a LoRA adapter of this rank")
    p.add_argument("--use-vllm", action="store_true")
    args = p.parse_args()

    from ticgrpo.integrations.trl import TicGRPOConfig, TicGRPOTrainer

    common = dict(
        output_dir=args.output_dir or tempfile.mkdtemp(prefix="ticgrpo-trl-"),
        ticgrpo_objective=args.objective,
        ticgrpo_advantage=args.advantage,
        report_to="none",
        logging_steps=1,
        save_strategy="no" if args.smoke else "steps",
    )
    peft_config = None
    if args.smoke:
        import datasets

        from ticgrpo.testing import make_tiny_model, make_tiny_tokenizer

        tokenizer = make_tiny_tokenizer()
        model = make_tiny_model(tokenizer=tokenizer)
        train = datasets.Dataset.from_dict(
            {
                "prompt": [f"What is {a} + {b}?" for a, b in [(3, 4), (5, 9), (12, 7), (20, 22)]],
                "answer": ["7", "14", "19", "42"],
            }
        )
        eval_ds = None
        config = TicGRPOConfig(
            **common,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=2,
            num_generations=4,
            max_completion_length=8,
            max_steps=2,
            learning_rate=1e-3,
            use_cpu=True,
            disable_tqdm=True,
        )
    else:
        model, tokenizer = args.model, None
        train = _hub_dataset(args.dataset, args.dataset_config, "train", args.prompt_column, args.answer_column)
        eval_ds = _hub_dataset(args.eval_dataset, None, "train", "problem", "answer") if args.eval_dataset else None
        config = TicGRPOConfig(
            **common,
            per_device_train_batch_size=args.per_device_batch,
            gradient_accumulation_steps=args.grad_accum,
            num_generations=args.num_generations,
            max_completion_length=args.max_completion_length,
            max_steps=args.max_steps,
            learning_rate=args.lr,
            bf16=True,
            gradient_checkpointing=True,
            use_vllm=args.use_vllm,
            vllm_importance_sampling_correction=False,
            eval_strategy="steps" if eval_ds else "no",
            eval_steps=50,
            save_steps=100,
            beta=0.0,
        )
        if args.lora_r > 0:
            from peft import LoraConfig

            peft_config = LoraConfig(
                r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules="all-linear", task_type="CAUSAL_LM"
            )
    trainer = TicGRPOTrainer(
        model=model,
        reward_funcs=math_reward,
        args=config,
        train_dataset=train,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    result = trainer.train()
    print(f"done: {trainer.state.global_step} steps, training loss {result.training_loss:.4f}")
    if not args.smoke:
        trainer.save_model(config.output_dir)


if __name__ == "__main__":
    main()
