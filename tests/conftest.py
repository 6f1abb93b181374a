"""Shared fixtures: a tiny real tokenizer and a tiny Llama, built in-process (no downloads)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ticgrpo.testing import make_tiny_model, make_tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Any:
    """Byte-level BPE tokenizer with eos/pad tokens, left padding and a ChatML chat template.

    Session-scoped: do not mutate it; build your own with `make_tiny_tokenizer()` if you must.
    """
    return make_tiny_tokenizer()


@pytest.fixture
def tiny_model(tiny_tokenizer: Any) -> Callable[..., Any]:
    """Factory ``tiny_model(vocab_size=None, seed=0, **config)`` of 2-layer LlamaForCausalLMs.

    The default vocabulary (and pad/eos ids) match ``tiny_tokenizer``.
    """

    def factory(vocab_size: int | None = None, seed: int = 0, **config: Any) -> Any:
        tok = tiny_tokenizer if vocab_size is None else None
        return make_tiny_model(vocab_size if vocab_size is not None else len(tiny_tokenizer), seed, tok, **config)

    return factory
