"""From YAML text and `--set` overrides to a validated TrainConfig, with one-line errors.

    config = load_config("configs/quickstart.yaml", overrides=["algorithm.objective=grpo"])

Order: the file (or dict), the overrides (`a.b.c=value`, YAML values; `algorithm.objective=X`
replaces the whole node, `algorithm.objective.<option>=v` sets one option), `output_dir`, the
preset (`algorithm.preset`, whose settings fill what the config leaves out), then the schema
(`ticgrpo.config.schema`). The first problem is a ConfigError whose message is one line
naming the key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from ticgrpo.config.migrations import check_raw_config, upgrade_saved_config
from ticgrpo.config.schema import (
    ConfigError,
    TrainConfig,
    describe,
    method_name,
)
from ticgrpo.errors import unknown_choice, unknown_key


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
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte {data[exc.start]:#04x}); save the file as UTF-8"
        ) from None
    try:
        raw = load_yaml(text)
    except DuplicateKeyError as exc:
        raise ConfigError(
            f"{path}:{exc.line}: duplicate key {exc.key!r} (first on line {exc.first_line}); keep one of them"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if raw is None:
        raise ConfigError(
            f"{path}: the config file is empty; write the settings that differ from the defaults "
            f"(docs/training.md), or leave out --config to train with the defaults"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return raw


# --------------------------------------------------------------------------- overrides


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
    """Apply one dotted `a.b.c=value` override (value parsed as a YAML scalar/flow) in place.

    The last key's node is replaced whole; the caller's nested mappings are copied, never changed."""
    key, value = parse_override(item)
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        # a method named by a string (`objective: cispo`) takes options as {name: cispo, ...}
        child = dict(child) if isinstance(child, dict) else {"name": child} if isinstance(child, str) else {}
        node[part] = child
        node = child
    node[parts[-1]] = value


# --------------------------------------------------------------------------- presets

# the keys of `algorithm` that describe the method (what a preset chosen with --set replaces)
_PRESET_KEYS = ("objective", "advantage", "dynamic_sampling", "mask_truncated", "overlong_reward", "espo_delta")


def preset_settings(name: str) -> dict[str, Any]:
    """The partial `algorithm:` section of the named method (ALGORITHMS), in the config's key names."""
    from ticgrpo.config.algorithms import algorithm_settings
    from ticgrpo.registry import UnknownNameError

    try:
        return algorithm_settings(name)
    except UnknownNameError as exc:
        raise ConfigError(f"algorithm.preset: {exc}") from None


def apply_preset(raw: dict) -> None:
    """Fill `algorithm` in place from `algorithm.preset` (the ALGORITHMS table); the file's keys win.

    The objective (advantage) mapping merges with the preset's only when it names the same
    method, or none: options of one objective never carry over to another. `advantage: null`
    counts as unset (null means "the default", which with a preset is the preset's).
    """
    algo = raw.get("algorithm")
    if not isinstance(algo, dict) or algo.get("preset") is None:
        return
    name = algo["preset"]
    if not isinstance(name, str):
        raise ConfigError(f"algorithm.preset must be a name, got {describe(name)}")
    settings = preset_settings(name)
    algo = raw["algorithm"] = dict(algo)  # never modify the caller's mapping
    for key, value in settings.items():
        mine = algo.get(key)
        if mine is None:
            algo[key] = value
        elif (
            key in ("objective", "advantage")
            and isinstance(mine, dict)
            and method_name(mine) in (None, method_name(value))
        ):
            algo[key] = {**(value if isinstance(value, dict) else {"name": value}), **mine}


# --------------------------------------------------------------------------- loading


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
    check_raw_config(raw)
    apply_preset(raw)
    # an empty section (`rollout:` with its keys commented out) takes the defaults
    raw = {
        k: v
        for k, v in raw.items()
        if not (v is None and k in TrainConfig.model_fields and _is_section(TrainConfig.model_fields[k]))
    }
    return validated(TrainConfig, raw)


def validated(model: type[BaseModel], raw: dict, prefix: str = "") -> Any:
    """`model.model_validate(raw)`, its first error as a one-line ConfigError."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(one_line(exc, model, prefix)) from None


def load_saved_config(path: str | Path) -> TrainConfig:
    """The TrainConfig of a run folder's config.yaml, whichever version of ticgrpo wrote it."""
    return load_config(upgrade_saved_config(read_yaml_mapping(path)))


def config_to_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def flow_yaml(value: Any) -> str:
    """`value` as one line of YAML flow (`{name: grpo, epsilon_high: 0.3}`, `[8]`, `none`): what
    `key=<this>` in an override (parse_override) reads back as `value`."""
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False).strip().removesuffix("...").strip()


# --------------------------------------------------------------------------- errors


def _is_section(info: FieldInfo) -> bool:
    return isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation may hold (through Optional, unions, lists)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


def _field_at(model: type[BaseModel], loc: tuple) -> tuple[list[type[BaseModel]], FieldInfo | None, str]:
    """(the models holding the last key, its FieldInfo, the dotted key) of an error location."""
    candidates: list[type[BaseModel]] = [model]
    parents, info, key = candidates, None, ""
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
            continue
        parents = candidates
        infos = [m.model_fields[part] for m in candidates if part in m.model_fields]
        info = infos[0] if infos else None
        candidates = [m for i in infos for m in _models_in(i.annotation)]
        key = f"{key}.{part}" if key else str(part)
    return parents, info, key


_BOUNDS = {
    "greater_than_equal": (">=", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("<=", "le"),
    "less_than": ("<", "lt"),
}
_KINDS = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
}


def one_line(error: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    """Pydantic's first error as `key: message` (one line); the key is dotted, list items `[i]`."""
    first = error.errors()[0]
    parents, info, key = _field_at(model, tuple(first["loc"]))
    key = f"{prefix}.{key}" if prefix and key else prefix or key
    kind, ctx, value = first["type"], first.get("ctx") or {}, first.get("input")
    cause = ctx.get("error")
    if isinstance(cause, ConfigError):
        return str(cause)
    if kind == "extra_forbidden":
        return unknown_key(key, dict.fromkeys(name for m in parents for name in m.model_fields))
    if kind in _KINDS:
        return f"{key} must be {_KINDS[kind]}, got {describe(value)}"
    if kind in _BOUNDS:
        symbol = (
            (info.json_schema_extra or {}).get("symbol") if info and isinstance(info.json_schema_extra, dict) else None
        )
        label = f"{key} ({symbol})" if symbol else key
        nullable = info is not None and type(None) in get_args(info.annotation)
        op, bound = _BOUNDS[kind]
        return f"{label} must be {op} {_plain(ctx[bound])}{' or null' if nullable else ''}, got {value}"
    if kind == "finite_number":
        return f"{key} must be a finite number, got {_as_number(value)}"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return f"{key}: {unknown_choice('value', value, choices)}"
    if kind == "string_too_short":
        return f"{key} must be a non-empty string"
    if kind == "too_short":
        return f"{key} must not be empty"
    message = str(cause) if cause is not None else first["msg"]
    return f"{key} {message}" if message.startswith("must ") else f"{key}: {message}" if key else message


def _plain(bound: Any) -> Any:
    """1.0 → 1: a bound as the schema wrote it (pydantic hands float fields' bounds over as floats)."""
    return int(bound) if isinstance(bound, float) and bound.is_integer() else bound


def _as_number(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value
