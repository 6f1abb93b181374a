"""The server-mode backend: the HTTP client of `ticgrpo.rollout.vllm.server` (JSON, stdlib only)."""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from typing import Any

from ticgrpo.rollout.vllm.backend import Generation
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

    def health(self, timeout: float = 10.0) -> dict[str, Any]:
        """The server's /health answer (model, weight_version); it answers while a generate runs."""
        return self.call("/health", timeout=timeout)

    def generate(self, prompt_ids: list[list[int]], n: int, options: dict[str, Any]) -> Generation:
        out = self.call("/generate", {"prompts": prompt_ids, "n": n, **options})
        completions = [[(list(c["token_ids"]), list(c["logprobs"])) for c in row] for row in out["outputs"]]
        return Generation(completions, int(out["weight_version"]))

    def load_weights(self, named_tensors: NamedTensors, version: int | None = None) -> int:
        with weights_file(named_tensors, self.weights_dir) as path:
            return self.load_weights_file(path, version)

    def load_weights_file(self, path: str, version: int | None = None) -> int:
        """Have the server load a file written by `weights_file`; returns the version it now holds."""
        payload: dict[str, Any] = {"path": path} if version is None else {"path": path, "version": version}
        return int(self.call("/update_weights", payload)["weight_version"])

    def close(self) -> None:
        """Nothing to release: the server outlives its clients (stop it with POST /shutdown)."""
