"""The prompts stage: training rows, their seeded endless order, the text the policy sees, and the
seeds of sampling."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any


class PromptStream:
    """Endless, seeded, resumable pass over the training rows (reshuffled every epoch)."""

    def __init__(self, rows: list[dict], seed: int, shuffle: bool = True) -> None:
        if not rows:
            raise ValueError("the training dataset is empty")
        self.rows, self.seed, self.shuffle = rows, seed, shuffle
        self.epoch, self.position = 0, 0
        self._order = self._make_order()

    def _make_order(self) -> list[int]:
        order = list(range(len(self.rows)))
        if self.shuffle:
            random.Random(f"{self.seed}-{self.epoch}").shuffle(order)
        return order

    def take(self, n: int) -> list[dict]:
        out: list[dict] = []
        while len(out) < n:
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._make_order()
            out.append(self.rows[self._order[self.position]])
            self.position += 1
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._make_order()


@dataclass(frozen=True)
class PromptFormatter:
    """A dataset row's prompt as the text the policy continues: the tokenizer's chat template
    (with the system prompt) when `chat_template`, else the plain prompt (chat messages joined)."""

    tokenizer: Any
    chat_template: bool = False
    system_prompt: str | None = None

    def __call__(self, row: dict) -> str:
        prompt = row["prompt"]
        if self.chat_template:
            from ticgrpo.models import chat_prompt

            return chat_prompt(self.tokenizer, prompt, self.system_prompt)
        if isinstance(prompt, list):
            return "\n\n".join(str(m["content"]) for m in prompt)
        return prompt if self.system_prompt is None else f"{self.system_prompt}\n\n{prompt}"


def sampling_seed(seed: int, step: int, round_index: int, group: int) -> int:
    """A 63-bit seed that depends only on its arguments (not on Python's hash randomisation)."""
    digest = hashlib.sha256(f"{seed}/{step}/{round_index}/{group}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def load_rows(spec: dict | None) -> list[dict]:
    if spec is None:
        return []
    from ticgrpo.data import load_dataset_source

    return load_dataset_source(spec)
