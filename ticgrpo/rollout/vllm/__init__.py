"""vLLM rollouts: `VLLMEngine`, a drop-in `RolloutEngine` whose rows carry vLLM's own log-prob
of each sampled token (``behavior_logprobs``).

Two modes:

- ``colocate``: an in-process ``vllm.LLM`` beside the trainer (same machine, same process).
  `update_weights` copies the trainer's parameters straight into vLLM's model and resets
  the prefix cache. The engine is run in-process
  (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so that no tensors cross a process boundary; the
  copy uses vLLM's in-place ``reload_weights`` (re-packs kernel-format weights afterwards).
- ``server``: a separate ``python -m ticgrpo.rollout.vllm.server`` process (e.g. on its own
  GPU) that this engine talks to over HTTP; `update_weights` writes a safetensors file that
  the server reads (see `ticgrpo.rollout.vllm.server`).

The modules: `engine` (VLLMEngine: tokenising, the request, the row layout), `backend` (what a
backend provides, the sampling options both take), `colocate` (the in-process ``vllm.LLM``),
`client` (the HTTP client of `server`), `server` (the HTTP server around one ``vllm.LLM``),
`weights` (the trainer's tensors, in-place reload, the safetensors file push).

vLLM itself is imported lazily: importing this package works without it.
"""

from __future__ import annotations

from ticgrpo.rollout.vllm.backend import Backend, Completion, request_options
from ticgrpo.rollout.vllm.client import HTTPBackend
from ticgrpo.rollout.vllm.colocate import INSTALL_HINT, LocalBackend, import_vllm
from ticgrpo.rollout.vllm.engine import MODES, VLLMEngine, VLLMOptions
from ticgrpo.rollout.vllm.weights import trainer_weights

__all__ = [
    "INSTALL_HINT",
    "MODES",
    "Backend",
    "Completion",
    "HTTPBackend",
    "LocalBackend",
    "VLLMEngine",
    "VLLMOptions",
    "import_vllm",
    "request_options",
    "trainer_weights",
]
