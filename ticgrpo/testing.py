"""Tiny models and a tiny real tokenizer, built in-process (no downloads), for tests and benchmarks.

The tokenizer is a genuine byte-level BPE trained on a small arithmetic corpus, so it can
encode any text, pads, has eos/pad tokens and a ChatML chat template like SmolLM2's.
"""

from __future__ import annotations

import os
from typing import Any

import torch

IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
SPECIAL_TOKENS = [PAD, IM_START, IM_END]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _corpus() -> list[str]:
    lines = []
    for a in range(0, 100, 3):
        for b in range(0, 100, 7):
            lines.append(f"What is {a} + {b}? {a} + {b} = {a + b}\nAnswer: {a + b}")
            lines.append(f"{a} - {b} = {a - b}, {a} × {b} = {a * b}. The answer is {a * b}.")
    lines += [
        "Tom has 23 apples, buys 15 more and gives away 9. How many apples does he have now?",
        "Think step by step. Put the final answer in \\boxed{42}. End with 'Answer: <number>'.",
        "system user assistant You are a helpful assistant.",
    ]
    return lines


def make_tiny_tokenizer(vocab_size: int = 320, chat_template: bool = True) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` (eos ``<|im_end|>``, pad ``<|endoftext|>``, left padding)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD,
        bos_token=None,
        padding_side="left",
    )
    fast.add_special_tokens({"additional_special_tokens": [IM_START]})
    if chat_template:
        fast.chat_template = CHATML_TEMPLATE
    return fast


def make_tiny_model(vocab_size: int | None = None, seed: int = 0, tokenizer: Any = None, **config: Any) -> Any:
    """A randomly initialised 2-layer ``LlamaForCausalLM`` (hidden 32), deterministic in ``seed``.

    Without ``vocab_size`` it matches `make_tiny_tokenizer` (and takes its pad/eos ids);
    ``tokenizer`` sets the pad/eos ids; ``config`` overrides LlamaConfig fields.
    """
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if vocab_size is None:
        tokenizer = tokenizer if tokenizer is not None else make_tiny_tokenizer()
        vocab_size = len(tokenizer)

    options: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    if tokenizer is not None:
        options.update(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    options.update(config)
    cfg = LlamaConfig(**options)
    # fork_rng: building a model must not shift the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    if tokenizer is not None:
        model.generation_config = GenerationConfig(
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id
        )
    return model.eval()


def make_tiny_checkpoint(path: str | os.PathLike, seed: int = 0) -> str:
    """Save a tiny model + tokenizer into ``path`` (loadable by `load_model_and_tokenizer`)."""
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(len(tokenizer), seed=seed, tokenizer=tokenizer)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
