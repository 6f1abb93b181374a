"""`VLLMEngine`: the `RolloutEngine` that samples with vLLM, with the sampler's own log-probs of
each token; its backend is in-process (`colocate`) or a server process (`client`).

Prompts are tokenised here with the trainer's tokenizer (``add_special_tokens=False``, as
`HFGenerateEngine` does) and handed to vLLM as token ids, so both sides see the same tokens.
The rows follow the layout of `ticgrpo.rollout.base` exactly, plus ``behavior_logprobs``:
vLLM's log-prob of each sampled token after temperature (``logprobs_mode="processed_logprobs"``),
i.e. log-softmax(logits / T) — restricted and renormalised to the top-k / top-p set when those
are on. Greedy rows (``params.greedy``) carry the temperature-1 log-probs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Any, ClassVar, Literal, get_args

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ticgrpo.config.schema import Flag, Integer, Number
from ticgrpo.rollout.base import (
    Continuation,
    RolloutBatch,
    RolloutEngine,
    SamplingParams,
    stop_and_pad_ids,
    trim_and_decode,
)
from ticgrpo.rollout.vllm.backend import Backend, Completion, request_options
from ticgrpo.rollout.vllm.client import HTTPBackend
from ticgrpo.rollout.vllm.colocate import LocalBackend, import_vllm
from ticgrpo.rollout.vllm.weights import save_model_folder, trainer_weights


class VLLMOptions(BaseModel):
    """`rollout.vllm`: VLLMEngine keyword options (docs/vllm.md).

    The one definition of the engine's options: `VLLMEngine(model, tokenizer, **options)` checks its
    keywords with this model and reads the defaults from it."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    PASSED_TO: ClassVar[str] = "vllm.LLM"
    mode: Literal["colocate", "server"] = Field(default="colocate",
        description="vLLM in this process, or an HTTP server")
    model_path: str | None = Field(default=None,
        description="weights folder vLLM loads first; null = saved from the model")
    server_url: str | None = Field(default=None,
        description="mode server: http://HOST:PORT of ticgrpo.rollout.vllm.server")
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] = Field(default="bfloat16",
        description="vLLM weights dtype")
    gpu_memory_utilization: Number = Field(default=0.3, gt=0, le=1, description="fraction of the GPU vLLM may take")
    max_model_len: Integer | None = Field(default=None, ge=1, description="vLLM context length; null = the model's")
    seed: Integer = Field(default=0, description="sampling seed; left out: the run's seed (+ an offset per rank)")
    enforce_eager: Flag = Field(default=True, description="no CUDA graphs (faster start, less memory)")


MODES: tuple[str, ...] = get_args(VLLMOptions.model_fields["mode"].annotation)


