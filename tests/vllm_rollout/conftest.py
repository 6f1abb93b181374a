"""Fixtures for the real-vLLM tests (marker ``vllm``; run with ``bash scripts/test_vllm.sh``).

The whole folder is left out of collection where vLLM is not importable (the main ``.venv``),
so the main ``pytest -q`` run never touches it.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import pytest

# A real vllm package has an __init__.py (a stray folder named vllm on sys.path would be a
# namespace package). This folder is not called tests/vllm for that reason: pytest puts tests/
# on sys.path, and a tests/vllm folder would make `import vllm` (e.g. TRL's availability check)
# find it.
_spec = importlib.util.find_spec("vllm")
HAVE_VLLM = _spec is not None and _spec.origin is not None and _spec.origin.endswith("__init__.py")
if not HAVE_VLLM:
    collect_ignore_glob = ["test_*.py"]

# Small KV cache (GiB) for this 2-core, 24 GiB machine; in-process engine core.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# vLLM's CPU attention needs a head size in {32, 64, ...}: hidden 64 with 2 heads.
TINY_CONFIG = dict(
    hidden_size=64, intermediate_size=128, num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False
)


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.vllm)


@pytest.fixture(scope="session")
def tiny_tok() -> Any:
    from ticgrpo.testing import make_tiny_tokenizer

    return make_tiny_tokenizer()


def make_tiny(tok: Any, seed: int = 0) -> Any:
    import torch

    from ticgrpo.testing import make_tiny_model

    model = make_tiny_model(len(tok), seed=seed, tokenizer=tok, **TINY_CONFIG)
    # Sharpen the random model's next-token distributions (fewer near-ties for greedy tests);
    # the head is untied so that this leaves the residual stream alone.
    with torch.no_grad():
        model.lm_head.weight.mul_(6.0)
    return model


@pytest.fixture(scope="session")
def tiny_factory() -> Any:
    """``factory(tokenizer, seed)`` → a sharpened tiny Llama (see `make_tiny`)."""
    return make_tiny


@pytest.fixture(scope="session")
def tiny_model(tiny_tok: Any) -> Any:
    return make_tiny(tiny_tok, seed=0)


@pytest.fixture(scope="session")
def tiny_engine(tiny_model: Any, tiny_tok: Any) -> Any:
    """A colocated fp32 engine booted from the in-memory tiny model (saved to a temp dir)."""
    from ticgrpo.rollout.vllm import VLLMEngine

    engine = VLLMEngine(tiny_model, tiny_tok, dtype="float32", max_model_len=512)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def smol() -> tuple[str, Any, Any]:
    """(path, fp32 HF model, tokenizer) of the bundled SmolLM2-135M-Instruct."""
    from ticgrpo.models import load_model_and_tokenizer, resolve_model_path

    path = resolve_model_path("smollm2-135m-instruct")
    model, tok = load_model_and_tokenizer(path, dtype="float32")
    return path, model.eval(), tok


@pytest.fixture(scope="session")
def smol_engine(smol: tuple[str, Any, Any]) -> Any:
    """A colocated bf16 engine on SmolLM2 (the setting the trainer uses)."""
    from ticgrpo.rollout.vllm import VLLMEngine

    path, model, tok = smol
    engine = VLLMEngine(model, tok, model_path=path, dtype="bfloat16", max_model_len=1024)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def arithmetic_prompts(smol: tuple[str, Any, Any]) -> list[str]:
    from ticgrpo.data.tasks import arithmetic
    from ticgrpo.models import chat_prompt

    _, _, tok = smol
    rows = arithmetic(level=2, num=16, seed=123)
    return [chat_prompt(tok, r["prompt"]) for r in rows]
