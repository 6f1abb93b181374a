"""The config reference, generated from the schema: `python -m ticgrpo.config.docs > docs/config.md`.

Every key of `ticgrpo.config.schema` (type, default, range or choices, description), the keys
of the mappings passed on as keyword arguments (model.lora, rollout.vllm, algorithm.igrpo, the
data sources), and the options of every registered objective, advantage estimator and off-policy
correction.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from ticgrpo.config.schema import AdvantageChoice, CorrectionChoice, ObjectiveChoice, PassedOn, TrainConfig

_BOUNDS = (
    (annotated_types.Ge, "ge", ">="),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "<="),
    (annotated_types.Lt, "lt", "<"),
)
_NAMES = {int: "int", float: "float", bool: "bool", str: "str", dict: "mapping", list: "list", type(None): "null"}


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """(the bare type, the metadata collected through Annotated and nested FieldInfos)."""
    metadata: list[Any] = []
    while get_origin(annotation) is Annotated:
        annotation, *extra = get_args(annotation)
        for item in extra:
            metadata += item.metadata if isinstance(item, FieldInfo) else [item]
    return annotation, metadata


def _type_and_limits(annotation: Any, metadata: list[Any]) -> tuple[str, list[str]]:
    """('int | null', ['>= 1']) for a field's annotation and its metadata."""
    bare, inner = _unwrap(annotation)
    metadata = [*metadata, *inner]
    origin = get_origin(bare)
    if origin is Literal:
        return "choice", [" \\| ".join(f"`{v}`" for v in get_args(bare))]
    if origin in (Union, types.UnionType):
        parts = [_type_and_limits(arg, metadata) for arg in get_args(bare)]
        limits = list(dict.fromkeys(limit for _, found in parts for limit in found))
        return " \\| ".join(dict.fromkeys(name for name, _ in parts)), limits
    limits = [f"{symbol} {getattr(m, attr)}" for m in metadata for kind, attr, symbol in _BOUNDS if isinstance(m, kind)]
    if any(isinstance(m, PassedOn) for m in metadata):
        return "mapping", limits
    if origin is list:
        (item,) = get_args(bare)
        item_type = (
            item.__name__ if isinstance(item, type) and issubclass(item, BaseModel) else _type_and_limits(item, [])[0]
        )
        return f"list of {item_type}", limits
    return _NAMES.get(origin or bare, getattr(bare, "__name__", str(bare))), limits


def _default(info: FieldInfo) -> Any:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    else:
        value = None if info.default is PydanticUndefined else info.default
    if isinstance(value, (ObjectiveChoice, CorrectionChoice)):
        return value.name
    if isinstance(value, AdvantageChoice):
        return None  # the objective's default
    if isinstance(value, BaseModel):
        return value.model_dump()
    return value


def _format(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_format(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_format(v)}" for k, v in value.items()) + "}"
    text = repr(value) if isinstance(value, str) and ("\n" in value or not value) else str(value)
    return text.replace("|", "\\|").replace("\n", "\\n")


# the method nodes: a name or a mapping naming the method, with its options beside the name
_METHOD_TYPES: dict[Any, str] = {
    ObjectiveChoice: "name \\| {name, <option>: ...}",
    CorrectionChoice: "name \\| {name, <option>: ...}",
    AdvantageChoice: "null \\| name \\| {name, <option>: ...}",
}


def _row(key: str, info: FieldInfo, required: bool = False) -> str:
    kind, limits = _type_and_limits(info.annotation, list(info.metadata))
    kind = _METHOD_TYPES.get(info.annotation, kind)
    default = "(required)" if required else f"`{_format(_default(info))}`"
    description = (info.description or "").replace("|", "\\|")
    return f"| `{key}` | {kind} | {default} | {', '.join(limits)} | {description} |"


_HEADER = ["| key | type | default | range / choices | description |", "|---|---|---|---|---|"]


def _section(title: str, model: type[BaseModel], prefix: str, note: str = "") -> list[str]:
    lines = [f"## {title}", ""] + ([note, ""] if note else []) + _HEADER
    nested: list[str] = []
    documented: set[tuple[str, ...]] = set()  # data.eval takes data.train's forms
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        lines.append(_row(key, info))
        for meta in info.metadata:
            if isinstance(meta, PassedOn) and meta.models not in documented:
                documented.add(meta.models)
                for sub in meta.load():
                    nested += _mapping_section(key, sub, len(meta.models) > 1)
    return [*lines, "", *nested]


