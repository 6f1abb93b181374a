"""Rewards of the word-reversal example task (docs/training.md, "Bring your own task").

Both are plain functions written the way TRL documents rewards: ticgrpo calls every reward
with keyword arguments only, `prompts`, `completions` and each dataset column as lists
aligned with the completions, plus `completion_lengths`, `truncated`, `max_new_tokens` and
`algorithm.reward_kwargs`; `**kwargs` takes whatever a function does not name.
"""

from __future__ import annotations

import re
from typing import Any

WORD_RE = re.compile(r"[A-Za-z]+")


def reversed_word(completions: list[str], answer: list[str], **kwargs: Any) -> list[float]:
    """1.0 when the completion's first word is the reversed word (the `answer` column); else
    half the fraction of letters in the right place, so that near misses still rank higher."""
    scores = []
    for completion, target in zip(completions, answer, strict=True):
        words = WORD_RE.findall(completion)
        guess = words[0].lower() if words else ""
        if guess == target:
            scores.append(1.0)
        else:
            in_place = sum(a == b for a, b in zip(guess, target, strict=False))  # lengths may differ
            scores.append(0.5 * in_place / max(len(guess), len(target)))
    return scores


def repeats_the_word(completions: list[str], word: list[str], **kwargs: Any) -> list[float | None]:
    """-1 when the completion repeats the word unreversed (the easy wrong answer), else None:
    no opinion (counted as 0). `word` is an extra dataset column."""
    return [-1.0 if w in c.lower() and w[::-1] not in c.lower() else None
            for c, w in zip(completions, word, strict=True)]
