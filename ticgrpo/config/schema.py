"""The training config as pydantic models: every key's type, default, range or choices and
description lives on its field, and the cross-field rules are model validators.

A new config key is one field here (type, default, range or choices, and the description that
`python -m ticgrpo.config.docs` writes into docs/config.md) plus the code that acts on it. Registry names (objectives,
advantages, rewards) are checked against the registries, so that a piece registered later is
a valid choice too. The loader (`ticgrpo.config.loading`) turns pydantic's first error into
one line naming the key.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    Strict,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import core_schema

from ticgrpo.errors import unknown_choice


class ConfigError(ValueError):
    """A bad configuration value; the message is one line naming the key."""


SECTION = ConfigDict(extra="forbid", allow_inf_nan=False, validate_default=False)


def describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"must be a number, got {describe(value)}")
    return value


def _integer_input(value: Any) -> Any:
    if isinstance(value, (bool, str)):
        raise ValueError(f"must be an integer, got {describe(value)}")
    return value


# YAML typed the values already; bools are not numbers, strings are not integers. Floats take
# strings because YAML 1.1 reads `1e-5` (no dot) as one.
Number = Annotated[float, BeforeValidator(no_bool)]
Integer = Annotated[int, BeforeValidator(_integer_input)]
Flag = Annotated[bool, Strict()]
Text = Annotated[str, Strict()]


# --------------------------------------------------------------------------- option mappings
# Sub-configs passed on as keyword arguments (peft, vLLM, iGRPO, a data source): their keys,
# defaults and rules are the option model of the component that takes them; the config keeps
# the mapping the user wrote, checked by that model.


@dataclass(frozen=True)
class PassedOn:
    """Field metadata: the mapping is checked by the component's option model(s), named
    "module:Class" and imported only when a value is checked, so that loading a config imports
    no component (vLLM's or iGRPO's modules import torch). With several models (data sources) the
    mapping names one of their KIND keys."""

    key: str
    models: tuple[str, ...]
    nullable: bool = False

    def load(self) -> list[type[BaseModel]]:
        paths = (model.partition(":") for model in self.models)
        return [getattr(importlib.import_module(module), name) for module, _, name in paths]

    def check(self, value: Any) -> Any:
        if value is None and self.nullable:
            return None
        if not isinstance(value, dict):
            raise ConfigError(f"{self.key} must be a mapping, got {describe(value)}")
        if not value and len(self.models) == 1:
            return value  # nothing to check: no need to import the component
        models = self.load()
        chosen = [m for m in models if len(models) == 1 or getattr(m, "KIND", None) in value]
        if len(chosen) != 1:
            kinds = ", ".join(str(getattr(m, "KIND", m.__name__)) for m in models)
            raise ConfigError(f"{self.key} must name exactly one source: {kinds}; got keys {sorted(value)}")
        from ticgrpo.config.loading import validated

        check_keys = getattr(chosen[0], "check_passed_on_keys", None)  # a model that lets other keys through
        if check_keys is not None:
            try:
                check_keys(value, self.key)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        return validated(chosen[0], value, self.key).model_dump(exclude_unset=True)

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_before_validator_function(self.check, handler(source))


LORA = "ticgrpo.integrations.lora:LoraOptions"
VLLM = "ticgrpo.rollout.vllm.engine:VLLMOptions"
IGRPO = "ticgrpo.train.drafts:IGRPOOptions"
SOURCES = ("ticgrpo.data.sources:TaskSource", "ticgrpo.data.sources:JsonlSource", "ticgrpo.data.sources:HFSource",
           "ticgrpo.data.sources:BenchmarkSource")


# --------------------------------------------------------------------------- sections


def _known_reward(name: str) -> str:
    if ":" in name:
        return name  # "module:function" paths are imported when the trainer starts
    from ticgrpo.rewards import REWARDS

    if name not in REWARDS:
        raise ValueError(unknown_choice("value", name, REWARDS.names()))
    return name


class ModelConfig(BaseModel):
    model_config = SECTION
    name: Text = Field(default="smollm2-135m-instruct", min_length=1,
        description="local folder, hub id, alias (ticgrpo.models), or tiny-test (a random tiny model from "
        "ticgrpo.testing)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(default="float32", description="weights dtype")
    autocast_bf16: Flag = Field(default=False,
        description="bf16 autocast for generation and forward passes (much faster on CPUs with bf16 support; "
        "log-ratios are still formed in float32)")
    gradient_checkpointing: Flag = Field(default=False, description="recompute activations in backward (less memory)")
    lora: Annotated[dict[str, Any] | None, PassedOn("model.lora", (LORA,), nullable=True)] = Field(default=None,
        description="peft.LoraConfig arguments (model.lora.* below; target_modules defaults to all-linear); null = "
        "full fine-tuning. Never changes on resume")
    trust_remote_code: Flag = Field(default=False, description="run the model repository's own code")
    system_prompt: Text | None = Field(default=None, description="prepended to every prompt as a system message")
    chat_template: Flag = Field(default=True,
        description="wrap prompts with the tokenizer's chat template (raw text otherwise)")


class DataConfig(BaseModel):
    model_config = SECTION
    train: Annotated[dict[str, Any], PassedOn("data.train", SOURCES)] = Field(
        default_factory=lambda: {"task": "arithmetic", "level": 2, "split": "train"},
        description="training prompts: one source, {task: ...} | {jsonl: ...} | {hf: ...} | {dataset: ...}",
    )
    eval: Annotated[dict[str, Any] | None, PassedOn("data.eval", SOURCES, nullable=True)] = Field(
        default_factory=lambda: {"task": "arithmetic", "level": 2, "split": "eval"},
        description="held-out prompts, same forms; null = no evaluation",
    )
    shuffle: Flag = Field(default=True, description="reshuffle the training prompts every epoch (seeded)")


def _known_environment(name: str) -> str:
    if ":" in name:
        return name  # "module:Class" paths are imported when the trainer starts
    from ticgrpo.rollout.environments import ENVIRONMENTS

    if name not in ENVIRONMENTS:
        raise ValueError(unknown_choice("value", name, ENVIRONMENTS.names()))
    return name


class EnvironmentChoice(BaseModel):
    """`rollout.environment`: the environment of multi-turn episodes and its options.

    In YAML a name (`single_turn`), an import path (`my_envs:Calculator`), or a mapping naming
    it with the options its class takes (`{name: my_envs:Calculator, max_calls: 2}`)."""

    model_config = ConfigDict(extra="forbid")
    name: Annotated[Text, BeforeValidator(lambda v: _known_environment(v) if isinstance(v, str) else v)]
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, node: Any) -> Any:
        if isinstance(node, str):
            return {"name": node}
        if isinstance(node, dict) and "options" not in node:
            options = {k: v for k, v in node.items() if k != "name"}
            return {"name": node.get("name"), "options": options}
        return node

    @model_serializer
    def _yaml_form(self) -> dict[str, Any]:
        return {"name": self.name, **self.options}


class RolloutConfig(BaseModel):
    model_config = SECTION
    engine: Literal["hf", "vllm"] = Field(default="hf",
        description="hf: HFGenerateEngine (batched model.generate, KV cache); vllm: VLLMEngine (docs/vllm.md; needs "
        ".venv-vllm)")
    prompts_per_step: Integer = Field(default=4, ge=1,
        description="P: prompts per training step (the global batch: with N processes each samples P/N)")
    num_generations: Integer = Field(default=8, ge=2, json_schema_extra={"symbol": "G"},
        description="G: completions per prompt (>= 2 for group advantages)")
    max_new_tokens: Integer = Field(default=96, ge=1,
        description="completion budget; a completion without EOS within it is truncated")
    max_prompt_length: Integer | None = Field(default=None, ge=1,
        description="keep the last N prompt tokens; null = the whole prompt")
    temperature: Number = Field(default=1.0, gt=0,
        description="sampling temperature; the log-probs use the same temperature")
    top_p: Number = Field(default=1.0, gt=0, le=1, description="nucleus sampling")
    top_k: Integer = Field(default=0, ge=0, description="top-k sampling; 0 = off")
    generation_batch_size: Integer | None = Field(default=None, ge=1,
        description="sequences per generate() call (null = all P·G); each call is seeded by (seed, step, its first "
        "group), so a multiple of G makes the samples independent of the number of processes")
    vllm: Annotated[dict[str, Any], PassedOn("rollout.vllm", (VLLM,))] = Field(default_factory=dict,
        description="engine vllm: VLLMEngine options (rollout.vllm.* below, docs/vllm.md)")
    mode: Literal["sync", "async"] = Field(default="sync",
        description="sync: each step's batch is sampled in the loop (by the weights rollout.lag steps old); async: "
        "a producer samples continuously into a bounded queue while the trainer consumes (docs/offpolicy.md)")
    lag: Integer = Field(default=0, ge=0, json_schema_extra={"symbol": "k"},
        description="k (sync mode): the batch of step t is sampled by exactly the weights of step t−k (the initial "
        "weights for t < k); reproducible and resumable bit for bit; 0 = the classic on-policy loop")
    max_staleness: Integer | None = Field(default=None, ge=0, json_schema_extra={"symbol": "K"},
        description="K: a batch sampled more than K policy versions ago is dropped (counted in stale_dropped); must "
        "be >= rollout.lag; null = no limit")
    queue_size: Integer = Field(default=2, ge=1,
        description="async: batches the producer may sample ahead of the trainer (the bounded queue)")
    weight_sync_every: Integer = Field(default=1, ge=1,
        description="async: push the trainer's weights to the producer every N training steps")
    environment: EnvironmentChoice | None = Field(default=None,
        description="multi-turn episodes with this environment (a registry name: python_tool, guess_number, "
        "single_turn; module:Class; or {name: ..., <option>: ...}); null = one completion per sample (docs/agentic.md)")
    max_turns: Integer = Field(default=4, ge=1,
        description="environment: agent turns per episode (each up to rollout.max_new_tokens tokens)")
    max_episode_tokens: Integer | None = Field(default=None, ge=1,
        description="environment: agent + environment tokens per episode after the prompt; null = no limit but "
        "max_turns")
    producer_timeout_s: Number = Field(default=600.0, gt=0,
        description="async: seconds the trainer waits for the producer's next batch before it stops with an error "
        "naming the producer (a dead producer is reported at once)")


class WeightedReward(BaseModel):
    model_config = SECTION
    name: Annotated[Text, BeforeValidator(lambda v: _known_reward(v) if isinstance(v, str) else v)] = Field(
        default="math_correctness", description="reward registry name or package.module:function"
    )
    weight: Number = Field(default=1.0, description="its weight in the summed reward")


DEFAULT_OBJECTIVE = "tic_grpo"  # the method this library is named after: what a config or a host gets unasked


def _objective_options(name: str, overrides: dict | None = None) -> Any:
    from ticgrpo.core.objectives import make_objective_config

    return make_objective_config(name, overrides)


class MethodChoice(BaseModel):
    """A registered method and its validated options (a dataclass, defaults filled); written to
    YAML as one mapping `{name: ..., <option>: ...}`."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    name: str
    options: Any

    @model_serializer
    def _yaml_form(self) -> dict[str, Any]:
        import dataclasses

        return {"name": self.name, **dataclasses.asdict(self.options)}