class VLLMEngine(RolloutEngine):
    """Sampling with vLLM; see the module docstring.

    model, tokenizer: the trainer's HF model (for EOS ids and `update_weights`) and tokenizer.
    max_prompt_length: prompts longer than this keep their last tokens, as in `HFGenerateEngine`.
    options: `VLLMOptions` (mode "colocate": an in-process ``vllm.LLM``, or "server": the HTTP
        client of a running ``python -m ticgrpo.rollout.vllm.server``; model_path: the folder
        vLLM loads, None = save ``model`` + ``tokenizer`` to a temporary folder first, removed by
        `close`; server_url, e.g. "http://127.0.0.1:8011"); dtype, gpu_memory_utilization,
        max_model_len, seed, enforce_eager and any other keys go to ``vllm.LLM`` (colocate; the
        server takes them as command-line options).
    """

    provides_behavior_logprobs = True

    def __init__(self, model: Any, tokenizer: Any, *, max_prompt_length: int | None = None, **options: Any) -> None:
        from ticgrpo.config.loading import one_line

        try:
            checked = VLLMOptions.model_validate(options)
        except ValidationError as exc:
            raise ValueError(one_line(exc, VLLMOptions, "vllm")) from None
        mode, model_path, server_url = checked.mode, checked.model_path, checked.server_url
        engine_kwargs = checked.model_extra or {}
        if max_prompt_length is not None and max_prompt_length < 1:
            raise ValueError(f"max_prompt_length must be >= 1, got {max_prompt_length}")
        self.model = model
        self.tokenizer = tokenizer
        self.mode = mode
        self.max_prompt_length = max_prompt_length
        self.eos_token_ids, self.pad_token_id = stop_and_pad_ids(model, tokenizer)
        self._tmpdir: str | None = None
        self.backend: Backend
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
            save_model_folder(model, tokenizer, model_path)  # PEFT: merged weights
        elif not os.path.isdir(os.path.expanduser(model_path)):
            raise ValueError(f"model_path {model_path!r} is not a folder")
        self.model_path = model_path
        try:
            llm_options = checked.model_dump(exclude={"mode", "model_path", "server_url"})
            self.backend = LocalBackend(model_path, **llm_options)
        except BaseException:
            self._remove_tmpdir()
            raise

    # ------------------------------------------------------------------ interface

    def generate(self, prompts: list[str], num_samples: int, params: SamplingParams,
                 seed: int | None = None) -> RolloutBatch:
        """``num_samples`` completions per prompt; ``seed`` seeds vLLM's sampling of this call
        (see `request_options`; None: the engine's own stream)."""
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be a list of strings")
        options = request_options(params, self.eos_token_ids, seed)
        prompt_tokens = self._tokenize(prompts)
        if any(len(p) == 0 for p in prompt_tokens):
            raise ValueError("a prompt tokenises to no tokens; vLLM needs at least one")
        if not prompts:
            return self._assemble(prompts, prompt_tokens, num_samples, [])
        generation = self.backend.generate(prompt_tokens, num_samples, options)
        rows = [c for comps in generation.completions for c in comps]
        if len(rows) != len(prompts) * num_samples:
            raise RuntimeError(f"vLLM returned {len(rows)} completions, expected {len(prompts) * num_samples}")
        batch = self._assemble(prompts, prompt_tokens, num_samples, rows)
        # the version of the weights that sampled these rows, as the backend counts them (the
        # trainer's policy version when it names one with each update; see update_weights)
        batch.policy_version = torch.full((len(rows),), generation.weight_version, dtype=torch.long)
        return batch

    def continue_tokens(self, contexts: list[list[int]], params: SamplingParams) -> list[Continuation]:
        """One continuation of each token-id context, handed to vLLM as it is (no re-tokenisation
        and no ``max_prompt_length`` cut: the episode driver owns the token budget). Each is cut
        after its first EOS; its log-probs are vLLM's, as in `generate`'s ``behavior_logprobs``."""
        if not isinstance(contexts, list) or not all(isinstance(c, list) for c in contexts):
            raise ValueError("contexts must be a list of token-id lists")
        if any(len(c) == 0 for c in contexts):
            raise ValueError("continue_tokens: a context has no tokens; vLLM needs at least one")
        options = request_options(params, self.eos_token_ids)
        if not contexts:
            return []
        generation = self.backend.generate([[int(t) for t in c] for c in contexts], 1, options)
        rows = [c for comps in generation.completions for c in comps]
        if len(rows) != len(contexts):
            raise RuntimeError(f"vLLM returned {len(rows)} completions, expected {len(contexts)}")
        eos = set(self.eos_token_ids)
        out: list[Continuation] = []
        for ids, lps in rows:
            # vLLM stops at a stop token; cut here too so both engines end a turn the same way
            first = next((i for i, tok in enumerate(ids) if tok in eos), None)
            end = len(ids) if first is None else first + 1
            out.append(Continuation(list(ids[:end]), [float(x) for x in lps[:end]], first is not None))
        return out

    def update_weights(self, model: Any, version: int | None = None) -> None:
        """Push ``model``'s current parameters into vLLM (and drop its prefix cache); they become
        policy version ``version`` (None: one more than the engine's current version), which the
        rows of later `generate` calls report."""
        with torch.no_grad():
            self.backend.load_weights(trainer_weights(model), version)

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
