"""`VLLMEngine.continue_tokens` (what multi-turn episodes ask of an engine) against real vLLM
(CPU build) and the HF model it was booted from: greedy ids as `generate`'s, log-probs as the
trainer's teacher-forced ones, continuation from a multi-turn context, the EOS cut and `ended`.

Run: ``bash scripts/test_vllm.sh`` (``.venv-vllm``, ``pytest -m vllm tests/vllm_rollout``).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from test_vllm_engine import TINY_PROMPTS, masked_rows

from ticgrpo.core.logprobs import completion_logprobs
from ticgrpo.rollout import SamplingParams, VLLMEngine
from ticgrpo.rollout.base import Continuation

pytestmark = pytest.mark.vllm

# the tolerance of the fp32 tiny-model log-prob checks in test_vllm_engine
LOGPROB_TOLERANCE = 1e-3


def prompt_contexts(tok: Any) -> list[list[int]]:
    """The token ids `VLLMEngine.generate` hands vLLM for TINY_PROMPTS (no special tokens)."""
    return [list(ids) for ids in tok(TINY_PROMPTS, add_special_tokens=False)["input_ids"]]


def teacher_forced_logprobs(model: Any, context: list[int], tokens: list[int], temperature: float) -> list[float]:
    """The HF model's log-prob of each of `tokens` after `context` (fp32, one unpadded row)."""
    ids = torch.tensor([context + tokens])
    ones = torch.ones_like(ids)
    with torch.no_grad():
        lp, _ = completion_logprobs(model, ids, ones, torch.tensor([tokens]), torch.ones(1, len(tokens)),
                                    temperature=temperature)
    return lp[0].float().tolist()


def hf_greedy_next_token(model: Any, context: list[int]) -> int:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([context])).logits
    return int(logits[0, -1].argmax())


def max_logprob_gap(model: Any, contexts: list[list[int]], continuations: list[Continuation],
                    temperature: float) -> float:
    gaps = []
    for context, c in zip(contexts, continuations, strict=True):
        assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids) > 0
        hf = teacher_forced_logprobs(model, context, c.token_ids, temperature)
        gaps += [abs(a - b) for a, b in zip(hf, c.logprobs, strict=True)]
    return max(gaps)


def test_greedy_continuation_is_generates_completion(tiny_engine: VLLMEngine, tiny_tok: Any) -> None:
    params = SamplingParams(max_new_tokens=16, greedy=True)
    continued = tiny_engine.continue_tokens(prompt_contexts(tiny_tok), params)
    generated = tiny_engine.generate(TINY_PROMPTS, 1, params)
    assert [c.token_ids for c in continued] == masked_rows(generated)
    assert [not c.ended for c in continued] == generated.truncated.tolist()
    assert generated.behavior_logprobs is not None
    for c, row in zip(continued, generated.behavior_logprobs.tolist(), strict=True):
        assert c.logprobs == pytest.approx(row[: len(c.token_ids)], abs=1e-6)


@pytest.mark.parametrize(("params", "temperature"), [
    (SamplingParams(max_new_tokens=12, greedy=True), 1.0),  # greedy rows carry T = 1 log-probs
    (SamplingParams(max_new_tokens=12, temperature=0.7), 0.7),
])
def test_logprobs_are_hf_teacher_forced(tiny_engine: VLLMEngine, tiny_model: Any, tiny_tok: Any,
                                        params: SamplingParams, temperature: float) -> None:
    contexts = prompt_contexts(tiny_tok)
    continued = tiny_engine.continue_tokens(contexts, params)
    gap = max_logprob_gap(tiny_model, contexts, continued, temperature)
    print(f"\n[tiny fp32] continue_tokens T={temperature} max |Δ logprob| vs HF: {gap:.2e}")
    assert gap < LOGPROB_TOLERANCE


def test_second_turn_continues_the_whole_context(tiny_engine: VLLMEngine, tiny_model: Any, tiny_tok: Any) -> None:
    """prompt + the first turn's tokens + an environment message: the next turn starts from the
    end of that context (the tokens as given, none re-tokenised or dropped)."""
    params = SamplingParams(max_new_tokens=6, greedy=True)
    prompts = prompt_contexts(tiny_tok)
    first_turns = tiny_engine.continue_tokens(prompts, params)
    observation = tiny_tok("<|im_end|>\n<|im_start|>user\nresult: 19<|im_end|>\n<|im_start|>assistant\n",
                           add_special_tokens=False)["input_ids"]
    contexts = [p + t.token_ids + list(observation) for p, t in zip(prompts, first_turns, strict=True)]
    second_turns = tiny_engine.continue_tokens(contexts, params)
    for context, turn in zip(contexts, second_turns, strict=True):
        assert turn.token_ids[0] == hf_greedy_next_token(tiny_model, context)
    assert max_logprob_gap(tiny_model, contexts, second_turns, 1.0) < LOGPROB_TOLERANCE
    # the context really steers it: continuing the bare prompts gives other turns
    assert [t.token_ids for t in second_turns] != [t.token_ids for t in first_turns]


def test_ended_false_when_max_new_tokens_runs_out(tiny_engine: VLLMEngine, tiny_tok: Any) -> None:
    continued = tiny_engine.continue_tokens(prompt_contexts(tiny_tok), SamplingParams(max_new_tokens=3, greedy=True))
    eos = set(tiny_engine.eos_token_ids)
    cut_short = [c for c in continued if not c.ended]
    assert cut_short, "every greedy turn hit an EOS within 3 tokens; the tiny model should rarely emit it"
    for c in cut_short:
        assert len(c.token_ids) == 3 and not eos & set(c.token_ids)
        assert c.logprobs is not None and len(c.logprobs) == 3


def test_cut_after_the_first_eos_and_ended(tiny_engine: VLLMEngine, tiny_tok: Any) -> None:
    """With the third greedy token made an EOS, the turn ends on it (inclusive) and `ended` is True."""
    context = prompt_contexts(tiny_tok)[0]
    params = SamplingParams(max_new_tokens=8, greedy=True)
    free = tiny_engine.continue_tokens([context], params)[0]
    stop_at = next(i for i in range(2, len(free.token_ids)) if free.token_ids[i] not in free.token_ids[:i])
    engine = VLLMEngine.__new__(VLLMEngine)  # the same backend, another EOS set
    engine.__dict__.update(tiny_engine.__dict__, eos_token_ids=[free.token_ids[stop_at]], _tmpdir=None)
    stopped = engine.continue_tokens([context], params)[0]
    assert stopped.ended
    assert stopped.token_ids == free.token_ids[: stop_at + 1]
    assert free.logprobs is not None
    assert stopped.logprobs == pytest.approx(free.logprobs[: stop_at + 1], abs=1e-6)


def test_bad_contexts(tiny_engine: VLLMEngine) -> None:
    assert tiny_engine.continue_tokens([], SamplingParams()) == []
    with pytest.raises(ValueError, match="no tokens"):
        tiny_engine.continue_tokens([[5, 6], []], SamplingParams())
    with pytest.raises(ValueError, match="token-id lists"):
        tiny_engine.continue_tokens(["a prompt"], SamplingParams())  # type: ignore[list-item]
    with pytest.raises(ValueError, match="max_new_tokens"):
        tiny_engine.continue_tokens([[5, 6]], SamplingParams(max_new_tokens=0))