class ObjectiveChoice(MethodChoice):
    """`algorithm.objective`: a registered objective and its validated options.

    In YAML a name (`cispo`) or a mapping naming it with its options (`{name: cispo, epsilon_high: 0.3}`).
    """

    name: str = DEFAULT_OBJECTIVE
    options: Any = Field(default_factory=lambda: _objective_options(DEFAULT_OBJECTIVE))


class AdvantageChoice(BaseModel):
    """`algorithm.advantage`: the estimator in use and its options.

    In YAML null (the objective's default), a name, or `{name: beta_norm, reward_min: 0}`.
    `from_objective` records a null, so that a written config keeps following the objective.
    """

    name: str = "length_corrected"
    options: dict[str, float | bool | None] = Field(default_factory=dict)
    from_objective: bool = True

    @model_serializer
    def _yaml_form(self) -> dict[str, Any] | None:
        if self.from_objective and not self.options:
            return None
        return {"name": self.name, **self.options}


def method_node(key: str, node: Any) -> tuple[str | None, dict[str, Any]]:
    """(name, options) of an `algorithm.objective` / `algorithm.advantage` node: null, a name, or
    a mapping with `name` (optional: the default method) and the method's options (a copy the
    caller owns, also of a read-only ALGORITHMS entry)."""
    if node is None or isinstance(node, str):
        return node, {}
    if not isinstance(node, Mapping):
        raise ConfigError(f"{key} must be a name or a mapping {{name: ..., <option>: ...}}, got {describe(node)}")
    options = {option: dict(value) if isinstance(value, Mapping) else value for option, value in node.items()}
    name = options.pop("name", None)
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"{key}.name must be a string, got {describe(name)}")
    for option, value in options.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}.{option} must be a finite number, got {value}")
    return name, options


