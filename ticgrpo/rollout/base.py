"""The rollout interface: prompts in, G sampled completions per prompt out.

Layout of a `RolloutBatch` (B = num_prompts × num_samples rows, prompt-major: the G
completions of prompt k are rows k·G … k·G+G−1):
  prompt_ids      [B, P] left-padded;   prompt_mask      [B, P]
  completion_ids  [B, T] right-padded;  completion_mask  [B, T] — ends at and INCLUDES the
                  first EOS; tokens after it are masked
  truncated       [B] bool — no EOS within max_new_tokens
  completion_lengths [B] long = completion_mask.sum(1)
  group_ids       [B] long — index of the prompt each row belongs to
  behavior_logprobs [B, T] float32 or None — the sampling engine's log-prob of each sampled
                  completion token (log-softmax of logits / temperature), 0 on padding; set
                  by engines that sample from a copy of the policy (e.g. vLLM), None otherwise
  policy_version  [B] long or None — the policy version (optimizer steps taken) whose weights
                  sampled each row; set by the batch sources (ticgrpo.train.sources)
  sampler_logprobs [B, T] float32/64 or None — the trainer's own log-probs of the sampled tokens
                  under the weights that sampled them (teacher-forced, the trainer's numerics),
                  recorded when those weights were at hand (a lagged batch, an HF producer);
                  None when the sampling weights are the current ones (they are recomputed)
  completion_attention_mask [B, T] or None — multi-turn episodes (ticgrpo.rollout.episodes): 1 on
                  every real token after the prompt, the agent's and the environment's; the
                  completion_mask is then the AGENT-TOKEN mask (the tokens the policy sampled), so
                  every objective, advantage, length and KL counts agent tokens only. None: a
                  single completion, where the two masks are one
  episodes        one `Episode` per row (turns, tool calls, transcript) or None (single-turn)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class Continuation:
    """One engine continuation of a token-id context (`RolloutEngine.continue_tokens`)."""

    token_ids: list[int]  # sampled tokens, up to and including the first EOS
    logprobs: list[float] | None  # the engine's log-prob of each sampled token (None: not recorded)
    ended: bool  # an EOS ended it (False: max_new_tokens ran out)


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    greedy: bool = False


@dataclass
class RolloutBatch:
    prompt_ids: Tensor
    prompt_mask: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    truncated: Tensor
    group_ids: Tensor
    prompts: list[str] = field(default_factory=list)  # one per row (repeated G times)
    completions: list[str] = field(default_factory=list)
    behavior_logprobs: Tensor | None = None
    policy_version: Tensor | None = None
    sampler_logprobs: Tensor | None = None
    # [B] log Σ_j (n_j/N) P_θj(o_i): the behaviour density of a pool of batches (algorithm.reuse_window)
    mixture_logprobs: Tensor | None = None
    completion_attention_mask: Tensor | None = None
    episodes: list[Any] | None = None  # ticgrpo.rollout.episodes.Episode, one per row

    @property
    def completion_lengths(self) -> Tensor:
        return self.completion_mask.sum(dim=1).long()

    @property
    def input_ids(self) -> Tensor:
        """concat(prompt, completion): the layout `ticgrpo.core.logprobs.completion_logprobs` reads."""
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> Tensor:
        completion = self.completion_mask if self.completion_attention_mask is None else self.completion_attention_mask
        return torch.cat([self.prompt_mask, completion], dim=1).long()

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    def select(self, rows: Tensor | list[int]) -> RolloutBatch:
        """The rows `rows` (tensor fields and texts), group ids unchanged."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        keep = idx.tolist()
        return replace(
            self,
            prompt_ids=self.prompt_ids[idx],
            prompt_mask=self.prompt_mask[idx],
            completion_ids=self.completion_ids[idx],
            completion_mask=self.completion_mask[idx],
            truncated=self.truncated[idx],
            group_ids=self.group_ids[idx],
            prompts=[self.prompts[i] for i in keep],
            completions=[self.completions[i] for i in keep],
            behavior_logprobs=None if self.behavior_logprobs is None else self.behavior_logprobs[idx],
            policy_version=None if self.policy_version is None else self.policy_version[idx],
            sampler_logprobs=None if self.sampler_logprobs is None else self.sampler_logprobs[idx],
            mixture_logprobs=None if self.mixture_logprobs is None else self.mixture_logprobs[idx],
            completion_attention_mask=None if self.completion_attention_mask is None
            else self.completion_attention_mask[idx],
            episodes=None if self.episodes is None else [self.episodes[i] for i in keep],
        )


