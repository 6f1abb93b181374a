"""`VLLMEngine`: rollouts sampled by vLLM, with the sampler's own log-probs of each token.

Two modes:

- ``colocate``: an in-process ``vllm.LLM`` beside the trainer (same machine, same process).
  `update_weights` copies the trainer's parameters straight into vLLM's model and resets
  the prefix cache. The engine is run in-process
  (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so that no tensors cross a process boundary; the
  copy uses vLLM's in-place ``reload_weights`` (re-packs kernel-format weights afterwards).
- ``server``: a separate ``python -m ticgrpo.rollout.vllm.server`` process (e.g. on its own
  GPU) that this engine talks to over HTTP; `update_weights` writes a safetensors file that
  the server reads (see `ticgrpo.rollout.vllm.server`).

Prompts are tokenised here with the trainer's tokenizer (``add_special_tokens=False``, as
`HFGenerateEngine` does) and handed to vLLM as token ids, so both sides see the same tokens.
The rows follow the layout of `ticgrpo.rollout.base` exactly, plus ``behavior_logprobs``:
vLLM's log-prob of each sampled token after temperature (``logprobs_mode="processed_logprobs"``),
i.e. log-softmax(logits / T) — restricted and renormalised to the top-k / top-p set when those
are on. Greedy rows (``params.greedy``) carry the temperature-1 log-probs.

vLLM itself is imported lazily: importing this module works without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from typing import Any

import torch

from ticgrpo.rollout.base import RolloutBatch, RolloutEngine, SamplingParams, stop_and_pad_ids, trim_and_decode

INSTALL_HINT = (
    "vLLM is not installed in this environment; run `bash scripts/bootstrap_vllm.sh` and use "
    "the `.venv-vllm` virtual environment (or `pip install vllm` on a GPU machine)"
)

MODES = ("colocate", "server")

# One completion: (token ids, log-prob of each token).
Completion = tuple[list[int], list[float]]


def import_vllm() -> Any:
    """``import vllm`` with a one-line error naming the bootstrap script when it is missing."""
    try:
        import vllm
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"{INSTALL_HINT} ({exc})") from None
    if not hasattr(vllm, "LLM"):  # e.g. a folder named vllm shadowing the package
        raise ImportError(f"{INSTALL_HINT} (`vllm` resolves to {list(getattr(vllm, '__path__', []))})")
    return vllm


def request_options(params: SamplingParams, eos_token_ids: list[int]) -> dict[str, Any]:
    """The JSON-able sampling options shared by both backends (one request per prompt)."""
    if params.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {params.max_new_tokens}")
    if not params.greedy:
        if not params.temperature > 0:
            raise ValueError(f"temperature must be > 0 for sampling (use greedy=True), got {params.temperature}")
        if not 0 < params.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {params.top_p}")
        if params.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {params.top_k}")
    return {
        "max_tokens": int(params.max_new_tokens),
        "greedy": bool(params.greedy),
        "temperature": float(params.temperature),
        "top_p": float(params.top_p),
        "top_k": int(params.top_k),
        "stop_token_ids": [int(t) for t in eos_token_ids],
    }


class LocalBackend:
    """One in-process ``vllm.LLM``; also what `ticgrpo.rollout.vllm.server` serves."""

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "bfloat16",
        gpu_memory_utilization: float = 0.3,
        max_model_len: int | None = None,
        seed: int = 0,
        enforce_eager: bool = True,
        **engine_kwargs: Any,
    ) -> None:
        # In-process engine core: update_weights reaches the model without pickling tensors.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        vllm = import_vllm()
        kwargs: dict[str, Any] = {
            "model": model_path,
            "dtype": dtype,
            "seed": seed,
            "enforce_eager": enforce_eager,
            "gpu_memory_utilization": gpu_memory_utilization,
            "logprobs_mode": "processed_logprobs",
        }
        if max_model_len is not None:
            kwargs["max_model_len"] = int(max_model_len)
        kwargs.update(engine_kwargs)
        self.llm = vllm.LLM(**kwargs)

    def generate(self, prompt_ids: list[list[int]], n: int, options: dict[str, Any]) -> list[list[Completion]]:
        """``n`` completions for each token-id prompt (greedy: one, repeated ``n`` times)."""
        from vllm import SamplingParams as VSamplingParams
        from vllm import TokensPrompt

        common = dict(
            max_tokens=options["max_tokens"],
            logprobs=0,  # the sampled token's log-prob only
            detokenize=False,
            ignore_eos=True,  # stop exactly at the trainer's EOS set, passed as stop tokens
            stop_token_ids=list(options["stop_token_ids"]),
        )
        if options["greedy"]:
            sp = VSamplingParams(n=1, temperature=0.0, **common)
        else:
            sp = VSamplingParams(
                n=n,
                temperature=options["temperature"],
                top_p=options["top_p"],
                top_k=options["top_k"],
                **common,
            )
        prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids]
        outputs = self.llm.generate(prompts, sp, use_tqdm=False)
        result: list[list[Completion]] = []
        for out in outputs:
            comps = []
            for c in out.outputs:
                ids = [int(t) for t in c.token_ids]
                if ids and not c.logprobs:
                    raise RuntimeError("vLLM returned no log-probs for a completion (logprobs=0 was requested)")
                lps = [float(c.logprobs[i][t].logprob) for i, t in enumerate(ids)]
                comps.append((ids, lps))
            if options["greedy"]:
                comps = comps * n
            result.append(comps)
        return result

    def load_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> None:
        """Copy (HF name, tensor) pairs into the served model; resets the prefix cache.

        Uses the worker's ``reload_weights`` (vLLM's in-place reload: checkpoint-format
        tensors go through the model's ``load_weights`` and are then re-processed into kernel
        format, e.g. the CPU backend's repacked GEMM weights), in-process.
        """
        self.llm.collective_rpc(
            "reload_weights",
            kwargs={"weights_iterator": iter(named_tensors), "is_checkpoint_format": True},
        )
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        self.llm = None
        if llm is None:
            return
        with contextlib.suppress(Exception):
            llm.llm_engine.engine_core.shutdown()
        del llm
        import gc

        gc.collect()


class HTTPBackend:
    """Client of `ticgrpo.rollout.vllm.server` (JSON over HTTP, stdlib only)."""

    def __init__(self, url: str, timeout: float = 3600.0, weights_dir: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.weights_dir = weights_dir
        self.health()

    def _call(self, path: str, payload: dict | None = None, timeout: float | None = None) -> dict:
        url = self.url + path
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                return json.loads(resp.read().decode())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace").strip()
            with contextlib.suppress(ValueError):
                detail = json.loads(detail).get("error", detail)
            raise RuntimeError(f"vLLM server at {url} answered {exc.code}: {detail}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConnectionError(
                f"cannot reach the vLLM server at {url} ({reason}); start it with "
                "`python -m ticgrpo.rollout.vllm.server --model PATH --port N`"
            ) from None

    def health(self) -> dict:
        return self._call("/health", timeout=10.0)

    def generate(self, prompt_ids: list[list[int]], n: int, options: dict[str, Any]) -> list[list[Completion]]:
        out = self._call("/generate", {"prompts": prompt_ids, "n": n, **options})
        return [[(list(c["token_ids"]), list(c["logprobs"])) for c in row] for row in out["outputs"]]

    def load_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> None:
        from safetensors.torch import save_file

        base = self.weights_dir or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
        folder = tempfile.mkdtemp(prefix="ticgrpo-weights-", dir=base)
        path = os.path.join(folder, "weights.safetensors")
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in named_tensors}, path)
            self._call("/update_weights", {"path": path})
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        pass


def trainer_weights(model: Any) -> list[tuple[str, torch.Tensor]]:
    """(HF parameter name, tensor) pairs of ``model``'s current weights, as vLLM loads them.

    A PEFT model contributes its merged weights (adapters merged for the copy, unmerged after).
    """
    if hasattr(model, "merge_adapter") and hasattr(model, "get_base_model"):
        model.merge_adapter()
        try:
            sd = model.get_base_model().state_dict()
            out = []
            for name, t in sd.items():
                if "lora_" in name or ".original_module." in name:
                    continue
                name = name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
                out.append((name, t.detach().clone()))
            return out
        finally:
            model.unmerge_adapter()
    return [(name, t.detach()) for name, t in model.state_dict().items()]


class VLLMEngine(RolloutEngine):
    """Sampling with vLLM; see the module docstring.

    model, tokenizer: the trainer's HF model (for EOS ids and `update_weights`) and tokenizer.
    mode: "colocate" (in-process ``vllm.LLM``) or "server" (HTTP client of vllm_server).
    model_path: folder vLLM loads (colocate); None = save ``model`` + ``tokenizer`` to a
        temporary folder first (removed by `close`).
    server_url: e.g. "http://127.0.0.1:8011" (server mode).
    max_prompt_length: prompts longer than this keep their last tokens, as in `HFGenerateEngine`.
    dtype, gpu_memory_utilization, max_model_len, seed, enforce_eager, **engine_kwargs:
        passed to ``vllm.LLM`` (colocate; the server takes them as command-line options).
    """

    provides_behavior_logprobs = True

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        mode: str = "colocate",
        model_path: str | None = None,
        server_url: str | None = None,
        max_prompt_length: int | None = None,
        dtype: str = "bfloat16",
        gpu_memory_utilization: float = 0.3,
        max_model_len: int | None = None,
        seed: int = 0,
        enforce_eager: bool = True,
        **engine_kwargs: Any,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"vllm mode must be one of {', '.join(MODES)}, got {mode!r}")
        if max_prompt_length is not None and max_prompt_length < 1:
            raise ValueError(f"max_prompt_length must be >= 1, got {max_prompt_length}")
        self.model = model
        self.tokenizer = tokenizer
        self.mode = mode
        self.max_prompt_length = max_prompt_length
        self.eos_token_ids, self.pad_token_id = stop_and_pad_ids(model, tokenizer)
        self._tmpdir: str | None = None
        self.backend: LocalBackend | HTTPBackend
        if mode == "server":
            if not server_url:
                raise ValueError("vllm mode 'server' needs server_url (e.g. http://127.0.0.1:8011)")
            self.backend = HTTPBackend(server_url, **engine_kwargs)
            return
        import_vllm()  # fail fast, before saving a checkpoint
        if model_path is None:
            if model is None:
                raise ValueError("vllm mode 'colocate' needs model_path or a model to save")
            self._tmpdir = tempfile.mkdtemp(prefix="ticgrpo-vllm-")
            model_path = self._tmpdir
            to_save = model.get_base_model() if hasattr(model, "get_base_model") else model
            with torch.no_grad():
                state = {k: v.contiguous() for k, v in trainer_weights(model)}  # PEFT: merged weights
            to_save.save_pretrained(model_path, state_dict=state, safe_serialization=True)
            tokenizer.save_pretrained(model_path)
        elif not os.path.isdir(os.path.expanduser(model_path)):
            raise ValueError(f"model_path {model_path!r} is not a folder")
        self.model_path = model_path
        try:
            self.backend = LocalBackend(
                model_path,
                dtype=dtype,
                gpu_memory_utilization=gpu_memory_utilization,
                max_model_len=max_model_len,
                seed=seed,
                enforce_eager=enforce_eager,
                **engine_kwargs,
            )
        except BaseException:
            self._remove_tmpdir()
            raise

    # ------------------------------------------------------------------ interface

    def generate(self, prompts: list[str], num_samples: int, params: SamplingParams) -> RolloutBatch:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be a list of strings")
        options = request_options(params, self.eos_token_ids)
        prompt_tokens = self._tokenize(prompts)
        if any(len(p) == 0 for p in prompt_tokens):
            raise ValueError("a prompt tokenises to no tokens; vLLM needs at least one")
        outputs = self.backend.generate(prompt_tokens, num_samples, options) if prompts else []
        rows = [c for comps in outputs for c in comps]
        if len(rows) != len(prompts) * num_samples:
            raise RuntimeError(f"vLLM returned {len(rows)} completions, expected {len(prompts) * num_samples}")
        return self._assemble(prompts, prompt_tokens, num_samples, rows)

    def update_weights(self, model: Any) -> None:
        """Push ``model``'s current parameters into vLLM (and drop its prefix cache)."""
        with torch.no_grad():
            self.backend.load_weights(trainer_weights(model))

    def close(self) -> None:
        backend = getattr(self, "backend", None)
        if backend is not None:
            backend.close()
        self._remove_tmpdir()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._remove_tmpdir()

    # ------------------------------------------------------------------ pieces

    def _remove_tmpdir(self) -> None:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def _tokenize(self, prompts: list[str]) -> list[list[int]]:
        if not prompts:
            return []
        enc = self.tokenizer(
            prompts,
            add_special_tokens=False,
        )
        ids = [list(x) for x in enc["input_ids"]]
        if self.max_prompt_length is not None:
            ids = [x[-self.max_prompt_length :] for x in ids]
        return ids

    def _assemble(
        self, prompts: list[str], prompt_tokens: list[list[int]], g: int, rows: list[Completion]
    ) -> RolloutBatch:
        b = len(rows)
        pad = self.pad_token_id
        p = max((len(x) for x in prompt_tokens), default=1)
        t = max((len(ids) for ids, _ in rows), default=1)
        t = max(t, 1)
        prompt_ids = torch.full((b, p), pad, dtype=torch.long)
        prompt_mask = torch.zeros((b, p), dtype=torch.long)
        completion_ids = torch.full((b, t), pad, dtype=torch.long)
        logprobs = torch.zeros((b, t), dtype=torch.float32)
        for r, (ids, lps) in enumerate(rows):
            toks = prompt_tokens[r // g]
            if toks:
                prompt_ids[r, p - len(toks) :] = torch.tensor(toks, dtype=torch.long)
                prompt_mask[r, p - len(toks) :] = 1
            if ids:
                completion_ids[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                logprobs[r, : len(lps)] = torch.tensor(lps, dtype=torch.float32)
        lengths, truncated = [], []
        eos = set(self.eos_token_ids)
        for ids, _ in rows:
            first = next((i for i, tok in enumerate(ids) if tok in eos), None)
            lengths.append(len(ids) if first is None else first + 1)  # up to and including EOS
            truncated.append(first is None)
        mask = (torch.arange(t)[None, :] < torch.tensor(lengths, dtype=torch.long)[:, None]).long()
        completion_ids, mask, decoded = trim_and_decode(completion_ids, mask, pad, self.tokenizer)
        logprobs = logprobs[:, : mask.shape[1]] * mask
        return RolloutBatch(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            completion_ids=completion_ids,
            completion_mask=mask,
            truncated=torch.tensor(truncated, dtype=torch.bool),
            group_ids=torch.arange(len(prompts)).repeat_interleave(g),
            prompts=[x for x in prompts for _ in range(g)],
            completions=decoded,
            behavior_logprobs=logprobs,
        )