def resolve_method(key: str, node: Any, default: str, names: Iterable[str],
                   make_options: Callable[[str, dict], Any]) -> tuple[str, Any]:
    """(name, validated options) of a method node (null, a name or a mapping) whose names are
    `names`; an unknown name or a bad option is a one-line ConfigError naming `key`."""
    name, overrides = method_node(key, node)
    name = name or default
    names = list(names)
    if name not in names:
        raise ConfigError(f"{key}: {unknown_choice('value', name, names)}")
    try:
        return name, make_options(name, overrides)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{key}: {exc}") from None


def method_name(node: Any) -> Any:
    return node.get("name") if isinstance(node, dict) else node


def resolve_methods(algo: dict) -> dict:
    """A copy of a raw `algorithm` section with its objective and advantage nodes validated into
    ObjectiveChoice / AdvantageChoice (null advantage: the objective's default)."""
    from ticgrpo.core.advantages import ADVANTAGES, make_advantage_options
    from ticgrpo.core.objectives import OBJECTIVES

    algo = dict(algo)
    name, options = resolve_method("algorithm.objective", algo.get("objective"), DEFAULT_OBJECTIVE,
                                   OBJECTIVES.names(), _objective_options)
    algo["objective"] = ObjectiveChoice(name=name, options=options)
    node = algo.get("advantage")
    advantage, advantage_options = resolve_method("algorithm.advantage", node, OBJECTIVES.spec(name).default_advantage,
                                                  ADVANTAGES.names(), make_advantage_options)
    algo["advantage"] = AdvantageChoice(name=advantage, options=advantage_options,
                                        from_objective=method_name(node) is None)
    return algo


