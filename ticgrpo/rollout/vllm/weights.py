"""Weight transfer from the trainer to vLLM: the trainer's (HF name, tensor) pairs (PEFT merged),
the folder a colocated engine boots from, vLLM's in-place ``reload_weights``, and the
safetensors file that carries them to a server process."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import torch

NamedTensors = list[tuple[str, torch.Tensor]]


def trainer_weights(model: Any) -> NamedTensors:
    """(HF parameter name, tensor) pairs of ``model``'s current weights, as vLLM loads them.

    A PEFT model contributes its merged weights (adapters merged for the copy, unmerged after).
    """
    if hasattr(model, "merge_adapter") and hasattr(model, "get_base_model"):
        model.merge_adapter()
        try:
            out = []
            for name, tensor in model.get_base_model().state_dict().items():
                if "lora_" in name or ".original_module." in name:
                    continue
                name = name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
                out.append((name, tensor.detach().clone()))
            return out
        finally:
            model.unmerge_adapter()
    return [(name, tensor.detach()) for name, tensor in model.state_dict().items()]


def save_model_folder(model: Any, tokenizer: Any, folder: str) -> None:
    """``model`` (PEFT: its merged weights, saved as the base model) and ``tokenizer`` as an HF
    folder vLLM can boot from."""
    to_save = model.get_base_model() if hasattr(model, "get_base_model") else model
    with torch.no_grad():
        state = {name: tensor.contiguous() for name, tensor in trainer_weights(model)}
    to_save.save_pretrained(folder, state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def reload_weights(llm: Any, named_tensors: NamedTensors) -> None:
    """Copy (HF name, tensor) pairs into an in-process ``vllm.LLM``'s model; resets its prefix cache.

    Uses the worker's ``reload_weights`` (vLLM's in-place reload: checkpoint-format tensors go
    through the model's ``load_weights`` and are then re-processed into kernel format, e.g. the
    CPU backend's repacked GEMM weights), so it needs the engine core in this process.
    """
    llm.collective_rpc(
        "reload_weights",
        kwargs={"weights_iterator": iter(named_tensors), "is_checkpoint_format": True},
    )
    llm.reset_prefix_cache()


@contextlib.contextmanager
def weights_file(named_tensors: NamedTensors, folder: str | None = None) -> Iterator[str]:
    """The tensors as one safetensors file (under ``folder``, else /dev/shm, else the temp dir)
    that exists for the duration of the ``with`` block."""
    from safetensors.torch import save_file

    base = folder or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
    tmp = tempfile.mkdtemp(prefix="ticgrpo-weights-", dir=base)
    path = os.path.join(tmp, "weights.safetensors")
    try:
        save_file(_unshared(named_tensors), path)
        yield path
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _unshared(named_tensors: NamedTensors) -> dict[str, torch.Tensor]:
    """CPU tensors by name, a name whose storage another name already holds (tied embeddings:
    lm_head.weight is embed_tokens.weight) as a copy: safetensors refuses shared storage."""
    seen: set[int] = set()
    out = {}
    for name, tensor in named_tensors:
        t = tensor.detach().contiguous().cpu()
        pointer = t.untyped_storage().data_ptr()
        out[name] = t.clone() if pointer in seen else t
        seen.add(pointer)
    return out


def read_weights_file(path: str) -> NamedTensors:
    """The (HF name, tensor) pairs of a file written by `weights_file`; FileNotFoundError if missing."""
    from safetensors.torch import load_file

    return list(load_file(path).items())
