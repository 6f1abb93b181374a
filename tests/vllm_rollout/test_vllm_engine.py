"""VLLMEngine against real vLLM (CPU build): layout, greedy agreement, behaviour log-probs,
weight updates, server mode and bad input. No mocks.

Run: ``bash scripts/test_vllm.sh`` (``.venv-vllm``, ``pytest -m vllm tests/vllm_rollout``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import Any

import pytest
import torch

from ticgrpo.core.logprobs import completion_logprobs
from ticgrpo.rollout import HFGenerateEngine, RolloutBatch, SamplingParams, VLLMEngine
from ticgrpo.rollout.vllm import HTTPBackend

pytestmark = pytest.mark.vllm

TINY_PROMPTS = ["What is 12 + 7?", "3 × 4 =", "Answer: 5", "Tom has 23 apples, buys 15 more"]


def trainer_logprobs(model: Any, batch: RolloutBatch, temperature: float, autocast: bool = False) -> torch.Tensor:
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), ctx:
        lp, _ = completion_logprobs(
            model, batch.input_ids, batch.attention_mask, batch.completion_ids, batch.completion_mask,
            temperature=temperature,
        )
    return lp.float()


def masked_rows(batch: RolloutBatch) -> list[list[int]]:
    lengths = batch.completion_lengths.tolist()
    return [row[: int(n)] for row, n in zip(batch.completion_ids.tolist(), lengths, strict=True)]


def behavior(batch: RolloutBatch) -> torch.Tensor:
    """The batch's behaviour log-probs, which every VLLMEngine batch carries."""
    assert batch.behavior_logprobs is not None
    return batch.behavior_logprobs


def server_client(engine: VLLMEngine) -> HTTPBackend:
    assert isinstance(engine.backend, HTTPBackend)
    return engine.backend


def check_layout(batch: RolloutBatch, n_prompts: int, g: int, eos: list[int], pad: int, max_new: int) -> None:
    b = n_prompts * g
    assert batch.prompt_ids.shape[0] == b and batch.completion_ids.shape[0] == b
    assert batch.prompt_ids.shape == batch.prompt_mask.shape
    assert batch.completion_ids.shape == batch.completion_mask.shape == behavior(batch).shape
    assert behavior(batch).dtype == torch.float32
    assert batch.completion_ids.shape[1] <= max_new
    assert batch.group_ids.tolist() == [k for k in range(n_prompts) for _ in range(g)]
    # prompts left-padded: mask is a suffix of ones
    pm = batch.prompt_mask
    assert torch.equal(pm, pm.cummax(dim=1).values)
    assert torch.all(batch.prompt_ids[pm == 0] == pad)
    # completions right-padded: mask is a prefix of ones, ending at and including the first EOS
    cm = batch.completion_mask
    assert torch.equal(cm, cm.flip(1).cummax(dim=1).values.flip(1))
    assert torch.all(batch.completion_ids[cm == 0] == pad)
    assert torch.all(behavior(batch)[cm == 0] == 0)
    assert torch.all(behavior(batch)[cm == 1] <= 1e-6)
    assert int(batch.completion_lengths.max()) == batch.completion_ids.shape[1]
    for row, trunc in zip(masked_rows(batch), batch.truncated.tolist(), strict=True):
        eos_at = [i for i, t in enumerate(row) if t in eos]
        if trunc:
            assert not eos_at and len(row) == max_new
        else:
            assert eos_at == [len(row) - 1]
    assert len(batch.prompts) == len(batch.completions) == b


# ---------------------------------------------------------------- tiny model, fp32


def test_layout_matches_hf_engine(tiny_engine: VLLMEngine, tiny_model: Any, tiny_tok: Any) -> None:
    params = SamplingParams(max_new_tokens=12, temperature=1.0)
    v = tiny_engine.generate(TINY_PROMPTS, 3, params)
    h = HFGenerateEngine(tiny_model, tiny_tok).generate(TINY_PROMPTS, 3, params)
    assert torch.equal(v.prompt_ids, h.prompt_ids)  # same tokenisation and left padding
    assert torch.equal(v.prompt_mask, h.prompt_mask)
    assert torch.equal(v.group_ids, h.group_ids)
    assert v.prompts == h.prompts
    check_layout(v, len(TINY_PROMPTS), 3, tiny_engine.eos_token_ids, tiny_engine.pad_token_id, 12)
    assert v.completions == tiny_tok.batch_decode(masked_rows(v), skip_special_tokens=True)
    assert v.input_ids.shape == (12, v.prompt_ids.shape[1] + v.completion_ids.shape[1])