DEFAULT_CORRECTION = "none"  # bypass: the objective's own ratio against the sampling policy


def _correction_options(name: str, overrides: dict | None = None) -> Any:
    from ticgrpo.core.corrections import make_correction_options

    return make_correction_options(name, overrides)


class CorrectionChoice(MethodChoice):
    """`algorithm.offpolicy_correction`: a registered correction and its validated options.

    In YAML a name (`token_tis`) or a mapping naming it with its options (`{name: token_tis, cap: 3}`).
    """

    name: str = DEFAULT_CORRECTION
    options: Any = Field(default_factory=lambda: _correction_options(DEFAULT_CORRECTION))


def resolve_correction(node: Any) -> CorrectionChoice:
    """An `algorithm.offpolicy_correction` node (null, a name or a mapping) as a CorrectionChoice."""
    from ticgrpo.core.corrections import CORRECTIONS

    name, options = resolve_method("algorithm.offpolicy_correction", node, DEFAULT_CORRECTION, CORRECTIONS.names(),
                                   _correction_options)
    return CorrectionChoice(name=name, options=options)


class AlgorithmConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, arbitrary_types_allowed=True)
    preset: Text | None = Field(default=None,
        description="an ALGORITHMS name (ticgrpo.config.algorithms); fills the algorithm keys the config leaves out")
    objective: ObjectiveChoice = Field(default_factory=ObjectiveChoice,
        description="objective name, or {name: ..., <option>: ...} with its options (docs/objectives.md); default "
        "tic_grpo")
    advantage: AdvantageChoice = Field(default_factory=AdvantageChoice,
        description="null (the objective's default), a name, or {name: ..., <option>: ...} (ticgrpo.core.advantages)")
    rewards: list[WeightedReward] = Field(default_factory=lambda: [WeightedReward()], min_length=1,
        description="rewards summed with their weights: [{name, weight}, ...]; a name is a registry name "
        '(ticgrpo.rewards.REWARDS), "module:function" or "path/to/file.py:function" (looked up beside the '
        "config, then in the working folder)")
    reward_kwargs: dict[str, Any] = Field(default_factory=dict,
        description="extra keyword arguments for every reward function (e.g. overlong_cache)")
    num_iterations: Integer = Field(default=1, ge=1, json_schema_extra={"symbol": "μ"},
        description="μ: inner epochs over each rollout batch")
    num_minibatches: Integer = Field(default=1, ge=1,
        description="M: optimizer steps per inner epoch (must divide P·G)")
    micro_batch_size: Integer | None = Field(default=None, ge=1,
        description="sequences per forward/backward (must divide the minibatch); null = the whole minibatch")
    dynamic_sampling: Flag = Field(default=False,
        description="DAPO: keep only groups whose rewards differ, resample until P groups are filled")
    dynamic_sampling_max_rounds: Integer = Field(default=3, ge=1,
        description="after this many sampling rounds, train on the groups collected so far")
    mask_truncated: Flag = Field(default=False,
        description="DAPO overlong filtering: truncated completions carry no loss")
    overlong_reward: Flag = Field(default=False,
        description="DAPO soft overlong punishment: adds reward overlong_soft (weight 1) unless rewards lists it; C "
        "= reward_kwargs.overlong_cache (default L//4)")
    espo_delta: Number | None = Field(default=None, gt=0,
        description="ESPO early stopping of the inner epochs: stop once mean |ρ−1| over a minibatch's tokens > δ "
        "(the paper's δ: 0.25); null = off")
    igrpo: Annotated[dict[str, Any] | None, PassedOn("algorithm.igrpo", (IGRPO,), nullable=True)] = Field(default=None,
        description="iGRPO two-stage drafts (algorithm.igrpo.* below); null = off")
    logprob_chunk_size: Integer = Field(default=1024, ge=1,
        description="rows of LM-head logits materialised at once (ticgrpo.core.logprobs)")
    log_entropy: Flag = Field(default=True, description="compute the policy entropy (metric entropy)")
    on_reward_error: Literal["raise", "zero", "skip"] = Field(default="raise",
        description="a reward that raises, returns NaN or the wrong number of values: raise (one-line error naming "
        "the function and the sample), zero (that sample gets 0), skip (its group is dropped); counted "
        "in reward_errors; a timeout is such an error")
    reward_timeout_s: Number | None = Field(default=300.0, gt=0,
        description="seconds a reward call may take (training and eval rewards); past it the call is abandoned and "
        "counts as a reward error of every sample of the call; null = no limit")
    reuse_window: Integer = Field(default=1, ge=1, le=64, json_schema_extra={"symbol": "ω"},
        description="ω: train each step on the union of the rollout batches of the last ω policy versions (RT-PG, "
        "arXiv 2506.06178), weighted by an objective that reads mixture log-probs (trajectory_reuse); keeps ω−1 "
        "parameter snapshots (on the CPU) and ω−1 batches (docs/offpolicy.md); 1 = fresh batches only")
    offpolicy_correction: CorrectionChoice = Field(default_factory=CorrectionChoice,
        description="how stale or engine-sampled rows are corrected (docs/offpolicy.md): none (the objective's own "
        "ratio against the sampler's log-probs), token_tis, sequence_tis, token_mask, sequence_mask, "
        "offpolicy_sequence_mask, drop_stale; a name or {name: ..., <option>: ...} (ticgrpo.core.corrections)")

    @model_validator(mode="before")
    @classmethod
    def _methods(cls, data: Any) -> Any:
        if not isinstance(data, dict) or isinstance(data.get("objective"), ObjectiveChoice):
            return data
        return resolve_methods(data)

    @field_validator("offpolicy_correction", mode="before")
    @classmethod
    def _correction(cls, node: Any) -> Any:
        return node if isinstance(node, CorrectionChoice) else resolve_correction(node)

    @model_validator(mode="after")
    def _rules(self) -> AlgorithmConfig:
        names = [spec.name for spec in self.rewards]
        if len(set(names)) != len(names):
            raise ConfigError(f"algorithm.rewards lists a reward twice: {names}")
        for name in names:
            _check_reward_options(name, self.reward_kwargs)
        if float(getattr(self.objective.options, "beta", 0.0)) < 0:
            raise ConfigError("algorithm.objective.beta must be >= 0")
        return self