def concat_rollouts(batches: list[RolloutBatch], pad_token_id: int) -> RolloutBatch:
    """Stack rollouts (re-padding prompts on the left, completions on the right).

    Group ids are renumbered so that they stay distinct: batch k's groups follow batch k−1's.
    """
    if len(batches) == 1:
        return batches[0]
    for name in ("behavior_logprobs", "policy_version", "sampler_logprobs", "mixture_logprobs",
                 "completion_attention_mask", "episodes"):
        present = [getattr(b, name) is not None for b in batches]
        if any(present) and not all(present):
            raise ValueError(f"concat_rollouts: some batches have {name} and others do not")
    p = max(b.prompt_ids.shape[1] for b in batches)
    t = max(b.completion_ids.shape[1] for b in batches)
    offset, groups = 0, []
    for b in batches:
        _, g = torch.unique(b.group_ids, return_inverse=True)
        groups.append(g + offset)
        offset += int(g.max().item()) + 1 if len(b) else 0
    return RolloutBatch(
        prompt_ids=torch.cat([pad_left(b.prompt_ids, p, pad_token_id) for b in batches]),
        prompt_mask=torch.cat([pad_left(b.prompt_mask, p, 0) for b in batches]),
        completion_ids=torch.cat([pad_right(b.completion_ids, t, pad_token_id) for b in batches]),
        completion_mask=torch.cat([pad_right(b.completion_mask, t, 0) for b in batches]),
        truncated=torch.cat([b.truncated for b in batches]),
        group_ids=torch.cat(groups),
        prompts=[x for b in batches for x in b.prompts],
        completions=[x for b in batches for x in b.completions],
        behavior_logprobs=_cat_optional([b.behavior_logprobs for b in batches], t),
        policy_version=_cat_optional([b.policy_version for b in batches], None),
        sampler_logprobs=_cat_optional([b.sampler_logprobs for b in batches], t),
        mixture_logprobs=_cat_optional([b.mixture_logprobs for b in batches], None),
        completion_attention_mask=_cat_optional([b.completion_attention_mask for b in batches], t),
        episodes=None if batches[0].episodes is None else [e for b in batches for e in b.episodes or []],
    )


def _cat_optional(parts: list[Tensor | None], width: int | None) -> Tensor | None:
    """Concatenate an optional per-row field (right-padded with 0 to `width` when given)."""
    if parts[0] is None:
        return None
    tensors = [p for p in parts if p is not None]
    return torch.cat([pad_right(p, width, 0.0) if width else p for p in tensors])


def pad_left(x: Tensor, width: int, value: float) -> Tensor:
    if x.shape[1] >= width:
        return x
    return torch.nn.functional.pad(x, (width - x.shape[1], 0), value=value)


def pad_right(x: Tensor, width: int, value: float) -> Tensor:
    if x.shape[1] >= width:
        return x
    return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)


def completion_mask_from_eos(completion_ids: Tensor, eos_token_ids: list[int]) -> tuple[Tensor, Tensor]:
    """(mask, truncated): the mask covers tokens up to and including the first EOS.

    A row with no EOS is truncated and keeps all its tokens.
    """
    is_eos = torch.zeros_like(completion_ids, dtype=torch.bool)
    for eos in eos_token_ids:
        is_eos |= completion_ids == eos
    t = completion_ids.shape[1]
    positions = torch.arange(t, device=completion_ids.device).expand_as(completion_ids)
    first = torch.where(is_eos, positions, torch.full_like(positions, t)).min(dim=1).values
    mask = positions <= first[:, None]
    truncated = first >= t
    return mask.long(), truncated


def trim_and_decode(
    completion_ids: Tensor, mask: Tensor, pad_token_id: int, tokenizer: Any
) -> tuple[Tensor, Tensor, list[str]]:
    """Cut a batch to its longest completion, set every token past a completion's end to the pad
    id, and decode each completion (special tokens skipped). Returns (ids, mask, texts)."""
    width = max(int(mask.sum(dim=1).max().item()) if len(mask) else 1, 1)
    ids, mask = completion_ids[:, :width], mask[:, :width]
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad_token_id))
    texts = tokenizer.batch_decode(
        [row[: int(n)] for row, n in zip(ids.tolist(), mask.sum(dim=1).tolist(), strict=True)],
        skip_special_tokens=True,
    )
    return ids, mask, texts


def stop_and_pad_ids(model: Any, tokenizer: Any) -> tuple[list[int], int]:
    """(EOS ids, pad id): every EOS of the model's generation config and of the tokenizer (a
    completion ends at the first of them); the pad id is the tokenizer's, else the first EOS."""
    ids: list[int] = []
    gen = getattr(model, "generation_config", None)
    for value in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id):
        if value is None:
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if int(v) not in ids:
                ids.append(int(v))
    if not ids:
        raise ValueError("the tokenizer and model define no EOS token; set tokenizer.eos_token")
    return ids, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ids[0]


class RolloutEngine(ABC):
    """Generates `num_samples` completions for each prompt text."""

    #: True when `generate` fills `RolloutBatch.behavior_logprobs`.
    provides_behavior_logprobs: bool = False

    def update_weights(self, model: object, version: int | None = None) -> None:  # noqa: B027 (a no-op by design)
        """Push the trainer's current weights (policy version `version`) into the engine; engines
        that sample from the training model itself need nothing."""

    def close(self) -> None:  # noqa: B027 (a no-op by design)
        """Release the engine's resources (processes, memory); a no-op by default."""

    @abstractmethod
    def generate(self, prompts: list[str], num_samples: int, params: SamplingParams) -> RolloutBatch:
        """Rows prompt-major: prompt k's samples are rows k·num_samples … (k+1)·num_samples − 1."""

    def generate_for(self, rows: list[dict], prompts: list[str], num_samples: int,
                     params: SamplingParams) -> RolloutBatch:
        """`generate` for dataset rows and their prompt texts; an engine that needs the rows
        themselves (multi-turn episodes: the environment resets from each row) overrides it."""
        return self.generate(prompts, num_samples, params)

    def continue_tokens(self, contexts: list[list[int]], params: SamplingParams) -> list[Continuation]:
        """One continuation of each token-id context (no re-tokenisation: the tokens the policy saw
        are the tokens it is trained on); what multi-turn episodes need of an engine."""
        raise NotImplementedError(f"{type(self).__name__} cannot continue token contexts, so it cannot run "
                                  f"multi-turn episodes (rollout.environment); use rollout.engine hf or vllm")