def test_greedy_and_logprobs_match_hf_fp32(tiny_engine: VLLMEngine, tiny_model: Any, tiny_tok: Any) -> None:
    params = SamplingParams(max_new_tokens=16, greedy=True)
    v = tiny_engine.generate(TINY_PROMPTS, 2, params)
    h = HFGenerateEngine(tiny_model, tiny_tok).generate(TINY_PROMPTS, 2, params)
    same = sum(a == b for a, b in zip(masked_rows(v), masked_rows(h), strict=True)) / len(v)
    print(f"\n[tiny fp32] greedy agreement vLLM vs HF: {same:.2f}")
    assert same >= 0.75
    assert masked_rows(v)[0::2] == masked_rows(v)[1::2]  # greedy rows of a prompt are identical
    lp = trainer_logprobs(tiny_model, v, temperature=1.0)  # greedy rows carry T = 1 log-probs
    diff = (lp - behavior(v)).abs()[v.completion_mask.bool()]
    print(f"[tiny fp32] greedy |Δ logprob|: mean {diff.mean():.2e} max {diff.max():.2e}")
    assert diff.max() < 1e-3


@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_behavior_logprobs_are_tempered_trainer_logprobs(
    tiny_engine: VLLMEngine, tiny_model: Any, temperature: float
) -> None:
    v = tiny_engine.generate(TINY_PROMPTS, 4, SamplingParams(max_new_tokens=10, temperature=temperature))
    lp = trainer_logprobs(tiny_model, v, temperature=temperature)
    diff = (lp - behavior(v)).abs()[v.completion_mask.bool()]
    print(f"\n[tiny fp32] T={temperature} |Δ logprob|: mean {diff.mean():.2e} max {diff.max():.2e}")
    assert diff.max() < 1e-3


def test_top_k_one_is_greedy_with_zero_logprobs(tiny_engine: VLLMEngine) -> None:
    greedy = tiny_engine.generate(TINY_PROMPTS, 1, SamplingParams(max_new_tokens=8, greedy=True))
    top1 = tiny_engine.generate(TINY_PROMPTS, 2, SamplingParams(max_new_tokens=8, temperature=1.0, top_k=1))
    assert masked_rows(top1)[0::2] == masked_rows(greedy)
    # processed log-probs are renormalised over the top-k set: one token → log 1 = 0
    assert torch.all(behavior(top1).abs() < 1e-5)


def test_max_new_tokens_and_truncation(tiny_engine: VLLMEngine) -> None:
    v = tiny_engine.generate(TINY_PROMPTS, 2, SamplingParams(max_new_tokens=3, temperature=1.0))
    check_layout(v, len(TINY_PROMPTS), 2, tiny_engine.eos_token_ids, tiny_engine.pad_token_id, 3)
    assert v.completion_ids.shape[1] <= 3


def test_max_prompt_length_like_hf(tiny_engine: VLLMEngine, tiny_model: Any, tiny_tok: Any) -> None:
    engine = VLLMEngine.__new__(VLLMEngine)  # same backend, another prompt limit
    engine.__dict__.update(tiny_engine.__dict__, max_prompt_length=5, _tmpdir=None)
    params = SamplingParams(max_new_tokens=4, greedy=True)
    v = engine.generate(TINY_PROMPTS, 1, params)
    h = HFGenerateEngine(tiny_model, tiny_tok, max_prompt_length=5).generate(TINY_PROMPTS, 1, params)
    assert v.prompt_ids.shape[1] <= 5
    assert torch.equal(v.prompt_ids, h.prompt_ids)


def test_update_weights_colocate(tiny_tok: Any, tiny_factory: Any) -> None:
    """After update_weights, greedy completions and log-probs follow the new weights."""
    old, new = tiny_factory(tiny_tok, seed=0), tiny_factory(tiny_tok, seed=1)
    engine = VLLMEngine(old, tiny_tok, dtype="float32", max_model_len=512)
    try:
        params = SamplingParams(max_new_tokens=12, greedy=True)
        before = engine.generate(TINY_PROMPTS, 1, params)
        hf_old = HFGenerateEngine(old, tiny_tok).generate(TINY_PROMPTS, 1, params)
        hf_new = HFGenerateEngine(new, tiny_tok).generate(TINY_PROMPTS, 1, params)
        assert masked_rows(hf_old) != masked_rows(hf_new)  # the two models really differ
        assert masked_rows(before) == masked_rows(hf_old)
        # the trainer's model object changes in place, as an optimizer step does
        old.load_state_dict(new.state_dict())
        engine.update_weights(old)
        after = engine.generate(TINY_PROMPTS, 1, params)
        assert masked_rows(after) == masked_rows(hf_new)
        lp = trainer_logprobs(new, after, temperature=1.0)
        assert (lp - behavior(after)).abs()[after.completion_mask.bool()].max() < 1e-3
    finally:
        engine.close()
    assert engine._tmpdir is None