def _check_reward_options(name: str, reward_kwargs: dict) -> None:
    """A reward's own check of its options (RewardSpec.check_options), e.g. that the sandbox
    level code_tests requires runs on this machine: fail before training starts."""
    if ":" in name:
        return
    from ticgrpo.rewards import REWARDS

    check = REWARDS.spec(name).check_options
    if check is not None:
        try:
            check(reward_kwargs)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


class OptimConfig(BaseModel):
    model_config = SECTION
    lr: Number = Field(default=1e-5, gt=0, description="AdamW learning rate")
    weight_decay: Number = Field(default=0.0, ge=0, description="AdamW weight decay")
    beta1: Number = Field(default=0.9, ge=0, lt=1, description="AdamW β1")
    beta2: Number = Field(default=0.999, ge=0, lt=1, description="AdamW β2")
    eps: Number = Field(default=1e-8, gt=0, description="AdamW ε")
    max_grad_norm: Number | None = Field(default=1.0, gt=0,
        description="global-norm gradient clipping per optimizer step; null = none")
    warmup_steps: Integer = Field(default=0, ge=0,
        description="linear warm-up, in training steps (the LR advances once per training step)")
    schedule: Literal["constant", "cosine", "linear"] = Field(default="constant",
        description="after warm-up: constant, or decay to min_lr_ratio·lr at max_steps")
    min_lr_ratio: Number = Field(default=0.0, ge=0, le=1,
        description="floor of cosine/linear decay, as a fraction of lr")
    max_consecutive_nonfinite: Integer = Field(default=3, ge=1,
        description="a NaN/inf loss or gradient skips the step (skipped_nonfinite); this many in a row stop the run "
        "(exit 3), last checkpoint intact")


