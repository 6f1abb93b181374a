"""Shaping rewards: the answer format and DAPO's soft overlong punishment."""

from __future__ import annotations

import re
from typing import Any

from ticgrpo.rewards.registry import register_reward

# The format the built-in task prompts ask for: a line "Answer: <number>" (markdown bold and
# a trailing unit or full stop tolerated, as the model writes "**Answer:** 42 apples.").
ANSWER_LINE_RE = re.compile(r"Answer\s*:\s*(?:\*\*)?\s*\$?-?\d[\d,]*(?:\.\d+)?")
ANSWER_TAG_RE = re.compile(r"Answer\s*:")


@register_reward("answer_format", own_time_limit=True)  # one regex pass
def answer_format(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """1.0 when the completion has exactly one 'Answer:' and it is followed by a number."""
    out = []
    for c in completions:
        ok = len(ANSWER_TAG_RE.findall(c)) == 1 and ANSWER_LINE_RE.search(c.replace("**Answer:**", "Answer:"))
        out.append(1.0 if ok else 0.0)
    return out


def overlong_penalty(length: int, max_new_tokens: int, cache: int) -> float:
    """DAPO soft overlong punishment for a completion of ``length`` tokens (0 to -1)."""
    budget = max_new_tokens - cache
    if length <= budget:
        return 0.0
    if length <= max_new_tokens:
        return (budget - length) / cache
    return -1.0


@register_reward("overlong_soft", own_time_limit=True)  # arithmetic
def overlong_soft(
    prompts: list[str],
    completions: list[str],
    completion_lengths: list[int] | None = None,
    max_new_tokens: int | None = None,
    overlong_cache: int | None = None,
    **kwargs: Any,
) -> list[float]:
    """DAPO's soft overlong punishment with L = max_new_tokens and C = overlong_cache (default L//4).

    0 while |o| <= L-C, then falls linearly to -1 at |o| = L, and -1 beyond.
    """
    if completion_lengths is None or max_new_tokens is None:
        raise ValueError("overlong_soft needs the trainer's completion_lengths and max_new_tokens keyword arguments")
    if len(completion_lengths) != len(completions):
        raise ValueError(
            f"overlong_soft got {len(completions)} completions but {len(completion_lengths)} completion_lengths"
        )
    cache = max_new_tokens // 4 if overlong_cache is None else int(overlong_cache)
    if not 0 < cache <= max_new_tokens:
        raise ValueError(f"overlong_cache must be in 1..max_new_tokens ({max_new_tokens}), got {cache}")
    return [overlong_penalty(int(n), int(max_new_tokens), cache) for n in completion_lengths]
