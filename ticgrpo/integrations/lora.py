"""Merge a trained LoRA adapter into its base model, for inference without peft.

    from ticgrpo.integrations.lora import export_merged
    export_merged("runs/tic/checkpoint-100", "exports/tic-merged")      # an adapter folder
    export_merged(peft_model, "exports/tic-merged", tokenizer=tok)      # an in-memory PeftModel

The result is an ordinary transformers checkpoint (weights, config, generation config and the
tokenizer) that `AutoModelForCausalLM.from_pretrained`, vLLM or SGLang load directly.
Merging is W ← W + (α/r)·B·A per adapted layer (peft's `merge_and_unload`), so the merged
model computes the same function as the adapter model, up to float rounding (tested on the
tiny model: identical logits to 1e-5).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ticgrpo.config.schema import Flag, Integer, Number, Text, no_bool
from ticgrpo.errors import closest


class LoraOptions(BaseModel):
    """`model.lora`: peft.LoraConfig arguments (ticgrpo adds target_modules all-linear, task_type CAUSAL_LM).

    The common ones are typed here; any other peft.LoraConfig argument (rank_pattern,
    exclude_modules, ...) passes through to peft, and a key peft does not know is refused."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    PASSED_TO: ClassVar[str] = "peft.LoraConfig (a key it does not take is refused)"
    r: Integer = Field(default=8, ge=1, description="adapter rank")
    lora_alpha: Annotated[int | float, BeforeValidator(no_bool)] = Field(default=8, gt=0,
        description="scaling numerator (scale = lora_alpha / r)")
    lora_dropout: Number = Field(default=0.0, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: str | list[str] = Field(default="all-linear", description="module names, or all-linear")
    bias: Literal["none", "all", "lora_only"] = Field(default="none", description="which biases are trained")
    task_type: Text = Field(default="CAUSAL_LM", description="peft task type")
    use_rslora: Flag = Field(default=False, description="rank-stabilised scaling lora_alpha / sqrt(r)")
    use_dora: Flag = Field(default=False, description="weight-decomposed LoRA")
    modules_to_save: list[str] | None = Field(default=None, description="modules trained in full beside the adapter")
    layers_to_transform: list[int] | None = Field(default=None, description="only these layer indices")
    init_lora_weights: Flag | Text = Field(default=True, description="initialisation (true, gaussian, pissa, ...)")
    fan_in_fan_out: Flag = Field(default=False, description="weights stored (fan_in, fan_out), e.g. GPT-2 Conv1D")

    @classmethod
    def check_passed_on_keys(cls, options: dict[str, Any], key: str) -> None:
        """Raise ValueError for a key that is neither typed here nor a peft.LoraConfig argument."""
        unknown = [name for name in options if name not in cls.model_fields]
        if not unknown:
            return
        from peft import LoraConfig

        allowed = [*cls.model_fields, *(f.name for f in dataclasses.fields(LoraConfig))]
        for name in unknown:
            if name not in allowed:
                near = closest(name, allowed)
                hint = f"; did you mean '{key}.{near}'?" if near else ""
                raise ValueError(f"unknown key '{key}.{name}'{hint} (not a peft.LoraConfig argument)")


def lora_config(options: dict[str, Any], key: str = "model.lora") -> Any:
    """The peft.LoraConfig of `model.lora`: the keys written, plus the two defaults in which
    ticgrpo differs from peft (target_modules all-linear, task_type CAUSAL_LM). A bad option
    is a one-line ValueError naming `key`."""
    from peft import LoraConfig

    from ticgrpo.config.loading import validated

    LoraOptions.check_passed_on_keys(options, key)
    checked = validated(LoraOptions, options, key)
    written = checked.model_dump(exclude_unset=True)
    return LoraConfig(**{"target_modules": checked.target_modules, "task_type": checked.task_type, **written})


def _load_adapter(adapter_dir: str | os.PathLike, dtype: Any = None) -> Any:
    from peft import AutoPeftModelForCausalLM

    kwargs = {} if dtype is None else {"dtype": dtype}
    return AutoPeftModelForCausalLM.from_pretrained(str(adapter_dir), **kwargs)


def _load_tokenizer(adapter_dir: Path, model: Any) -> Any:
    from transformers import AutoTokenizer

    candidates = [adapter_dir]
    base = getattr(getattr(model, "peft_config", {}).get("default"), "base_model_name_or_path", None)
    if base:
        candidates.append(Path(base) if os.path.isdir(base) else base)
    for source in candidates:
        try:
            return AutoTokenizer.from_pretrained(str(source))
        except (OSError, ValueError):
            continue
    return None


def export_merged(
    adapter_dir_or_model: str | os.PathLike | Any,
    out_dir: str | os.PathLike,
    tokenizer: Any = None,
    dtype: Any = None,
    inplace: bool = False,
    safe_serialization: bool = True,
) -> Path:
    """Merge LoRA weights into the base model and save a plain checkpoint in `out_dir`.

    adapter_dir_or_model: a folder written by `PeftModel.save_pretrained` (its
        adapter_config.json names the base model, which is loaded), or a `PeftModel`.
    tokenizer: saved alongside; by default the adapter folder's tokenizer, else the base
        model's (for a folder input). With an in-memory model and no tokenizer, none is saved.
    dtype: torch dtype to load a folder input in (default: the checkpoint's).
    inplace: for a `PeftModel` input, merge into it (no copy; the model is then the merged
        base model). Default: merge a deep copy so the caller's adapter model is untouched
        (needs memory for a second copy of the weights).

    Returns `out_dir` as a Path.
    """
    from peft import PeftModel

    out = Path(out_dir)
    if isinstance(adapter_dir_or_model, (str, os.PathLike)):
        adapter_dir = Path(adapter_dir_or_model)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise ValueError(f"{adapter_dir} is not a peft adapter folder (no adapter_config.json)")
        model = _load_adapter(adapter_dir, dtype)
        if tokenizer is None:
            tokenizer = _load_tokenizer(adapter_dir, model)
    elif isinstance(adapter_dir_or_model, PeftModel):
        model = adapter_dir_or_model if inplace else copy.deepcopy(adapter_dir_or_model)
    else:
        raise ValueError(
            f"export_merged needs a peft adapter folder or a PeftModel, got {type(adapter_dir_or_model).__name__}"
        )
    merged = model.merge_and_unload()
    merged.eval()
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out), safe_serialization=safe_serialization)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out


__all__ = ["LoraOptions", "export_merged", "lora_config"]