DEFAULT_EVAL_METRICS = ("pass@k", "maj@k", "avg@k")


class EvalConfig(BaseModel):
    model_config = SECTION
    every_steps: Integer = Field(default=25, ge=0,
        description="evaluate every N steps; 0 = only before and after training")
    at_start: Flag = Field(default=True, description="evaluate at step 0, before training")
    at_end: Flag = Field(default=True, description="evaluate after the last step")
    num_examples: Integer | None = Field(default=64, ge=1, description="the first N held-out rows; null = all")
    batch_size: Integer = Field(default=32, ge=1, description="prompts per generate() call")
    max_new_tokens: Integer | None = Field(default=None, ge=1, description="null = rollout.max_new_tokens")
    reward: Annotated[Text, BeforeValidator(lambda v: _known_reward(v) if isinstance(v, str) else v)] = Field(
        default="math_correctness", description="reward that scores the held-out completions"
    )
    correct_threshold: Number = Field(default=1.0, description="a completion is correct when its reward >= this")
    ks: list[Annotated[Integer, Field(ge=1)]] = Field(default_factory=list,
        description="the k of the @k metrics, e.g. [1, 8]: max(ks) sampled completions per prompt besides the "
        "greedy one; [] = greedy only")
    metrics: list[Text] = Field(default_factory=lambda: list(DEFAULT_EVAL_METRICS),
        description="metrics logged to eval.jsonl and eval/... per k of eval.ks (ticgrpo.eval.metrics: pass@k, "
        "maj@k, avg@k, greedy_accuracy, mean_length, truncation_rate); evals/step-N/eval.json holds all of them")
    save_samples: Flag = Field(default=True,
        description="write every held-out completion to evals/step-N/samples.jsonl")
    temperature: Number | None = Field(default=None, gt=0,
        description="of the eval.ks samples; null = rollout.temperature")

    @field_validator("ks")
    @classmethod
    def _sorted_ks(cls, ks: list[int]) -> list[int]:
        return sorted(set(ks))

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, names: list[str]) -> list[str]:
        from ticgrpo.eval.metrics import EVAL_METRICS

        for name in names:
            if name not in EVAL_METRICS:
                raise ValueError(unknown_choice("value", name, EVAL_METRICS.names()))
        return list(dict.fromkeys(names))


class LoggingConfig(BaseModel):
    model_config = SECTION
    samples_per_step: Integer = Field(default=2, ge=0, description="rows written to samples.jsonl per step")
    progress_bar: Flag = Field(default=True, description="tqdm bar with reward, length, loss, last accuracy")
    tensorboard: Flag = Field(default=False, description="write TensorBoard event files (used only when installed)")
    wandb: Flag = Field(default=False, description="log to Weights & Biases (used only when installed)")
    wandb_project: Text = Field(default="ticgrpo", description="the W&B project")
    plot: Flag = Field(default=True, description="curves.png at the end")


