"""The server-mode backend: the HTTP client of `ticgrpo.rollout.vllm.server` (JSON, stdlib only)."""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from typing import Any

from ticgrpo.rollout.vllm.backend import Completion
from ticgrpo.rollout.vllm.server import SERVER_MODULE
from ticgrpo.rollout.vllm.weights import NamedTensors, weights_file


class HTTPBackend:
    """Client of a running `ticgrpo.rollout.vllm.server` at ``url``; `load_weights` writes a
    safetensors file under ``weights_dir`` (default /dev/shm) that the server reads, so both
    must see the same filesystem."""

    def __init__(self, url: str, timeout: float = 3600.0, weights_dir: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.weights_dir = weights_dir
        self.health()

    def call(self, path: str, payload: dict[str, Any] | None = None, timeout: float | None = None) -> dict[str, Any]:
        """One request to the server's endpoint ``path`` (POST with ``payload``, else GET); its
        error answers become RuntimeError, an unreachable server ConnectionError (one line each)."""
        url = self.url + path
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                answer: dict[str, Any] = json.loads(resp.read().decode())
                return answer
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace").strip()
            with contextlib.suppress(ValueError):
                detail = json.loads(detail).get("error", detail)
            raise RuntimeError(f"vLLM server at {url} answered {exc.code}: {detail}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConnectionError(
                f"cannot reach the vLLM server at {url} ({reason}); start it with "
                f"`python -m {SERVER_MODULE} --model PATH --port N`"
            ) from None

    def health(self) -> dict[str, Any]:
        return self.call("/health", timeout=10.0)

    def generate(self, prompt_ids: list[list[int]], n: int, options: dict[str, Any]) -> list[list[Completion]]:
        out = self.call("/generate", {"prompts": prompt_ids, "n": n, **options})
        return [[(list(c["token_ids"]), list(c["logprobs"])) for c in row] for row in out["outputs"]]

    def load_weights(self, named_tensors: NamedTensors) -> None:
        with weights_file(named_tensors, self.weights_dir) as path:
            self.call("/update_weights", {"path": path})

    def close(self) -> None:
        """Nothing to release: the server outlives its clients (stop it with POST /shutdown)."""