def _mapping_section(key: str, model: type[BaseModel], one_of_several: bool) -> list[str]:
    kind = getattr(model, "KIND", None)
    title = f"{key}: {{{kind}: ...}}" if one_of_several and kind else f"{key}.*"
    doc = (model.__doc__ or "").strip().splitlines()
    note = doc[0] if doc else ""
    if model.model_config.get("extra") == "allow":
        note += f" Other keys are passed on to {getattr(model, 'PASSED_TO', 'the component')}."
    lines = [f"### {title}", "", note, "", *_HEADER]
    for name, info in model.model_fields.items():
        lines.append(_row(f"{key}.{name}", info, required=info.is_required()))
    return [*lines, ""]


def _options_table(title: str, options_cls: type) -> list[str]:
    fields = getattr(options_cls, "__pydantic_fields__", None) or {}
    lines = [f"### {title}", "", "| option | type | default | range / choices |", "|---|---|---|---|"]
    for field in dataclasses.fields(options_cls):
        info = fields.get(field.name)
        annotation, metadata = (info.annotation, list(info.metadata)) if info else (field.type, [])
        kind, limits = _type_and_limits(annotation, metadata)
        default = field.default if field.default is not dataclasses.MISSING else None
        lines.append(f"| `{field.name}` | {kind} | `{_format(default)}` | {', '.join(limits)} |")
    return [*lines, ""]


def _method_options() -> list[str]:
    from ticgrpo.core.advantages import ADVANTAGES
    from ticgrpo.core.objectives import OBJECTIVES

    lines = [
        "## Objective options (`algorithm.objective: {name: <objective>, <option>: ...}`)",
        "",
        "Each objective's options, with its defaults; `--set algorithm.objective=<name>` gives exactly these.",
        "",
    ]
    for name in OBJECTIVES.names():
        spec = OBJECTIVES.spec(name)
        lines += _options_table(f"{name} (default advantage: {spec.default_advantage})", spec.options)
    lines += ["## Advantage options (`algorithm.advantage: {name: <advantage>, <option>: ...}`)", ""]
    for name in ADVANTAGES.names():
        lines += _options_table(name, ADVANTAGES.spec(name).options)
    return lines + _correction_options()


def _correction_options() -> list[str]:
    from ticgrpo.core.corrections import CORRECTIONS

    lines = [
        "## Off-policy correction options (`algorithm.offpolicy_correction: {name: <correction>, <option>: ...}`)",
        "",
        "What each correction estimates and how it composes with each objective: [offpolicy.md](offpolicy.md); "
        "formulas and references: [objectives.md](objectives.md).",
        "",
    ]
    for name in CORRECTIONS.names():
        spec = CORRECTIONS.spec(name)
        unit = "per sequence" if spec.sequence_level else "per token"
        title = f"{name} (bypass: no weights)" if not spec.decoupled else f"{name} (weights {unit})"
        has_options = bool(dataclasses.fields(spec.options))
        lines += _options_table(title, spec.options) if has_options else [f"### {title}", "", "No options.", ""]
    return lines


def config_reference() -> str:
    """docs/config.md: every key of the training config, generated from the schema."""
    lines = [
        "# Config reference",
        "",
        "<!-- generated by `python -m ticgrpo.config.docs > docs/config.md` from ticgrpo/config/schema.py; "
        "do not edit by hand (tests/test_config_schema.py checks it is current) -->",
        "",
        "Every key of a training config (`ticgrpo train --config FILE --set key=value`), its type, default, "
        "range or choices. Keys left out take the default; a key not listed here is an error naming the "
        "closest one. How the pieces fit: [training.md](training.md).",
        "",
    ]
    top = [
        (name, info)
        for name, info in TrainConfig.model_fields.items()
        if not (isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel))
    ]
    lines += ["## Top level", "", *_HEADER, *(_row(name, info) for name, info in top), ""]
    for name, info in TrainConfig.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            lines += _section(f"{name}", info.annotation, f"{name}.")
    lines += _method_options()
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(config_reference(), end="")
