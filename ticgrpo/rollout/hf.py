"""`HFGenerateEngine`: rollouts with batched `model.generate` (eval mode, no_grad, KV cache)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ticgrpo.rollout.base import (
    Continuation,
    RolloutBatch,
    RolloutEngine,
    SamplingParams,
    completion_mask_from_eos,
    concat_rollouts,
    stop_and_pad_ids,
    trim_and_decode,
)


class HFGenerateEngine(RolloutEngine):
    """Sampling through `transformers`' `generate` on the training model itself.

    batch_size: sequences per `generate` call (None = all at once).
    max_prompt_length: prompts longer than this keep their last tokens.
    autocast_dtype: e.g. torch.bfloat16 to generate under autocast.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        batch_size: int | None = None,
        max_prompt_length: int | None = None,
        autocast_dtype: torch.dtype | None = None,
        add_special_tokens: bool = False,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_prompt_length = max_prompt_length
        self.autocast_dtype = autocast_dtype
        self.add_special_tokens = add_special_tokens
        self.eos_token_ids, self.pad_token_id = stop_and_pad_ids(model, tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(self, prompts: list[str], num_samples: int, params: SamplingParams) -> RolloutBatch:
        texts = [p for p in prompts for _ in range(num_samples)]
        groups = torch.arange(len(prompts)).repeat_interleave(num_samples)
        size = self.batch_size or max(len(texts), 1)
        parts = [
            self._generate_chunk(texts[s : s + size], groups[s : s + size], params)
            for s in range(0, len(texts), size)
        ]
        batch = concat_rollouts(parts, self.pad_token_id)
        batch.group_ids = groups.to(batch.completion_ids.device)  # prompt indices (concat renumbers)
        return batch

    def continue_tokens(self, contexts: list[list[int]], params: SamplingParams) -> list[Continuation]:
        """Each context left-padded into one batch (`batch_size` rows per `generate` call); every
        continuation cut after its first EOS."""
        if any(len(c) == 0 for c in contexts):
            raise ValueError("continue_tokens: a context has no tokens")
        size = self.batch_size or max(len(contexts), 1)
        out: list[Continuation] = []
        for start in range(0, len(contexts), size):
            chunk = contexts[start : start + size]
            width = max(len(c) for c in chunk)
            ids = torch.tensor([[self.pad_token_id] * (width - len(c)) + list(c) for c in chunk], device=self.device)
            mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in chunk], device=self.device)
            sampled = self._sample(ids, mask, params)[:, width:].tolist()
            eos = set(self.eos_token_ids)
            for row in sampled:
                end = next((i for i, tok in enumerate(row) if tok in eos), None)
                out.append(Continuation(row if end is None else row[: end + 1], None, end is not None))
        return out

    def _sample(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, params: SamplingParams) -> torch.Tensor:
        """`model.generate` in eval mode, without gradients, under the engine's autocast: prompt + new tokens."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "eos_token_id": self.eos_token_ids,
            "pad_token_id": self.pad_token_id,
            "use_cache": True,
        }
        if params.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(
                do_sample=True,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k if params.top_k > 0 else None,
            )
        was_training = self.model.training
        self.model.eval()
        autocast = (
            torch.autocast(self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        try:
            with torch.no_grad(), autocast:
                return self.model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, **kwargs)
        finally:
            self.model.train(was_training)

    def _generate_chunk(self, texts: list[str], groups: torch.Tensor, params: SamplingParams) -> RolloutBatch:
        tok = self.tokenizer
        side = tok.padding_side
        tok.padding_side = "left"
        try:
            enc = tok(
                texts,
                return_tensors="pt",
                padding=True,
                add_special_tokens=self.add_special_tokens,
            )
        finally:
            tok.padding_side = side
        prompt_ids = enc["input_ids"].to(self.device)
        prompt_mask = enc["attention_mask"].to(self.device)
        # the tokenizer would cut on its truncation side (often the right, i.e. the question and the
        # assistant header); the last tokens of a left-padded batch are its last columns
        if self.max_prompt_length is not None and prompt_ids.shape[1] > self.max_prompt_length:
            prompt_ids = prompt_ids[:, -self.max_prompt_length :]
            prompt_mask = prompt_mask[:, -self.max_prompt_length :]
        out = self._sample(prompt_ids, prompt_mask, params)
        completion_ids = out[:, prompt_ids.shape[1] :]
        if completion_ids.shape[1] == 0:  # max_new_tokens hit before anything (never for >= 1)
            completion_ids = torch.full((len(texts), 1), self.pad_token_id, device=self.device)
        mask, truncated = completion_mask_from_eos(completion_ids, self.eos_token_ids)
        completion_ids, mask, decoded = trim_and_decode(completion_ids, mask, self.pad_token_id, tok)
        return RolloutBatch(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            completion_ids=completion_ids,
            completion_mask=mask,
            truncated=truncated,
            group_ids=groups.to(self.device),
            prompts=list(texts),
            completions=decoded,
        )
