"""Rollout engine: masks end at and include the first EOS, truncation flags, padding layout."""

from __future__ import annotations

import pytest
import torch
from transformers.utils import logging as hf_logging

from ticgrpo.rollout import HFGenerateEngine, SamplingParams, completion_mask_from_eos, concat_rollouts
from ticgrpo.testing import IM_END, make_tiny_model, make_tiny_tokenizer

hf_logging.set_verbosity_error()

TOKENIZER = make_tiny_tokenizer()
PAD, EOS = TOKENIZER.pad_token_id, TOKENIZER.eos_token_id


def tiny_tokenizer():
    return make_tiny_tokenizer()


def tiny_model(seed: int = 0, eos_scale: float = 1.0):
    """`eos_scale` > 1 scales EOS's (tied) embedding row so that EOS is often sampled early."""
    model = make_tiny_model(seed=seed, tokenizer=TOKENIZER)
    with torch.no_grad():
        model.get_output_embeddings().weight[EOS] *= eos_scale
    return model


def test_mask_ends_at_and_includes_first_eos():
    ids = torch.tensor([[5, 6, EOS, 7, EOS], [5, 6, 7, 8, 9], [EOS, 5, 5, 5, 5]])
    mask, truncated = completion_mask_from_eos(ids, [EOS])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


def test_several_eos_ids():
    ids = torch.tensor([[5, 9, 6, EOS]])
    mask, truncated = completion_mask_from_eos(ids, [EOS, 9])
    assert mask.tolist() == [[1, 1, 0, 0]] and truncated.tolist() == [False]


@pytest.mark.parametrize("batch_size", [None, 5])
def test_generate_layout_and_eos_invariants(batch_size):
    model, tok = tiny_model(eos_scale=30.0), tiny_tokenizer()
    model.train()
    engine = HFGenerateEngine(model, tok, batch_size=batch_size)
    torch.manual_seed(0)
    prompts = ["What is 1 + 2?", "x", "What is 9 + 9 + 9 + 9 + 9 + 9?"]
    g, max_new = 8, 6
    out = engine.generate(prompts, g, SamplingParams(max_new_tokens=max_new, temperature=1.0))
    b = len(prompts) * g
    assert model.training  # mode restored
    assert out.prompt_ids.shape[0] == b and out.completion_ids.shape[0] == b
    assert out.group_ids.tolist() == [k for k in range(len(prompts)) for _ in range(g)]
    assert out.prompts == [p for p in prompts for _ in range(g)]
    # prompts are left-padded: the last prompt column is always real
    assert out.prompt_mask[:, -1].all()
    assert (out.prompt_mask[g : 2 * g, 0] == 0).all()  # the short prompt is padded on the left
    assert out.completion_ids.shape[1] <= max_new
    lengths = out.completion_lengths
    seen_truncated = seen_eos = False
    for i in range(b):
        n = int(lengths[i])
        row, mask = out.completion_ids[i], out.completion_mask[i]
        assert mask[:n].all() and not mask[n:].any()  # right padding
        assert (row[n:] == PAD).all()
        eos_positions = (row[:n] == EOS).nonzero().flatten().tolist()
        if out.truncated[i]:
            seen_truncated = True
            assert n == max_new and eos_positions == []
        else:
            seen_eos = True
            assert eos_positions == [n - 1]  # the mask ends at and includes the first EOS
        assert IM_END not in out.completions[i]
    assert seen_truncated and seen_eos
    assert torch.equal(out.input_ids[:, -out.completion_ids.shape[1] :], out.completion_ids)


def test_greedy_is_deterministic_and_no_grad():
    model, tok = tiny_model(), tiny_tokenizer()
    engine = HFGenerateEngine(model, tok)
    out = engine.generate(["What is 3 + 4?"], 3, SamplingParams(max_new_tokens=5, greedy=True))
    assert not out.completion_ids.requires_grad
    assert out.completion_ids[0].tolist() == out.completion_ids[1].tolist() == out.completion_ids[2].tolist()


def test_concat_rollouts_repads_and_renumbers_groups():
    model, tok = tiny_model(), tiny_tokenizer()
    engine = HFGenerateEngine(model, tok)
    torch.manual_seed(1)
    a = engine.generate(["x"], 2, SamplingParams(max_new_tokens=3))
    b = engine.generate(["What is 1 + 1?"], 2, SamplingParams(max_new_tokens=6))
    both = concat_rollouts([a, b], PAD)
    assert both.group_ids.tolist() == [0, 0, 1, 1]
    assert both.prompt_ids.shape[1] == max(a.prompt_ids.shape[1], b.prompt_ids.shape[1])
    assert torch.equal(both.completion_lengths, torch.cat([a.completion_lengths, b.completion_lengths]))
    assert both.completions == a.completions + b.completions


def test_long_prompts_keep_their_last_tokens():
    """max_prompt_length cuts the start of a prompt (the question and the assistant header at its
    end must survive), whatever the tokenizer's own truncation side."""
    tok = tiny_tokenizer()
    tok.truncation_side = "right"
    engine = HFGenerateEngine(tiny_model(), tok, max_prompt_length=6)
    long_prompt, short_prompt = "one two three four five six seven eight nine ten 1+2=", "1+2="
    out = engine.generate([long_prompt, short_prompt], 2, SamplingParams(max_new_tokens=3, greedy=True))
    full = tok(long_prompt, add_special_tokens=False)["input_ids"]
    assert len(full) > 6 and out.prompt_ids.shape[1] == 6
    assert out.prompt_ids[0].tolist() == full[-6:] and out.prompt_mask[0].tolist() == [1] * 6
    short = tok(short_prompt, add_special_tokens=False)["input_ids"]
    assert out.prompt_ids[2, -len(short):].tolist() == short and out.prompt_mask[2].sum() == len(short)
