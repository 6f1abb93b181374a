"""A small HTTP server around one ``vllm.LLM``, the other end of ``VLLMEngine(mode="server")``.

    python -m ticgrpo.rollout.vllm.server --model PATH --host 127.0.0.1 --port 8011 \\
        [--dtype bfloat16] [--gpu-memory-utilization 0.9] [--max-model-len N] [--seed 0] \\
        [--no-enforce-eager] [--engine-kwargs '{"tensor_parallel_size": 2}']

Run it in the vLLM environment, e.g. on its own GPU(s) beside the trainer
(``CUDA_VISIBLE_DEVICES=1 python -m ticgrpo.rollout.vllm.server ...``), then point the
trainer at it with ``rollout.vllm: {mode: server, server_url: "http://HOST:PORT"}``.

Endpoints (JSON; stdlib ``http.server``, one engine call at a time):
  GET  /health          → {"status": "ok", "model": PATH, "weight_version": K}
                        (answers while a generate runs: it takes no lock)
  POST /generate        {"prompts": [[token ids]...], "n": G, "max_tokens", "greedy",
                         "temperature", "top_p", "top_k", "stop_token_ids"[, "seed"]}
                        → {"outputs": [[{"token_ids": [...], "logprobs": [...]}, ×G] per prompt],
                           "weight_version": K}   (the weights that produced these outputs)
  POST /update_weights  {"path": "/dev/shm/.../weights.safetensors", "version": V}
                        → {"status": "ok", "tensors": N, "weight_version": V}
                        (the file holds HF-named tensors; the client writes and removes it, so
                        both processes must see the same filesystem, e.g. one machine;
                        "version" is the trainer's policy version, optional: without it the
                        version goes up by one)
  POST /shutdown        → stops the server
Errors answer 400 (bad request) or 500 with {"error": "one line"}.

Versions: the weights the server booted from are version 0. Generates and weight loads take
one lock, so a generate that started before an update finishes on, and reports, the old version.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ticgrpo.rollout.vllm.backend import SEED_LIMIT
from ticgrpo.rollout.vllm.weights import read_weights_file

SERVER_MODULE = "ticgrpo.rollout.vllm.server"  # how it starts: `python -m ticgrpo.rollout.vllm.server`
REQUIRED = ("prompts", "n", "max_tokens", "greedy", "temperature", "top_p", "top_k", "stop_token_ids")


class BadRequest(ValueError):
    pass


def check_generate(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise BadRequest("the body must be a JSON object")
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise BadRequest(f"missing fields: {', '.join(missing)}")
    prompts = payload["prompts"]
    if not isinstance(prompts, list) or not all(
        isinstance(p, list) and p and all(isinstance(t, int) and t >= 0 for t in p) for p in prompts
    ):
        raise BadRequest("prompts must be a list of non-empty lists of token ids")
    if not isinstance(payload["n"], int) or payload["n"] < 1:
        raise BadRequest("n must be a positive integer")
    if not isinstance(payload["max_tokens"], int) or payload["max_tokens"] < 1:
        raise BadRequest("max_tokens must be a positive integer")
    seed = payload.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT):
        raise BadRequest(f"seed must be null or an integer in [0, 2^62), got {seed!r}")
    return payload


def check_update(payload: Any) -> tuple[str, int | None]:
    """(weights file, requested version or None) of an /update_weights body."""
    if not isinstance(payload, dict) or not isinstance(payload.get("path"), str):
        raise BadRequest("update_weights needs {'path': '<file>.safetensors'} (and optionally 'version': V)")
    version = payload.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 0):
        raise BadRequest(f"version must be a non-negative integer (the trainer's policy version), got {version!r}")
    return payload["path"], version


class Server:
    """The endpoints over one backend (a `LocalBackend`, which counts its weight versions)."""

    def __init__(self, backend: Any, model_path: str) -> None:
        self.backend = backend
        self.model_path = model_path
        self.lock = threading.Lock()  # one engine call at a time: generates and weight loads in order

    def handle(self, method: str, path: str, payload: Any) -> tuple[int, dict]:
        if method == "GET" and path == "/health":
            return 200, {"status": "ok", "model": self.model_path, "weight_version": self.backend.weight_version}
        if method == "POST" and path == "/generate":
            req = check_generate(payload)
            options = {k: req[k] for k in REQUIRED if k not in ("prompts", "n")} | {"seed": req.get("seed")}
            with self.lock:
                generation = self.backend.generate(req["prompts"], req["n"], options)
            return 200, {
                "outputs": [[{"token_ids": ids, "logprobs": lps} for ids, lps in row]
                            for row in generation.completions],
                "weight_version": generation.weight_version,
            }
        if method == "POST" and path == "/update_weights":
            weights_path, version = check_update(payload)
            try:
                tensors = read_weights_file(weights_path)
            except FileNotFoundError:
                raise BadRequest(f"no such weights file: {weights_path}") from None
            with self.lock:
                loaded = self.backend.load_weights(tensors, version)
            return 200, {"status": "ok", "tensors": len(tensors), "weight_version": loaded}
        raise LookupError(f"no endpoint {method} {path}")


def make_handler(server: Server, stop: threading.Event) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _answer(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _dispatch(self, method: str) -> None:
            try:
                payload = None
                if method == "POST":
                    length = int(self.headers.get("Content-Length") or 0)
                    raw = self.rfile.read(length) if length else b""
                    try:
                        payload = json.loads(raw.decode() or "null")
                    except ValueError:
                        raise BadRequest("the body is not valid JSON") from None
                if method == "POST" and self.path == "/shutdown":
                    self._answer(200, {"status": "stopping"})
                    stop.set()
                    return
                code, body = server.handle(method, self.path, payload)
                self._answer(code, body)
            except BadRequest as exc:
                self._answer(400, {"error": str(exc)})
            except LookupError as exc:
                self._answer(404, {"error": str(exc)})
            except Exception as exc:
                self._answer(500, {"error": " ".join(f"{type(exc).__name__}: {exc}".split())})

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_POST(self) -> None:
            self._dispatch("POST")

    return Handler


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Serve one vLLM engine for ticgrpo's VLLMEngine(mode='server').")
    ap.add_argument("--model", required=True, help="HF model folder (config.json, weights, tokenizer)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    ap.add_argument("--max-model-len", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--engine-kwargs", default="{}", help="JSON object of extra vllm.LLM keyword arguments")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        extra = json.loads(args.engine_kwargs)
        if not isinstance(extra, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        print(f"error: --engine-kwargs must be a JSON object ({exc})", file=sys.stderr)
        return 2
    from ticgrpo.models import resolve_model_path
    from ticgrpo.rollout.vllm.colocate import LocalBackend

    try:
        model_path = resolve_model_path(args.model)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    backend = LocalBackend(
        model_path,
        dtype=args.dtype,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=args.max_model_len,
        seed=args.seed,
        enforce_eager=args.enforce_eager,
        **extra,
    )
    stop = threading.Event()
    httpd = ThreadingHTTPServer((args.host, args.port), make_handler(Server(backend, model_path), stop))
    httpd.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    print(f"[{SERVER_MODULE}] serving {model_path} on http://{args.host}:{httpd.server_address[1]}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    httpd.shutdown()
    httpd.server_close()
    backend.close()
    print(f"[{SERVER_MODULE}] stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
