"""Held-out accuracy of an untrained model on the built-in arithmetic task.

    python benchmarks/baseline_accuracy.py --level 2 --num 100 --dtype bfloat16
    python benchmarks/baseline_accuracy.py --level 2 --num 40 --samples 4   # + sampling at T=1

Greedy-decodes the FIXED held-out split of a level (the split every training run is
evaluated on) and prints accuracy, answer-format rate, completion lengths and tokens/s.
``--samples K`` also draws K completions per problem at temperature 1.0 and reports the
mean sampled accuracy and pass@K: GRPO can only learn where some samples are right.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

# Run from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ticgrpo.data.tasks import make_task_splits
from ticgrpo.models import chat_prompt, load_model_and_tokenizer
from ticgrpo.rewards import answer_format, math_correctness


def generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    do_sample: bool = False,
    temperature: float = 1.0,
) -> tuple[list[str], list[int], float]:
    """Completions, their token lengths and the generated tokens per second."""
    texts, lengths, n_tokens, seconds = [], [], 0, 0.0
    eos = tokenizer.eos_token_id
    for start in range(0, len(prompts), batch_size):
        chunk = [chat_prompt(tokenizer, p) for p in prompts[start : start + batch_size]]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                temperature=temperature if do_sample else None,
                top_p=None,
                top_k=None,
                pad_token_id=tokenizer.pad_token_id,
            )
        seconds += time.perf_counter() - t0
        gen = out[:, enc["input_ids"].shape[1] :]
        for row in gen:
            ids = row.tolist()
            n = ids.index(eos) + 1 if eos in ids else len(ids)
            lengths.append(n)
            n_tokens += n
            texts.append(tokenizer.decode(ids[:n], skip_special_tokens=True))
    return texts, lengths, n_tokens / max(seconds, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--level", type=int, default=2)
    parser.add_argument("--num", type=int, default=100)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--samples", type=int, default=0, help="also sample K completions per problem at T=1")
    parser.add_argument("--sample-num", type=int, default=40, help="problems to sample on (first N of the split)")
    parser.add_argument("--show", type=int, default=3, help="print this many greedy completions")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    _, eval_split = make_task_splits("arithmetic", args.level, num_train=0, num_eval=args.num)
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype)
    model.eval()
    prompts = [ex["prompt"] for ex in eval_split]
    answers = [ex["answer"] for ex in eval_split]

    texts, lengths, tps = generate(model, tokenizer, prompts, args.max_new_tokens, args.batch_size)
    correct = math_correctness(prompts, texts, answer=answers)
    fmt = answer_format(prompts, texts)
    truncated = sum(n >= args.max_new_tokens for n in lengths)
    print(f"level {args.level}  n={len(prompts)}  dtype={args.dtype}  max_new_tokens={args.max_new_tokens}")
    print(f"greedy accuracy      {statistics.mean(correct):.3f}")
    print(f"answer format rate   {statistics.mean(fmt):.3f}")
    print(
        f"completion tokens    mean {statistics.mean(lengths):.1f}  median {statistics.median(lengths):.0f}  "
        f"truncated {truncated}/{len(lengths)}"
    )
    print(f"tokens/s             {tps:.0f}")
    for text, ans, ok in list(zip(texts, answers, correct, strict=True))[: args.show]:
        print(f"--- gold {ans} reward {ok}\n{text}")

    if args.samples:
        prompts, answers = prompts[: args.sample_num], answers[: args.sample_num]
        many = [p for p in prompts for _ in range(args.samples)]
        s_texts, s_lengths, s_tps = generate(
            model, tokenizer, many, args.max_new_tokens, args.batch_size, do_sample=True, temperature=1.0
        )
        s_correct = math_correctness(many, s_texts, answer=[a for a in answers for _ in range(args.samples)])
        k = args.samples
        per_problem = [s_correct[i * k : (i + 1) * k] for i in range(len(prompts))]
        mixed = sum(0 < sum(g) < k for g in per_problem)
        print(
            f"sampled (T=1) acc    {statistics.mean(s_correct):.3f}  pass@{k} "
            f"{statistics.mean(float(any(g)) for g in per_problem):.3f}  "
            f"groups with mixed rewards {mixed}/{len(prompts)}  "
            f"mean tokens {statistics.mean(s_lengths):.1f}  tokens/s {s_tps:.0f}"
        )


if __name__ == "__main__":
    main()