class CheckpointConfig(BaseModel):
    model_config = SECTION
    every_steps: Integer = Field(default=0, ge=0, description="intermediate checkpoints every N steps; 0 = none")
    keep_last: Integer = Field(default=2, ge=0, description="checkpoints kept; 0 = all")
    save_final: Flag = Field(default=True, description="final/ via save_pretrained (+ tokenizer)")


def check_output_dir(key: str, folder: str | Path) -> None:
    """`folder` can be created or used: it is not a file and no folder above it is a file."""
    path = Path(folder)
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                where = "is a file" if candidate == path else f"is inside {str(candidate)!r}, which is a file"
                raise ConfigError(f"{key} {str(folder)!r} {where}; choose a folder path (it is created if missing)")
            return


def _threads(value: Any) -> Any:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ConfigError(f"threads must be a positive integer or 'auto', got {value!r}")


class TrainConfig(BaseModel):
    model_config = SECTION
    output_dir: Text = Field(default="runs/default",
        description="the run folder (--output-dir overrides; created if missing)")
    seed: Integer = Field(default=0, description="seeds python, numpy, torch; also the data order")
    max_steps: Integer = Field(default=100, ge=0, description="training steps (rollout batches)")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto = cuda where there is a GPU")
    threads: Annotated[int | Literal["auto"], BeforeValidator(_threads)] = Field(default="auto",
        description="torch's CPU threads when the device is the CPU: a count, or auto = OMP_NUM_THREADS if set, else "
        "the cores this process may run on divided among the node's LOCAL_WORLD_SIZE processes")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    @property
    def rollout_batch_size(self) -> int:
        return self.rollout.prompts_per_step * self.rollout.num_generations

    def to_dict(self) -> dict:
        """The config in its YAML form (methods as nested mappings), ready for load_config."""
        return self.model_dump()

    @model_validator(mode="after")
    def _rules(self) -> TrainConfig:
        if self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(
                    "device: cuda, but torch sees no CUDA GPU on this machine (torch.cuda.is_available() "
                    "is False); set device: cpu, or auto to use a GPU only where there is one"
                )
        check_output_dir("output_dir", self.output_dir)
        self._check_batch_sizes()
        self._check_staleness()
        self._check_offpolicy_correction()
        self._check_reuse_window()
        self._check_whole_groups()
        self._check_environment()
        return self

    def _check_environment(self) -> None:
        """rollout.environment: episodes are sampled in the loop, by an engine that continues token contexts."""
        r, a = self.rollout, self.algorithm
        if r.environment is None:
            return
        mechanism = ("rollout.mode: async" if r.mode == "async" else "algorithm.igrpo" if a.igrpo else None)
        if mechanism:
            raise ConfigError(f"rollout.environment runs episodes in the training loop; {mechanism} samples single "
                              f"completions: drop one of them")

    def _check_batch_sizes(self) -> None:
        a, batch = self.algorithm, self.rollout_batch_size
        if batch % a.num_minibatches:
            raise ConfigError(
                f"algorithm.num_minibatches={a.num_minibatches} must divide prompts_per_step*num_generations={batch}"
            )
        minibatch = batch // a.num_minibatches
        if a.micro_batch_size is not None and minibatch % a.micro_batch_size:
            raise ConfigError(
                f"algorithm.micro_batch_size={a.micro_batch_size} must divide the minibatch size "
                f"{minibatch} (prompts_per_step*num_generations/num_minibatches)"
            )

    def _check_staleness(self) -> None:
        r, a = self.rollout, self.algorithm
        if r.max_staleness is not None and r.max_staleness < r.lag:
            raise ConfigError(
                f"rollout.max_staleness={r.max_staleness} is below rollout.lag={r.lag}: every lagged batch would be "
                f"dropped; set rollout.max_staleness >= {r.lag} (or null)"
            )
        if r.mode == "async":
            if r.lag:
                raise ConfigError(
                    "rollout.lag is the fixed staleness of rollout.mode: sync; an async run's staleness is what the "
                    "producer's pace makes it, bounded by rollout.max_staleness: drop rollout.lag or use mode sync"
                )
            mechanism = "algorithm.dynamic_sampling" if a.dynamic_sampling else "algorithm.igrpo" if a.igrpo else None
            if mechanism:
                raise ConfigError(
                    f"rollout.mode: async samples plain groups; {mechanism} scores while it samples: turn it off "
                    f"or use rollout.mode: sync"
                )
            self._check_async_producer()

    def _check_async_producer(self) -> None:
        """rollout.mode: async — the producer must be able to run beside the trainer, and the
        weights it holds must be able to meet rollout.max_staleness."""
        r = self.rollout
        if r.engine == "vllm" and r.vllm.get("mode", "colocate") == "colocate":  # VLLMOptions' default mode
            raise ConfigError(
                "rollout.mode: async needs rollout.vllm.mode: server (a colocated vLLM shares the trainer's process "
                "and cannot sample while it trains): start python -m ticgrpo.rollout.vllm.server (docs/vllm.md)"
            )
        if r.max_staleness is not None and r.max_staleness < r.weight_sync_every - 1:
            raise ConfigError(
                f"rollout.max_staleness={r.max_staleness} is below rollout.weight_sync_every-1="
                f"{r.weight_sync_every - 1}: between two weight pushes every rollout would be dropped; set "
                f"rollout.max_staleness >= {r.weight_sync_every - 1} or lower rollout.weight_sync_every"
            )

    def _check_reuse_window(self) -> None:
        """algorithm.reuse_window > 1: the pooled batches' weights come from the objective (it must read mixture
        log-probs), in the plain synchronous loop with the hf engine (the cases the trainer's pool supports)."""
        from ticgrpo.core.corrections import CORRECTIONS
        from ticgrpo.core.objectives import OBJECTIVES

        a, r = self.algorithm, self.rollout
        if a.reuse_window == 1:
            return
        unsupported = [what for what, used in (
            ("rollout.mode: async", r.mode == "async"), ("rollout.lag", r.lag > 0), ("rollout.engine: vllm",
            r.engine == "vllm"), ("algorithm.dynamic_sampling", a.dynamic_sampling), ("algorithm.igrpo",
            a.igrpo is not None), (f"algorithm.offpolicy_correction: {a.offpolicy_correction.name}",
            CORRECTIONS.spec(a.offpolicy_correction.name).decoupled)) if used]
        if unsupported:
            raise ConfigError(f"algorithm.reuse_window={a.reuse_window} pools the synchronous hf loop's own batches; "
                              f"it does not support {', '.join(unsupported)}: set reuse_window: 1 or drop them")
        if not OBJECTIVES.spec(a.objective.name).reads_mixture_logprobs:
            raise ConfigError(f"algorithm.reuse_window={a.reuse_window} needs an objective that reads mixture "
                              f"log-probs (trajectory_reuse), got {a.objective.name}: the pooled rows would be "
                              f"weighted by their own sampler only")

    def _check_whole_groups(self) -> None:
        """An objective that couples a group's completions (its spec's couples_group) sees whole groups: the
        trainer splits minibatches by group, and a micro-batch must hold whole groups too."""
        from ticgrpo.core.objectives import OBJECTIVES

        a, g = self.algorithm, self.rollout.num_generations
        if (a.objective.name in OBJECTIVES and OBJECTIVES.spec(a.objective.name).couples_group
                and a.micro_batch_size is not None and a.micro_batch_size % g):
            raise ConfigError(
                f"algorithm.micro_batch_size={a.micro_batch_size} splits groups of rollout.num_generations={g}, and "
                f"{a.objective.name} couples the completions of a group: set it to a multiple of {g} (or null)"
            )

    def _check_offpolicy_correction(self) -> None:
        from ticgrpo.core.corrections import CORRECTIONS

        name, r = self.algorithm.offpolicy_correction.name, self.rollout
        if CORRECTIONS.spec(name).decoupled and r.engine == "hf" and r.lag == 0 and r.mode == "sync":
            raise ConfigError(
                f"algorithm.offpolicy_correction: {name}, but nothing to correct: the hf engine samples every batch "
                f"with the current weights; set rollout.lag, rollout.mode: async or rollout.engine: vllm (or "
                f"offpolicy_correction: none)"
            )


__all__ = [
    "AdvantageChoice",
    "AlgorithmConfig",
    "CheckpointConfig",
    "ConfigError",
    "CorrectionChoice",
    "DataConfig",
    "EvalConfig",
    "LoggingConfig",
    "ModelConfig",
    "ObjectiveChoice",
    "OptimConfig",
    "PassedOn",
    "RolloutConfig",
    "TrainConfig",
    "ValidationError",
    "WeightedReward",
    "check_output_dir",
    "resolve_correction",
    "resolve_methods",
]
