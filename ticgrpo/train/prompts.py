"""The prompts stage: training rows, their seeded endless order, and the seeds of sampling."""

from __future__ import annotations

import hashlib
import random


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
        out = []
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


def sampling_seed(seed: int, step: int, round_index: int, group: int) -> int:
    """A 63-bit seed that depends only on its arguments (not on Python's hash randomisation)."""
    digest = hashlib.sha256(f"{seed}/{step}/{round_index}/{group}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def load_rows(spec: dict | None) -> list[dict]:
    if spec is None:
        return []
    from ticgrpo.data import load_dataset_source

    return load_dataset_source(spec)
