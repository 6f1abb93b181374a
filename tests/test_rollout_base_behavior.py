"""RolloutBatch.behavior_logprobs through select/concat, and RolloutEngine's default hooks."""

from __future__ import annotations

import pytest
import torch

from ticgrpo.rollout import RolloutBatch, RolloutEngine, SamplingParams, concat_rollouts


def _batch(rows: int, p: int, t: int, with_behavior: bool, base: float = 0.0) -> RolloutBatch:
    mask = torch.ones(rows, t, dtype=torch.long)
    mask[0, -1] = 0
    behavior = None
    if with_behavior:
        behavior = -(torch.arange(rows * t, dtype=torch.float32).reshape(rows, t) + base) / 10
        behavior = behavior * mask
    return RolloutBatch(
        prompt_ids=torch.arange(rows * p).reshape(rows, p),
        prompt_mask=torch.ones(rows, p, dtype=torch.long),
        completion_ids=torch.arange(rows * t).reshape(rows, t),
        completion_mask=mask,
        truncated=torch.zeros(rows, dtype=torch.bool),
        group_ids=torch.arange(rows) // 2,
        prompts=[f"p{i}" for i in range(rows)],
        completions=[f"c{i}" for i in range(rows)],
        behavior_logprobs=behavior,
    )


def test_default_is_none_and_select_keeps_none() -> None:
    b = _batch(4, 3, 5, with_behavior=False)
    assert b.behavior_logprobs is None
    assert b.select([2, 0]).behavior_logprobs is None


def test_select_carries_behavior_logprobs() -> None:
    b = _batch(4, 3, 5, with_behavior=True)
    s = b.select(torch.tensor([3, 1]))
    assert s.behavior_logprobs is not None and b.behavior_logprobs is not None
    torch.testing.assert_close(s.behavior_logprobs, b.behavior_logprobs[[3, 1]])


def test_concat_pads_behavior_logprobs_with_zeros() -> None:
    a = _batch(2, 3, 5, with_behavior=True)
    c = _batch(4, 2, 7, with_behavior=True, base=100.0)
    out = concat_rollouts([a, c], pad_token_id=0)
    assert out.behavior_logprobs is not None
    assert out.behavior_logprobs.shape == out.completion_ids.shape == (6, 7)
    assert out.behavior_logprobs.dtype == torch.float32
    torch.testing.assert_close(out.behavior_logprobs[:2, :5], a.behavior_logprobs)
    assert torch.all(out.behavior_logprobs[:2, 5:] == 0)
    torch.testing.assert_close(out.behavior_logprobs[2:], c.behavior_logprobs)
    # zero wherever the completion is padding
    assert torch.all(out.behavior_logprobs[out.completion_mask == 0] == 0)


def test_concat_without_behavior_stays_none() -> None:
    out = concat_rollouts([_batch(2, 3, 5, False), _batch(2, 3, 4, False)], pad_token_id=0)
    assert out.behavior_logprobs is None


def test_concat_mixed_raises() -> None:
    with pytest.raises(ValueError, match="behavior_logprobs"):
        concat_rollouts([_batch(2, 3, 5, True), _batch(2, 3, 5, False)], pad_token_id=0)


def test_engine_default_hooks_are_noops() -> None:
    class Engine(RolloutEngine):
        def generate(self, prompts: list[str], num_samples: int, params: SamplingParams) -> RolloutBatch:
            raise NotImplementedError

    engine = Engine()
    assert engine.provides_behavior_logprobs is False
    engine.update_weights(object())  # the base class's no-ops: nothing to push, nothing to release
    engine.close()


def test_hf_engine_provides_no_behavior_logprobs(tiny_tokenizer, tiny_model) -> None:
    from ticgrpo.rollout import HFGenerateEngine

    engine = HFGenerateEngine(tiny_model(), tiny_tokenizer)
    assert engine.provides_behavior_logprobs is False
    batch = engine.generate(["1 + 2 ="], 2, SamplingParams(max_new_tokens=3, greedy=True))
    assert batch.behavior_logprobs is None
    engine.update_weights(engine.model)
    engine.close()


def test_vllm_engine_without_vllm_names_the_bootstrap_script(tiny_tokenizer, tiny_model) -> None:
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    if spec is not None and spec.origin and spec.origin.endswith("__init__.py"):
        pytest.skip("vLLM is installed here; tests/vllm_rollout covers the engine")
    from ticgrpo.rollout import VLLMEngine

    with pytest.raises(ImportError, match=r"bootstrap_vllm\.sh.*\.venv-vllm"):
        VLLMEngine(tiny_model(), tiny_tokenizer)


def test_vllm_trainer_weights_merge_peft_adapters(tiny_model) -> None:
    """What update_weights sends: plain HF names; a LoRA model's adapters merged, then unmerged."""
    import copy

    from peft import LoraConfig, get_peft_model

    from ticgrpo.rollout.vllm import trainer_weights

    base = tiny_model()
    plain = dict(trainer_weights(base))
    assert set(plain) == set(base.state_dict())
    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    x = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        before = peft_model(input_ids=x).logits
    sent = dict(trainer_weights(peft_model))
    assert set(sent) == set(plain)
    merged = copy.deepcopy(peft_model).merge_and_unload().state_dict()
    for name, t in sent.items():
        torch.testing.assert_close(t, merged[name])
    assert any(not torch.equal(sent[n], plain[n]) for n in plain)  # the adapters did change weights
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=x).logits, before)  # unmerged again
