"""Tests for ticgrpo.core.logprobs: chunked, memory-efficient log-probs of sampled tokens."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig
from transformers.utils import logging as hf_logging

from ticgrpo.core import logprobs as lp_mod
from ticgrpo.core.logprobs import _ChunkedLinearLogProbs, completion_logprobs, token_logprobs_from_hidden

hf_logging.set_verbosity_error()

V = 300


def _llama(tie: bool = False, dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        tie_word_embeddings=tie,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").to(dtype).eval()


def _gpt2():
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()  # no dropout


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded prompts (P=5), right-padded ragged completions (T=6), B=3."""
    g = torch.Generator().manual_seed(seed)
    prompt_lens, comp_lens = [5, 2, 3], [6, 3, 1]
    b, p, t = 3, 5, 6
    prompt = torch.zeros(b, p, dtype=torch.long)
    pmask = torch.zeros(b, p, dtype=torch.long)
    comp = torch.zeros(b, t, dtype=torch.long)
    cmask = torch.zeros(b, t, dtype=torch.long)
    for i, (pl, cl) in enumerate(zip(prompt_lens, comp_lens, strict=True)):
        prompt[i, p - pl :] = torch.randint(3, V, (pl,), generator=g)
        pmask[i, p - pl :] = 1
        comp[i, :cl] = torch.randint(3, V, (cl,), generator=g)
        cmask[i, :cl] = 1
    return torch.cat([prompt, comp], 1), torch.cat([pmask, cmask], 1), comp, cmask


def _naive(model, input_ids, attention_mask, comp, cmask, temperature=1.0):
    t = comp.shape[1]
    p = input_ids.shape[1] - t
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits
    z = logits[:, p - 1 : p - 1 + t].float() / temperature
    logz = torch.log_softmax(z, -1)
    m = cmask.float()
    lp = logz.gather(-1, comp[..., None]).squeeze(-1) * m
    ent = -(logz.exp() * logz).sum(-1) * m
    return lp, ent


def _grads(model, fn):
    model.zero_grad(set_to_none=True)
    lp, ent = fn()
    w = torch.linspace(-1.0, 2.0, lp.numel()).view_as(lp)
    ((lp * w).sum() + 0.3 * (ent * w.flip(0)).sum()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_grads_close(ga, gb):
    assert ga.keys() == gb.keys() and len(ga) > 0
    for n in ga:
        scale = gb[n].abs().max().clamp_min(1e-8)
        assert (ga[n] - gb[n]).abs().max() / scale < 1e-5, n


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 1024])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("make_model", [_llama, _gpt2], ids=["llama", "gpt2"])
def test_matches_naive_logprobs_and_entropy(make_model, temperature, chunk_size):
    model = make_model()
    batch = _batch()
    with torch.no_grad():
        lp, ent = completion_logprobs(model, *batch, temperature=temperature, chunk_size=chunk_size, with_entropy=True)
        ref_lp, ref_ent = _naive(model, *batch, temperature=temperature)
    assert ent is not None
    assert lp.dtype == ent.dtype == torch.float32 and lp.shape == batch[2].shape
    assert lp[batch[3] == 0].eq(0).all() and ent[batch[3] == 0].eq(0).all()
    assert lp[batch[3] == 1].lt(0).all()
    torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=0)
    lp2, ent2 = completion_logprobs(model, *batch, temperature=temperature, chunk_size=chunk_size)
    assert ent2 is None
    torch.testing.assert_close(lp2, ref_lp, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "make_model", [_llama, lambda: _llama(tie=True), _gpt2], ids=["llama", "llama-tied", "gpt2-tied"]
)
def test_gradients_match_naive(make_model):
    model = make_model()
    if make_model is not _llama:
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    batch = _batch(1)
    ours = _grads(model, lambda: completion_logprobs(model, *batch, temperature=0.8, chunk_size=3, with_entropy=True))
    ref = _grads(model, lambda: _naive(model, *batch, temperature=0.8))
    _assert_grads_close(ours, ref)


def test_no_vocab_sized_activation_saved_for_backward():
    model = _llama()
    batch = _batch()
    shapes = []

    def pack(x):
        shapes.append(tuple(x.shape))
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        completion_logprobs(model, *batch, chunk_size=4, with_entropy=True)
    assert shapes and not any(s and s[-1] == V for s in shapes), shapes
    shapes.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):  # sanity: the hook sees logits
        _naive(model, *batch)
    assert any(s and s[-1] == V for s in shapes)


