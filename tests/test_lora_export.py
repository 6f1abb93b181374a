"""LoRA: only adapter weights train; the merged export computes the adapter model's logits."""

from __future__ import annotations

import pytest
import torch

peft = pytest.importorskip("peft")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from ticgrpo.integrations.lora import export_merged  # noqa: E402
from ticgrpo.models import load_model_and_tokenizer  # noqa: E402
from ticgrpo.testing import make_tiny_checkpoint  # noqa: E402


@pytest.fixture
def adapter_model(tmp_path):
    base_dir = make_tiny_checkpoint(tmp_path / "base", seed=0)
    # ticgrpo's own LoRA path (what `model.lora` in a config does)
    model, tokenizer = load_model_and_tokenizer(base_dir, lora={"r": 4, "lora_alpha": 8, "init_lora_weights": False})
    return model, tokenizer


def _logits(model, tokenizer):
    batch = tokenizer(["What is 3 + 4?", "12 - 7 ="], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


def test_only_adapter_weights_are_trainable(adapter_model):
    model, _ = adapter_model
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert frozen and not any("lora_" in n for n in frozen)
    # a gradient step moves adapters only
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = model(input_ids=torch.tensor([[5, 6, 7, 8]]), labels=torch.tensor([[5, 6, 7, 8]]))
    out.loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert moved and all("lora_" in n for n in moved)


def test_merged_export_matches_adapter_model(adapter_model, tmp_path):
    model, tokenizer = adapter_model
    model.eval()
    expected = _logits(model, tokenizer)
    base_logits = None
    with model.disable_adapter():
        base_logits = _logits(model, tokenizer)
    assert not torch.allclose(expected, base_logits, atol=1e-4)  # the adapter does something

    out = export_merged(model, tmp_path / "merged", tokenizer=tokenizer)
    assert any("lora" in n for n, _ in model.named_parameters())  # caller's model untouched (copy)
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    merged_tok = AutoTokenizer.from_pretrained(out)
    assert torch.allclose(_logits(merged, merged_tok), expected, atol=1e-5)


def test_export_from_adapter_folder(adapter_model, tmp_path):
    model, tokenizer = adapter_model
    model.eval()
    expected = _logits(model, tokenizer)
    adapter_dir = tmp_path / "adapter"
    model.save_pretrained(adapter_dir)  # adapter only; adapter_config names the base folder
    tokenizer.save_pretrained(adapter_dir)
    out = export_merged(adapter_dir, tmp_path / "merged2")
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert torch.allclose(_logits(merged, AutoTokenizer.from_pretrained(out)), expected, atol=1e-5)
    with pytest.raises(ValueError, match="adapter_config"):
        export_merged(tmp_path, tmp_path / "x")
