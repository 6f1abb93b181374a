"""Options classes of registered pieces (objectives, advantages): defaults, ranges, errors.

An options class is a pydantic dataclass, `@pydantic_dataclass(config=OPTIONS_CONFIG)`: its
fields carry their ranges and choices as metadata (`Annotated[float, Field(ge=0)]`,
`Literal[...]`) and its construction validates them, so `GRPOConfig(epsilon_low=2.0)` fails
wherever it is built.
`build_options` is the entry point for user input: unknown keys and the first pydantic error
become one line naming `<owner>.<key>` and what is allowed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import ConfigDict, ValidationError

from ticgrpo.errors import closest

T = TypeVar("T")

# strict: "0.2" is not a number and 1 is not true (YAML already typed them); finite: an
# inf or NaN option is always a typo, never a setting ("off" is spelled null).
OPTIONS_CONFIG = ConfigDict(strict=True, allow_inf_nan=False)


def option_names(options_cls: type) -> list[str]:
    return [field.name for field in dataclasses.fields(options_cls)]


def build_options(options_cls: type[T], overrides: Mapping[str, Any] | None, kind: str, owner: str) -> T:
    """`options_cls(**overrides)`, with user-facing errors: ValueError, one line.

    `kind` and `owner` name the piece ("objective", "grpo") in the messages:
    `unknown option 'eps' for objective 'grpo'; allowed: ...`, `grpo.epsilon_high must be a
    number or null, got str 'big'`."""
    overrides = dict(overrides or {})
    allowed = option_names(options_cls)
    for key in overrides:
        if key not in allowed:
            listed = ", ".join(sorted(allowed)) or "none"
            near = closest(key, allowed)
            hint = f"; did you mean {near!r}? (allowed: {listed})" if near else f"; allowed: {listed}"
            raise ValueError(f"unknown option {key!r} for {kind} {owner!r}{hint}")
    try:
        return options_cls(**overrides)
    except ValidationError as exc:
        raise ValueError(describe_error(exc, options_cls, owner)) from None


def describe_error(exc: ValidationError, options_cls: type, owner: str) -> str:
    """pydantic's first error as `<owner>.<key> <requirement>, got <value>`."""
    error = exc.errors(include_url=False)[0]
    key = ".".join(str(part) for part in error["loc"] if not isinstance(part, int))
    where = f"{owner}.{key}" if key else owner
    if error["type"] in ("value_error", "assertion_error"):
        # a validator's own message (a cross-field rule, a registry lookup) is already a sentence
        message = str(error.get("ctx", {}).get("error", error["msg"]))
        return message if key == "" else f"{where}: {message}"
    nullable = key in option_names(options_cls) and _is_nullable(options_cls, key)
    requirement = _requirement(error["type"], error.get("ctx") or {}, error["msg"])
    if nullable and error["type"].endswith("_type"):
        requirement += " or null"
    separator = ";" if error["type"] == "literal_error" else ","  # the choices are a comma list
    return f"{where} {requirement}{separator} got {_describe(error['input'])}"


_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
_TYPES = {
    "float_type": "must be a number",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "finite_number": "must be a finite number",
}


def _requirement(error_type: str, ctx: Mapping[str, Any], msg: str) -> str:
    if error_type in _BOUNDS:
        bound = next(iter(ctx.values()))
        shown = f"{bound:g}" if isinstance(bound, float) else str(bound)
        return f"must be {_BOUNDS[error_type]} {shown}"
    if error_type == "literal_error":
        choices = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return f"must be one of: {choices}"
    if error_type in _TYPES:
        return _TYPES[error_type]
    return msg[:1].lower() + msg[1:]


def _is_nullable(options_cls: type, key: str) -> bool:
    hint = typing.get_type_hints(options_cls).get(key)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return type(None) in typing.get_args(hint)
    return False


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"
