"""Training configuration: nested dataclasses, YAML loading, dotted overrides, validation.

    config = load_config("configs/quickstart.yaml", overrides=["algorithm.objective=grpo"])

Everything is checked here, before any model or dataset is loaded: unknown keys (with the
closest valid key suggested), wrong types, impossible combinations and unknown registry
names all raise `ConfigError` (a ValueError) whose one-line message names the key and the
allowed values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DTYPES = ("float32", "bfloat16", "float16")
LR_SCHEDULES = ("constant", "cosine", "linear")
ROLLOUT_ENGINES = ("hf", "vllm")
DEVICES = ("auto", "cpu", "cuda")
REWARD_ERROR_MODES = ("raise", "zero", "skip")


class ConfigError(ValueError):
    """A bad configuration value; the message is one line naming the key."""


@dataclass
class ModelConfig:
    name: str = "smollm2-135m-instruct"  # local folder, hub id or alias (see ticgrpo.models)
    dtype: str = "float32"  # weights: float32 | bfloat16 | float16
    autocast_bf16: bool = False  # bf16 autocast for forward passes and generation (CPU speed)
    gradient_checkpointing: bool = False
    lora: dict | None = None  # peft.LoraConfig arguments; null = full fine-tuning
    trust_remote_code: bool = False
    system_prompt: str | None = None
    chat_template: bool = True  # wrap prompts with the tokenizer's chat template


@dataclass
class DataConfig:
    # ticgrpo.data.load_dataset_source specs: {task, level, split} | {jsonl} | {hf, split, ...}
    train: dict = field(default_factory=lambda: {"task": "arithmetic", "level": 2, "split": "train"})
    eval: dict | None = field(default_factory=lambda: {"task": "arithmetic", "level": 2, "split": "eval"})
    shuffle: bool = True  # reshuffle the training prompts every epoch (seeded)


@dataclass
class RolloutConfig:
    engine: str = "hf"
    prompts_per_step: int = 4  # P
    num_generations: int = 8  # G completions per prompt
    max_new_tokens: int = 96
    max_prompt_length: int | None = None  # left-truncate longer prompts
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    generation_batch_size: int | None = None  # sequences per generate() call; null = all
    vllm: dict = field(default_factory=dict)  # engine "vllm": VLLMEngine keyword options (docs/vllm.md)


@dataclass
class WeightedReward:
    name: str = "math_correctness"  # registry name or "package.module:function"
    weight: float = 1.0


def _objective_options(name: str, overrides: dict | None = None) -> Any:
    from ticgrpo.core.objectives import make_objective_config

    return make_objective_config(name, overrides)


@dataclass
class ObjectiveChoice:
    """`algorithm.objective`: a registered objective and its validated options (defaults filled).

    In YAML a name (`cispo`) or a mapping naming it with options nested (`{name: cispo, epsilon_high: 0.3}`).
    """

    name: str = "tic_grpo"
    options: Any = field(default_factory=lambda: _objective_options("tic_grpo"))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self.options)}


@dataclass
class AdvantageChoice:
    """`algorithm.advantage`: the advantage estimator in use and its options.

    In YAML null (the objective's default), a name, or `{name: beta_norm, reward_min: 0}`.
    `from_objective` records a null, so that the written config keeps following the objective.
    """

    name: str = "length_corrected"
    options: dict[str, float | bool | None] = field(default_factory=dict)
    from_objective: bool = True

    def to_dict(self) -> dict[str, Any] | None:
        if self.from_objective and not self.options:
            return None
        return {"name": self.name, **self.options}


@dataclass
class AlgorithmConfig:
    preset: str | None = None  # an ALGORITHMS name; fills the keys below that the config leaves out
    objective: ObjectiveChoice = field(default_factory=ObjectiveChoice)
    advantage: AdvantageChoice = field(default_factory=AdvantageChoice)
    rewards: list[WeightedReward] = field(default_factory=lambda: [WeightedReward()])
    reward_kwargs: dict = field(default_factory=dict)  # extra keyword arguments for reward functions
    num_iterations: int = 1  # μ inner epochs over each rollout batch
    num_minibatches: int = 1  # M optimizer steps per inner epoch
    micro_batch_size: int | None = None  # sequences per forward/backward; null = whole minibatch
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal, resample
    dynamic_sampling_max_rounds: int = 3
    mask_truncated: bool = False  # DAPO overlong filtering: truncated completions get no loss
    overlong_reward: bool = False  # DAPO soft overlong punishment: add reward `overlong_soft` (weight 1)
    espo_delta: float | None = None  # ESPO: stop the inner epochs once mean |ρ−1| > δ (paper: 0.25); null = off
    igrpo: dict | None = None  # iGRPO two-stage drafts: {num_drafts: N, template: "...{prompt}...{draft}..."}
    logprob_chunk_size: int = 1024
    log_entropy: bool = True
    on_reward_error: str = "raise"  # a reward fn raising / returning NaN or too few values: raise | zero | skip
    reward_timeout_s: float | None = 300.0  # a reward call not returning within this counts as a reward error
    # an engine's behaviour log-probs (vLLM) vs the trainer's: null | token | sequence TIS (ticgrpo.core.mismatch)
    behavior_correction: str | None = None
    behavior_correction_cap: float = 2.0  # C: importance weights are truncated at C


@dataclass
class OptimConfig:
    lr: float = 1e-5
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0  # null = no clipping
    warmup_steps: int = 0  # training steps (rollout batches) of linear warm-up
    schedule: str = "constant"  # after warm-up: constant | cosine | linear
    min_lr_ratio: float = 0.0  # floor of cosine/linear decay, as a fraction of lr
    max_consecutive_nonfinite: int = 3  # stop (exit 3) after this many steps in a row with a NaN/inf loss or grad


@dataclass
class EvalConfig:
    every_steps: int = 25  # 0 = only before and after training
    at_start: bool = True
    at_end: bool = True
    num_examples: int | None = 64  # null = the whole eval split
    batch_size: int = 32  # prompts per generate() call
    max_new_tokens: int | None = None  # null = rollout.max_new_tokens
    reward: str = "math_correctness"
    correct_threshold: float = 1.0  # reward >= this counts as correct
    mean_at_k: int = 0  # k sampled completions per prompt for mean@k; 0 = greedy only
    temperature: float | None = None  # for mean@k; null = rollout.temperature


@dataclass
class LoggingConfig:
    samples_per_step: int = 2  # rows written to samples.jsonl per step
    progress_bar: bool = True
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "ticgrpo"
    plot: bool = True  # curves.png at the end


@dataclass
class CheckpointConfig:
    every_steps: int = 0  # 0 = no intermediate checkpoints
    keep_last: int = 2  # 0 = keep all
    save_final: bool = True  # final/ (save_pretrained + tokenizer)


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    seed: int = 0
    max_steps: int = 100
    device: str = "auto"
    # CPU threads for torch: a count, or "auto" (the cores this process may use); docs/training.md
    threads: int | str = "auto"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def to_dict(self) -> dict:
        """The config in its YAML form (methods as nested mappings), ready for load_config."""
        data = dataclasses.asdict(self)
        data["algorithm"]["objective"] = self.algorithm.objective.to_dict()
        data["algorithm"]["advantage"] = self.algorithm.advantage.to_dict()
        return data

    @property
    def rollout_batch_size(self) -> int:
        return self.rollout.prompts_per_step * self.rollout.num_generations


# --------------------------------------------------------------------------- loading


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that names one key twice (PyYAML itself keeps the last value without a word)."""

    def __init__(self, key: Any, first_line: int, line: int) -> None:
        super().__init__(f"duplicate key {key!r} on line {line} (first on line {first_line})")
        self.key, self.first_line, self.line = key, first_line, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that raises DuplicateKeyError for a key written twice in one mapping."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> Any:
    first_lines: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` merges are not keys
            continue
        key = loader.construct_object(key_node)
        line = key_node.start_mark.line + 1
        try:
            if key in first_lines:
                raise DuplicateKeyError(key, first_lines[key], line)
            first_lines[key] = line
        except TypeError:  # an unhashable key: construct_mapping reports it
            pass
    data: dict = {}
    yield data  # as SafeConstructor.construct_yaml_map does, so that anchors may refer to the mapping
    data.update(loader.construct_mapping(node))


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_yaml(text: str) -> Any:
    """yaml.safe_load, except that a key written twice in one mapping raises DuplicateKeyError."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects


def read_yaml_mapping(source: str | Path) -> dict:
    """The top-level mapping of a YAML config file, with one-line errors naming the file."""
    path = Path(source)
    if path.is_dir():
        raise ConfigError(f"config file {str(path)!r} is a folder; pass the YAML file inside it")
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {data[exc.start]:#04x}); "
                          f"save the file as UTF-8") from None
    try:
        raw = load_yaml(text)
    except DuplicateKeyError as exc:
        raise ConfigError(f"{path}:{exc.line}: duplicate key {exc.key!r} (first on line {exc.first_line}); "
                          f"keep one of them") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if raw is None:
        raise ConfigError(f"{path}: the config file is empty; write the settings that differ from the defaults "
                          f"(docs/training.md), or leave out --config to train with the defaults")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return raw


def load_config(
    source: str | Path | dict | TrainConfig | None = None,
    overrides: list[str] | None = None,
    output_dir: str | None = None,
) -> TrainConfig:
    """A validated TrainConfig from a YAML path, a dict or a TrainConfig, plus `key=value` overrides."""
    if isinstance(source, TrainConfig):
        raw = source.to_dict()
    elif isinstance(source, dict):
        raw = dict(source)
    elif source is None:
        raw = {}
    else:
        raw = read_yaml_mapping(source)
    overrides = list(overrides or [])
    if any(item.partition("=")[0].strip() == "algorithm.preset" for item in overrides):
        # a preset chosen with --set replaces the method the file describes (its objective,
        # advantage and mechanism keys); other --set keys still win over it
        algo = raw.get("algorithm")
        if isinstance(algo, dict):
            raw["algorithm"] = {k: v for k, v in algo.items() if k not in _PRESET_KEYS}
    for item in overrides:
        apply_override(raw, item)
    if output_dir is not None:
        raw["output_dir"] = output_dir
    apply_preset(raw)
    if isinstance(raw.get("algorithm"), dict):
        raw["algorithm"] = _with_method_choices(raw["algorithm"])
    config = from_dict(TrainConfig, raw, "")
    validate(config)
    return config


# the keys of `algorithm` that describe the method (what a preset chosen with --set replaces)
_PRESET_KEYS = ("objective", "advantage", "dynamic_sampling", "mask_truncated", "overlong_reward", "espo_delta")
# removed keys → the key their options now nest under
_REMOVED_OPTION_KEYS = {"objective_options": "objective", "advantage_options": "advantage"}


def preset_settings(name: str) -> dict[str, Any]:
    """The partial `algorithm:` section of the named method (ALGORITHMS), in the config's key names."""
    from ticgrpo.config.algorithms import algorithm_settings
    from ticgrpo.registry import UnknownNameError

    try:
        return algorithm_settings(name)
    except UnknownNameError as exc:
        raise ConfigError(f"algorithm.preset: {exc}") from None


def _method_name(node: Any) -> Any:
    return node.get("name") if isinstance(node, dict) else node


def apply_preset(raw: dict) -> None:
    """Fill `algorithm` in place from `algorithm.preset` (the ALGORITHMS table); the file's keys win.

    The objective (advantage) mapping merges with the preset's only when it names the same
    method, or no method: options of one objective never carry over to another. `advantage:
    null` counts as unset (null means "the default", which with a preset is the preset's).
    """
    algo = raw.get("algorithm")
    if not isinstance(algo, dict) or algo.get("preset") is None:
        return
    name = algo["preset"]
    if not isinstance(name, str):
        raise ConfigError(f"algorithm.preset must be a name, got {_describe(name)}")
    settings = preset_settings(name)
    algo = raw["algorithm"] = dict(algo)  # never modify the caller's mapping
    for key, value in settings.items():
        mine = algo.get(key)
        if mine is None:
            algo[key] = value
        elif key in ("objective", "advantage") and isinstance(mine, dict) and _method_name(mine) in (
                None, _method_name(value)):
            base = value if isinstance(value, dict) else {"name": value}
            algo[key] = {**base, **mine}


def _method_node(key: str, node: Any) -> tuple[str | None, dict[str, Any]]:
    """(name, options) of an `algorithm.objective` / `algorithm.advantage` node: null, a name, or
    a mapping with `name` (optional: the default method) and the method's options."""
    if node is None or isinstance(node, str):
        return node, {}
    if not isinstance(node, dict):
        raise ConfigError(f"{key} must be a name or a mapping {{name: ..., <option>: ...}}, got {_describe(node)}")
    options = dict(node)
    name = options.pop("name", None)
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"{key}.name must be a string, got {_describe(name)}")
    for option, value in options.items():
        if isinstance(value, float):
            _check_finite(f"{key}.{option}", value)
    return name, options


def _removed_options_error(algo: dict, removed: str, key: str) -> ConfigError:
    """The one-line error for `objective_options` / `advantage_options`, spelling out the new form."""
    from ticgrpo.core.objectives import OBJECTIVES

    objective = _method_name(algo.get("objective")) or ObjectiveChoice.name
    name = _method_name(algo.get(key))
    if name is None:
        name = objective if key == "objective" else (
            OBJECTIVES.spec(objective).default_advantage if objective in OBJECTIVES else "...")
    node = {"name": name, **(algo[removed] if isinstance(algo[removed], dict) else {})}
    spelling = yaml.safe_dump(node, default_flow_style=True, sort_keys=False).strip()
    return ConfigError(f"algorithm.{removed} was removed: the options nest under the method, "
                       f"algorithm.{key}: {spelling} (--set algorithm.{key}.<option>=...)")


def _with_method_choices(algo: dict) -> dict:
    """A copy of the raw `algorithm` section with its objective and advantage nodes resolved and
    validated into ObjectiveChoice / AdvantageChoice."""
    from ticgrpo.core.advantages import ADVANTAGES, make_advantage_options
    from ticgrpo.core.objectives import OBJECTIVES

    for removed, key in _REMOVED_OPTION_KEYS.items():
        if removed in algo:
            raise _removed_options_error(algo, removed, key)
    algo = dict(algo)
    name, overrides = _method_node("algorithm.objective", algo.get("objective"))
    name = name or ObjectiveChoice.name
    _choice("algorithm.objective", name, OBJECTIVES.names())
    try:
        options = _objective_options(name, overrides)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"algorithm.objective: {exc}") from None
    algo["objective"] = ObjectiveChoice(name, options)
    advantage, advantage_options = _method_node("algorithm.advantage", algo.get("advantage"))
    if advantage is not None:
        _choice("algorithm.advantage", advantage, ADVANTAGES.names())
    resolved = advantage or OBJECTIVES.spec(name).default_advantage
    try:
        advantage_options = make_advantage_options(resolved, advantage_options)
    except ValueError as exc:
        raise ConfigError(f"algorithm.advantage: {exc}") from None
    algo["advantage"] = AdvantageChoice(resolved, advantage_options, from_objective=advantage is None)
    return algo


def parse_override(item: str) -> tuple[str, Any]:
    """(dotted key, value) of one `a.b.c=value` override; the value is parsed as a YAML scalar/flow."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, _, text = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = load_yaml(text) if text.strip() else None
    except DuplicateKeyError as exc:
        raise ConfigError(f"override {item!r}: duplicate key {exc.key!r}; keep one of them") from None
    except yaml.YAMLError:
        value = text
    return key, value


def apply_override(raw: dict, item: str) -> None:
    """Apply one dotted `a.b.c=value` override (value parsed as a YAML scalar/flow) in place."""
    key, value = parse_override(item)
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        # a copy (the caller's nested mappings are left alone); a method named by a string
        # (`objective: cispo`) takes options as {name: cispo, ...}
        child = dict(child) if isinstance(child, dict) else {"name": child} if isinstance(child, str) else {}
        node[part] = child
        node = child
    node[parts[-1]] = value


def from_dict(cls: type, raw: Any, prefix: str) -> Any:
    """Build dataclass `cls` from `raw`, checking keys and types."""
    where = prefix.rstrip(".") or "config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {_describe(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"unknown key '{prefix}{key}'{hint} (allowed: {', '.join(fields)})")
        kwargs[key] = _convert(f"{prefix}{key}", value, hints[key])
    return cls(**kwargs)


def _convert(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key} may not be null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(key, value, arg)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if hint in (ObjectiveChoice, AdvantageChoice) and isinstance(value, hint):
        return value  # resolved and validated by _with_method_choices
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, f"{key}.")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {_describe(value)}")
        (item,) = args
        return [_convert(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if value is None:
        raise ConfigError(f"{key} may not be null")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {_describe(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} must be an integer, got {_describe(value)}")
    if hint is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 1e-5 as a string
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None:
            raise ConfigError(f"{key} must be a number, got {_describe(value)}")
        # no float setting means anything at inf or NaN (a bound that is off is null), and an inf
        # lr or eps would write non-finite weights into the first checkpoint
        _check_finite(key, number)
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {_describe(value)}")
    if hint is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"{key} must be a mapping, got {_describe(value)}")
    return value


def _check_finite(key: str, number: float) -> None:
    if not math.isfinite(number):
        raise ConfigError(f"{key} must be a finite number, got {number}")


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


# --------------------------------------------------------------------------- validation


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _choice(key: str, value: str, allowed: typing.Iterable[str]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        close = difflib.get_close_matches(value, allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{key}: unknown value {value!r}{hint}; choose one of: {', '.join(allowed)}")


def validate(config: TrainConfig) -> None:
    """Semantic checks (names, ranges, combinations); raises ConfigError."""
    m, r, a, o, e, c = config.model, config.rollout, config.algorithm, config.optim, config.eval, config.checkpoint
    _check(config.max_steps >= 0, f"max_steps must be >= 0, got {config.max_steps}")
    _choice("device", config.device, DEVICES)
    if config.device == "cuda":
        import torch

        _check(torch.cuda.is_available(), "device: cuda, but torch sees no CUDA GPU on this machine "
               "(torch.cuda.is_available() is False); set device: cpu, or auto to use a GPU only where there is one")
    check_output_dir("output_dir", config.output_dir)
    _check(config.threads == "auto" or (isinstance(config.threads, int) and config.threads >= 1),
           f"threads must be a positive integer or 'auto', got {config.threads!r}")
    _check(bool(m.name), "model.name must be a non-empty string")
    _choice("model.dtype", m.dtype, DTYPES)
    _choice("rollout.engine", r.engine, ROLLOUT_ENGINES)
    _check(r.num_generations >= 2, f"rollout.num_generations (G) must be >= 2 to form group advantages, got "
           f"{r.num_generations}")
    _check(r.prompts_per_step >= 1, f"rollout.prompts_per_step must be >= 1, got {r.prompts_per_step}")
    _check(r.max_new_tokens >= 1, f"rollout.max_new_tokens must be >= 1, got {r.max_new_tokens}")
    _check(r.max_prompt_length is None or r.max_prompt_length >= 1,
           f"rollout.max_prompt_length must be >= 1 or null, got {r.max_prompt_length}")
    _check(r.temperature > 0, f"rollout.temperature must be > 0, got {r.temperature}")
    _check(0 < r.top_p <= 1, f"rollout.top_p must be in (0, 1], got {r.top_p}")
    _check(r.top_k >= 0, f"rollout.top_k must be >= 0 (0 = off), got {r.top_k}")
    _check(r.generation_batch_size is None or r.generation_batch_size >= 1,
           f"rollout.generation_batch_size must be >= 1 or null, got {r.generation_batch_size}")

    _check(len(a.rewards) >= 1, "algorithm.rewards must list at least one reward {name, weight}")
    names = [spec.name for spec in a.rewards]
    _check(len(set(names)) == len(names), f"algorithm.rewards lists a reward twice: {names}")
    for i, spec in enumerate(a.rewards):
        _check_reward_name(f"algorithm.rewards[{i}].name", spec.name)
        _check_reward_options(spec.name, a.reward_kwargs)
    _check(a.num_iterations >= 1, f"algorithm.num_iterations (μ) must be >= 1, got {a.num_iterations}")
    _check(a.num_minibatches >= 1, f"algorithm.num_minibatches must be >= 1, got {a.num_minibatches}")
    batch = config.rollout_batch_size
    _check(batch % a.num_minibatches == 0,
           f"algorithm.num_minibatches={a.num_minibatches} must divide prompts_per_step*num_generations={batch}")
    minibatch = batch // a.num_minibatches
    if a.micro_batch_size is not None:
        _check(a.micro_batch_size >= 1, f"algorithm.micro_batch_size must be >= 1 or null, got "
               f"{a.micro_batch_size}")
        _check(minibatch % a.micro_batch_size == 0,
               f"algorithm.micro_batch_size={a.micro_batch_size} must divide the minibatch size {minibatch} "
               f"(prompts_per_step*num_generations/num_minibatches)")
    _check(a.dynamic_sampling_max_rounds >= 1,
           f"algorithm.dynamic_sampling_max_rounds must be >= 1, got {a.dynamic_sampling_max_rounds}")
    _check(a.logprob_chunk_size >= 1, f"algorithm.logprob_chunk_size must be >= 1, got {a.logprob_chunk_size}")
    _check(a.espo_delta is None or a.espo_delta > 0, f"algorithm.espo_delta must be > 0 or null, got {a.espo_delta}")
    if a.igrpo is not None:
        from ticgrpo.train.drafts import check_igrpo_options

        try:
            check_igrpo_options(a.igrpo)
        except ValueError as exc:
            raise ConfigError(f"algorithm.igrpo: {exc}") from None
    if a.behavior_correction is not None:
        from ticgrpo.core.mismatch import MODES
        from ticgrpo.core.objectives import OBJECTIVES

        _choice("algorithm.behavior_correction", a.behavior_correction, MODES)
        _check(r.engine != "hf", "algorithm.behavior_correction corrects an inference engine's sampling; the hf engine "
               "samples from the training model itself: set rollout.engine: vllm or drop the correction")
        _check(a.behavior_correction == "sequence"
               or not OBJECTIVES.spec(a.objective.name).sequence_advantages,
               f"algorithm.behavior_correction: token weights need a token-level objective; {a.objective.name} uses "
               f"one advantage per sequence: use sequence")
    _check(a.behavior_correction_cap >= 1,
           f"algorithm.behavior_correction_cap must be >= 1, got {a.behavior_correction_cap}")
    _check(isinstance(r.vllm, dict), "rollout.vllm must be a mapping of VLLMEngine options")
    # β > 0 needs a reference model: a frozen copy is loaded (with LoRA: the adapter-disabled base).
    _check(float(getattr(a.objective.options, "beta", 0.0)) >= 0, "algorithm.objective.beta must be >= 0")

    _check(o.lr > 0, f"optim.lr must be > 0, got {o.lr}")
    _check(o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    _check(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, f"optim.beta1/beta2 must be in [0, 1), got {o.beta1}, {o.beta2}")
    _check(o.eps > 0, f"optim.eps must be > 0, got {o.eps}")
    _check(o.max_grad_norm is None or o.max_grad_norm > 0,
           f"optim.max_grad_norm must be > 0 or null, got {o.max_grad_norm}")
    _check(o.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {o.warmup_steps}")
    _choice("optim.schedule", o.schedule, LR_SCHEDULES)
    _check(0 <= o.min_lr_ratio <= 1, f"optim.min_lr_ratio must be in [0, 1], got {o.min_lr_ratio}")
    _check(o.max_consecutive_nonfinite >= 1,
           f"optim.max_consecutive_nonfinite must be >= 1, got {o.max_consecutive_nonfinite}")
    _choice("algorithm.on_reward_error", a.on_reward_error, REWARD_ERROR_MODES)
    _check(a.reward_timeout_s is None or 0 < a.reward_timeout_s < float("inf"),
           f"algorithm.reward_timeout_s must be a positive number of seconds or null (no limit), got "
           f"{a.reward_timeout_s}")

    _check(e.every_steps >= 0, f"eval.every_steps must be >= 0, got {e.every_steps}")
    _check(e.num_examples is None or e.num_examples >= 1, f"eval.num_examples must be >= 1 or null, got "
           f"{e.num_examples}")
    _check(e.batch_size >= 1, f"eval.batch_size must be >= 1, got {e.batch_size}")
    _check(e.max_new_tokens is None or e.max_new_tokens >= 1,
           f"eval.max_new_tokens must be >= 1 or null, got {e.max_new_tokens}")
    _check(e.mean_at_k >= 0, f"eval.mean_at_k must be >= 0, got {e.mean_at_k}")
    _check(e.temperature is None or e.temperature > 0, f"eval.temperature must be > 0 or null, got "
           f"{e.temperature}")
    _check_reward_name("eval.reward", e.reward)
    _check(config.logging.samples_per_step >= 0, "logging.samples_per_step must be >= 0")
    _check(c.every_steps >= 0, f"checkpoint.every_steps must be >= 0, got {c.every_steps}")
    _check(c.keep_last >= 0, f"checkpoint.keep_last must be >= 0, got {c.keep_last}")
    for key in ("train", "eval"):
        spec = getattr(config.data, key)
        if spec is None:
            _check(key == "eval", "data.train may not be null")
            continue
        sources = [k for k in ("task", "jsonl", "hf") if k in spec]
        _check(len(sources) == 1, f"data.{key} must name exactly one source: task, jsonl or hf; got keys "
               f"{sorted(spec)}")


def check_output_dir(key: str, folder: str | Path) -> None:
    """`folder` can be created or used: it is not a file and no folder above it is a file."""
    path = Path(folder)
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                where = "is a file" if candidate == path else f"is inside {str(candidate)!r}, which is a file"
                raise ConfigError(f"{key} {str(folder)!r} {where}; choose a folder path (it is created if missing)")
            return


def _check_reward_options(name: str, reward_kwargs: dict) -> None:
    """A reward's own check of its options (registry meta `check_options`), e.g. that the
    sandbox level code_tests requires runs on this machine: fail before training starts."""
    if ":" in name:
        return
    from ticgrpo.rewards import REWARDS

    check = REWARDS.spec(name).check_options
    if check is not None:
        try:
            check(reward_kwargs)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def _check_reward_name(key: str, name: str) -> None:
    if ":" in name:
        return  # "module:function" paths are imported when the trainer starts
    from ticgrpo.rewards import REWARDS

    _choice(key, name, REWARDS.names())


def config_to_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