def test_boots_from_in_memory_tied_model(tiny_tok: Any) -> None:
    """model_path=None with tied embeddings (as SmolLM2): the saved copy boots and agrees with HF."""
    from ticgrpo.testing import make_tiny_model

    model = make_tiny_model(len(tiny_tok), seed=3, tokenizer=tiny_tok, hidden_size=64, intermediate_size=128,
                            num_attention_heads=2, num_key_value_heads=1)
    assert model.config.tie_word_embeddings
    engine = VLLMEngine(model, tiny_tok, dtype="float32", max_model_len=256)
    try:
        params = SamplingParams(max_new_tokens=6, greedy=True)
        v = engine.generate(TINY_PROMPTS, 1, params)
        h = HFGenerateEngine(model, tiny_tok).generate(TINY_PROMPTS, 1, params)
        lp = trainer_logprobs(model, v, temperature=1.0)
        assert (lp - behavior(v)).abs()[v.completion_mask.bool()].max() < 1e-3
        assert sum(a == b for a, b in zip(masked_rows(v), masked_rows(h), strict=True)) >= 3
    finally:
        engine.close()


# ---------------------------------------------------------------- SmolLM2-135M, bf16 engine


def test_smollm2_greedy_agreement_and_logprob_mismatch(
    smol_engine: VLLMEngine, smol: tuple[str, Any, Any], arithmetic_prompts: list[str]
) -> None:
    _, model, tok = smol
    params = SamplingParams(max_new_tokens=48, greedy=True)
    v = smol_engine.generate(arithmetic_prompts, 1, params)
    check_layout(v, len(arithmetic_prompts), 1, smol_engine.eos_token_ids, smol_engine.pad_token_id, 48)
    h32 = HFGenerateEngine(model, tok).generate(arithmetic_prompts, 1, params)
    assert torch.equal(v.prompt_ids, h32.prompt_ids)
    agree32 = sum(a == b for a, b in zip(masked_rows(v), masked_rows(h32), strict=True)) / len(v)
    text32 = sum(a == b for a, b in zip(v.completions, h32.completions, strict=True)) / len(v)
    print(f"\n[smollm2] greedy agreement vLLM bf16 vs HF fp32: {agree32:.2f} (texts {text32:.2f}, "
          f"{len(v)} prompts)")
    assert agree32 >= 0.5

    # behaviour log-probs of sampled rollouts (T = 1) vs the trainer's log-probs
    torch.manual_seed(0)
    s = smol_engine.generate(arithmetic_prompts[:8], 4, SamplingParams(max_new_tokens=48, temperature=1.0))
    check_layout(s, 8, 4, smol_engine.eos_token_ids, smol_engine.pad_token_id, 48)
    m = s.completion_mask.bool()
    for name, autocast in (("HF fp32", False), ("HF bf16 autocast", True)):
        d = (trainer_logprobs(model, s, 1.0, autocast) - behavior(s))[m]
        print(f"[smollm2] behaviour vs trainer ({name}): mean |Δ| {d.abs().mean():.4f}, "
              f"mean Δ {d.mean():+.4f}, max |Δ| {d.abs().max():.3f}, tokens {int(m.sum())}")
        assert d.abs().mean() < 0.1
    # sequence-level: log ratio π_trainer/π_vllm per completion
    seq = ((trainer_logprobs(model, s, 1.0) - behavior(s)) * s.completion_mask).sum(1)
    print(f"[smollm2] per-sequence |log ratio| mean {seq.abs().mean():.3f}, max {seq.abs().max():.3f}")


def test_smollm2_update_weights_bf16(
    smol_engine: VLLMEngine, smol: tuple[str, Any, Any], arithmetic_prompts: list[str]
) -> None:
    """The bf16 engine (its CPU kernels re-pack weights) samples from pushed weights, and back."""
    import copy

    _, model, _ = smol
    prompts = arithmetic_prompts[:2]
    params = SamplingParams(max_new_tokens=8, greedy=True)
    before = smol_engine.generate(prompts, 1, params)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.model.layers[-1].mlp.down_proj.weight.mul_(-3.0)
    try:
        smol_engine.update_weights(changed)
        after = smol_engine.generate(prompts, 1, params)
        m = after.completion_mask.bool()
        to_changed = (trainer_logprobs(changed, after, 1.0) - behavior(after))[m].abs().mean()
        to_original = (trainer_logprobs(model, after, 1.0) - behavior(after))[m].abs().mean()
        print(f"\n[smollm2] after update: mean |Δ| to the pushed model {to_changed:.4f}, to the old {to_original:.4f}")
        assert to_changed < 0.1 and to_original > 5 * to_changed
    finally:
        smol_engine.update_weights(model)
    assert masked_rows(smol_engine.generate(prompts, 1, params)) == masked_rows(before)


