"""The in-process backend: one ``vllm.LLM`` in the calling process (colocate mode, and what
`ticgrpo.rollout.vllm.server` serves). vLLM is imported when a backend is built, not before."""

from __future__ import annotations

import contextlib
import gc
import os
from typing import Any

from ticgrpo.rollout.vllm.backend import Completion, Generation, next_version
from ticgrpo.rollout.vllm.weights import NamedTensors, reload_weights

INSTALL_HINT = (
    "vLLM is not installed in this environment; run `bash scripts/bootstrap_vllm.sh` and use "
    "the `.venv-vllm` virtual environment (or `pip install vllm` on a GPU machine)"
)


def import_vllm() -> Any:
    """``import vllm`` with a one-line error naming the bootstrap script when it is missing."""
    try:
        import vllm
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"{INSTALL_HINT} ({exc})") from None
    if not hasattr(vllm, "LLM"):  # e.g. a folder named vllm shadowing the package
        raise ImportError(f"{INSTALL_HINT} (`vllm` resolves to {list(getattr(vllm, '__path__', []))})")
    return vllm


class LocalBackend:
    """One in-process ``vllm.LLM``, sampling with the sampler's log-prob of each token.

    ``weight_version`` counts the weights it holds (0: the ones it booted from); callers that
    generate and load weights from several threads serialise the calls (the server's lock)."""

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
        self.llm: Any = vllm.LLM(**kwargs)
        self.weight_version = 0

    def generate(self, prompt_ids: list[list[int]], n: int, options: dict[str, Any]) -> Generation:
        """``n`` completions for each token-id prompt (greedy: one, repeated ``n`` times)."""
        from vllm import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids]
        seed = options.get("seed")
        sampling: Any = (_vllm_sampling_params(n, options, None) if seed is None else
                         [_vllm_sampling_params(n, options, seed + k * n) for k in range(len(prompts))])
        outputs = self.llm.generate(prompts, sampling, use_tqdm=False)
        result: list[list[Completion]] = []
        for out in outputs:
            completions = [_completion(c) for c in out.outputs]
            result.append(completions * n if options["greedy"] else completions)
        return Generation(result, self.weight_version)

    def load_weights(self, named_tensors: NamedTensors, version: int | None = None) -> int:
        reload_weights(self.llm, named_tensors)
        self.weight_version = next_version(self.weight_version, version)
        return self.weight_version

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        with contextlib.suppress(Exception):
            llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()


def _vllm_sampling_params(n: int, options: dict[str, Any], seed: int | None) -> Any:
    """vLLM's SamplingParams of one prompt; with a seed, its j-th sample uses seed + j (vLLM's own
    numbering of the n samples of a seeded request)."""
    from vllm import SamplingParams as VSamplingParams

    common: dict[str, Any] = dict(
        max_tokens=options["max_tokens"],
        logprobs=0,  # the sampled token's log-prob only
        detokenize=False,
        ignore_eos=True,  # stop exactly at the trainer's EOS set, passed as stop tokens
        stop_token_ids=list(options["stop_token_ids"]),
    )
    if options["greedy"]:
        return VSamplingParams(n=1, temperature=0.0, **common)
    return VSamplingParams(n=n, temperature=options["temperature"], top_p=options["top_p"],
                           top_k=options["top_k"], seed=seed, **common)


def _completion(output: Any) -> Completion:
    ids = [int(t) for t in output.token_ids]
    if ids and not output.logprobs:
        raise RuntimeError("vLLM returned no log-probs for a completion (logprobs=0 was requested)")
    return ids, [float(output.logprobs[i][t].logprob) for i, t in enumerate(ids)]