@pytest.mark.parametrize("with_bias", [True, False])
def test_gradcheck_autograd_function_float64(with_bias):
    g = torch.Generator().manual_seed(0)
    n, h, v = 7, 5, 11
    hidden = torch.randn(n, h, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(v, h, dtype=torch.float64, generator=g, requires_grad=True)
    bias = torch.randn(v, dtype=torch.float64, generator=g, requires_grad=True) if with_bias else None
    targets = torch.randint(0, v, (n,), generator=g)
    inputs: tuple[torch.Tensor, ...] = (hidden, weight, bias) if bias is not None else (hidden, weight)

    def run(*args, with_entropy=True):
        hb, wb = args[0], args[1]
        bb = args[2] if with_bias else None
        return _ChunkedLinearLogProbs.apply(hb, wb, bb, targets, 0.7, 3, with_entropy, torch.float64)

    assert torch.autograd.gradcheck(lambda *a: run(*a), inputs)
    assert torch.autograd.gradcheck(lambda *a: run(*a)[0], inputs)  # log-prob only (entropy unused)
    assert torch.autograd.gradcheck(lambda *a: run(*a)[1], inputs)  # entropy only
    assert torch.autograd.gradcheck(lambda *a: run(*a, with_entropy=False)[0], inputs)
    # values against the plain formula
    z = F.linear(hidden, weight, bias) / 0.7
    logz = torch.log_softmax(z, -1)
    got_lp, got_ent = token_logprobs_from_hidden(hidden, weight, bias, targets, 0.7, 3, True)
    torch.testing.assert_close(got_lp, logz.gather(1, targets[:, None]).squeeze(1))
    torch.testing.assert_close(got_ent, -(logz.exp() * logz).sum(-1))


def test_bf16_model_close_to_naive_bf16():
    model = _llama(dtype=torch.bfloat16)
    batch = _batch()
    lp, ent = completion_logprobs(model, *batch, temperature=0.9, chunk_size=5, with_entropy=True)
    assert ent is not None
    with torch.no_grad():
        ref_lp, ref_ent = _naive(model, *batch, temperature=0.9)
    assert lp.dtype == torch.float32 and torch.isfinite(lp).all() and torch.isfinite(ent).all()
    torch.testing.assert_close(lp.detach(), ref_lp, atol=3e-2, rtol=1e-2)
    torch.testing.assert_close(ent.detach(), ref_ent, atol=3e-2, rtol=1e-2)
    (lp.sum() + ent.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.lm_head.weight.grad.dtype == torch.bfloat16


def test_fallback_path_softcapping_is_correct():
    from transformers import Gemma2Config

    torch.manual_seed(0)
    cfg = Gemma2Config(
        vocab_size=V,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        head_dim=8,
        final_logit_softcapping=3.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    assert lp_mod._resolve_decoder_and_head(model) is None
    batch = _batch()
    with torch.no_grad():
        lp, ent = completion_logprobs(model, *batch, temperature=0.7, chunk_size=4, with_entropy=True)
        ref_lp, ref_ent = _naive(model, *batch, temperature=0.7)
    torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=0)


def test_fallback_path_gradients(monkeypatch):
    model = _llama(tie=True)
    batch = _batch(2)
    monkeypatch.setattr(lp_mod, "_resolve_decoder_and_head", lambda m: None)
    ours = _grads(model, lambda: completion_logprobs(model, *batch, temperature=1.3, chunk_size=2, with_entropy=True))
    ref = _grads(model, lambda: _naive(model, *batch, temperature=1.3))
    _assert_grads_close(ours, ref)


def test_fast_path_resolution_and_input_checks():
    model = _llama()
    resolved = lp_mod._resolve_decoder_and_head(model)
    assert resolved is not None
    decoder, head = resolved
    assert decoder is model.model and head is model.lm_head
    ids, am, comp, cmask = _batch()
    with pytest.raises(ValueError):
        completion_logprobs(model, ids[:, :6], am[:, :6], torch.zeros(3, 6, dtype=torch.long), cmask)
    with pytest.raises(ValueError):
        completion_logprobs(model, ids, am, comp, cmask, temperature=0.0)
    lp, _ = completion_logprobs(model, ids, am, comp, torch.zeros_like(cmask))  # nothing to score
    assert lp.shape == comp.shape and lp.eq(0).all()


@pytest.mark.parametrize("make", [_llama, _gpt2])
def test_left_padding_changes_nothing(make):
    """Positions count from the first real token (as in `generate`), so the same prompt and
    completion give the same log-probs whatever the left padding."""
    model = make()
    g = torch.Generator().manual_seed(5)
    prompt = torch.randint(3, V, (5,), generator=g)
    comp = torch.randint(3, V, (1, 4), generator=g)
    cmask = torch.ones(1, 4, dtype=torch.long)
    results = []
    for pad in (0, 3):
        ids = torch.cat([torch.zeros(pad, dtype=torch.long), prompt, comp[0]])[None]
        att = torch.cat([torch.zeros(pad, dtype=torch.long), torch.ones(9, dtype=torch.long)])[None]
        with torch.no_grad():
            results.append(completion_logprobs(model, ids, att, comp, cmask)[0])
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-5)