# ---------------------------------------------------------------- server mode


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_round_trip(tmp_path: Any, tiny_tok: Any, tiny_factory: Any) -> None:
    old, new = tiny_factory(tiny_tok, seed=0), tiny_factory(tiny_tok, seed=2)
    old.save_pretrained(tmp_path / "model")
    tiny_tok.save_pretrained(tmp_path / "model")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "ticgrpo.rollout.vllm.server", "--model", str(tmp_path / "model"),
         "--port", str(port), "--dtype", "float32", "--max-model-len", "512"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    try:
        deadline = time.time() + 240
        engine = None
        while engine is None:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                engine = VLLMEngine(old, tiny_tok, mode="server", server_url=url)
            except ConnectionError:
                assert time.time() < deadline, "server did not come up"
                time.sleep(1.0)
        params = SamplingParams(max_new_tokens=10, greedy=True)
        v = engine.generate(TINY_PROMPTS, 2, params)
        check_layout(v, len(TINY_PROMPTS), 2, engine.eos_token_ids, engine.pad_token_id, 10)
        assert masked_rows(v) == masked_rows(HFGenerateEngine(old, tiny_tok).generate(TINY_PROMPTS, 2, params))
        sampled = engine.generate(TINY_PROMPTS, 3, SamplingParams(max_new_tokens=10, temperature=0.8))
        lp = trainer_logprobs(old, sampled, temperature=0.8)
        assert (lp - behavior(sampled)).abs()[sampled.completion_mask.bool()].max() < 1e-3

        engine.update_weights(new)
        after = engine.generate(TINY_PROMPTS, 1, params)
        assert masked_rows(after) == masked_rows(HFGenerateEngine(new, tiny_tok).generate(TINY_PROMPTS, 1, params))
        assert server_client(engine).health()["weight_version"] == 1
        assert not [f for f in os.listdir("/dev/shm") if f.startswith("ticgrpo-weights-")]

        with pytest.raises(RuntimeError, match=r"400.*prompts"):
            server_client(engine).call("/generate", {"prompts": "nope", "n": 1, "max_tokens": 1, "greedy": True,
                                              "temperature": 1.0, "top_p": 1.0, "top_k": 0, "stop_token_ids": []})
        with pytest.raises(RuntimeError, match=r"400.*missing fields"):
            server_client(engine).call("/generate", {"prompts": [[1]]})
        with pytest.raises(RuntimeError, match=r"400.*no such weights file"):
            server_client(engine).call("/update_weights", {"path": str(tmp_path / "missing.safetensors")})
        server_client(engine).call("/shutdown", {})
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        log.close()
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
        VLLMEngine(old, tiny_tok, mode="server", server_url=url)


# ---------------------------------------------------------------- bad input


def test_bad_input(tiny_engine: VLLMEngine, tiny_model: Any, tiny_tok: Any, tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="num_samples"):
        tiny_engine.generate(TINY_PROMPTS, 0, SamplingParams())
    with pytest.raises(ValueError, match="temperature"):
        tiny_engine.generate(TINY_PROMPTS, 1, SamplingParams(temperature=0.0))
    with pytest.raises(ValueError, match="top_p"):
        tiny_engine.generate(TINY_PROMPTS, 1, SamplingParams(top_p=0.0))
    with pytest.raises(ValueError, match="max_new_tokens"):
        tiny_engine.generate(TINY_PROMPTS, 1, SamplingParams(max_new_tokens=0))
    with pytest.raises(ValueError, match="list of strings"):
        tiny_engine.generate("one prompt", 1, SamplingParams())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no tokens"):
        tiny_engine.generate([""], 1, SamplingParams())
    with pytest.raises(ValueError, match="mode"):
        VLLMEngine(tiny_model, tiny_tok, mode="remote")
    with pytest.raises(ValueError, match="server_url"):
        VLLMEngine(tiny_model, tiny_tok, mode="server")
    with pytest.raises(ValueError, match="not a folder"):
        VLLMEngine(tiny_model, tiny_tok, model_path=str(tmp_path / "missing"))
    assert tiny_engine.generate([], 2, SamplingParams()).completion_ids.shape[0] == 0
