"""Checkpoint bytes with full fine-tuning vs. LoRA, and what the non-finite weight check costs.

Loads the bundled SmolLM2-135M-Instruct (fp32, no network), takes one AdamW step so the
optimizer has its state, and writes a real checkpoint (`ticgrpo.train.checkpoint.save_checkpoint`)
into a temporary folder for each setup; prints the bytes of every file, and the median time of
`nonfinite_weights` (the pass over the trainable weights made after every training step and
before every save) next to the time of one forward + backward pass on a 4x64-token batch.

    python benchmarks/checkpoint_size.py                  # LoRA r=16, all linear layers
    python benchmarks/checkpoint_size.py --rank 8 --model tiny-test
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ticgrpo.train import checkpoint as ckpt


def _load(name: str, lora: dict | None):
    if name == "tiny-test":
        from peft import LoraConfig, get_peft_model

        from ticgrpo.testing import make_tiny_model, make_tiny_tokenizer

        model = make_tiny_model(seed=0, tokenizer=make_tiny_tokenizer())
        if lora is not None:
            model = get_peft_model(model, LoraConfig(target_modules="all-linear", task_type="CAUSAL_LM", **lora))
        return model
    from ticgrpo.models import load_model_and_tokenizer

    return load_model_and_tokenizer(name, lora=lora)[0]


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, lora: dict | None, repeats: int) -> dict:
    torch.manual_seed(0)
    model = _load(name, lora)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    ids = torch.randint(0, model.config.vocab_size, (4, 64))

    def forward_backward() -> None:
        model(input_ids=ids, labels=ids).loss.backward()

    step_s = _median_seconds(forward_backward, 1)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    check_s = _median_seconds(lambda: ckpt.nonfinite_weights(model), repeats)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        path = ckpt.save_checkpoint(out, 1, model, optimizer, scheduler, {})
        save_s = time.perf_counter() - start
        files = {f.name: f.stat().st_size for f in sorted(Path(path).iterdir())}
    return {
        "setup": "full" if lora is None else f"lora r={lora['r']}",
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "files": files, "save_s": save_s, "check_s": check_s, "forward_backward_s": step_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for lora in (None, {"r": args.rank, "lora_alpha": 2 * args.rank}):
        r = measure(args.model, lora, args.repeats)
        total = sum(r["files"].values())
        print(f"{args.model} {r['setup']}: {r['trainable']:,} of {r['parameters']:,} parameters trainable; "
              f"checkpoint {total / 1e6:.2f} MB (model {r['files'][ckpt.MODEL_FILE] / 1e6:.2f} MB, optimizer "
              f"{r['files']['optimizer.pt'] / 1e6:.2f} MB), saved in {r['save_s']:.2f} s; non-finite weight check "
              f"{r['check_s'] * 1e3:.2f} ms vs forward+backward {r['forward_backward_s'] * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
