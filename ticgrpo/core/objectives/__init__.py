"""Policy objectives (spec §4): pure tensor functions behind the `OBJECTIVES` registry.

    loss, metrics = compute_loss("tic_grpo", batch, make_objective_config("tic_grpo"), norms)

The loss is minus the surrogate, ready for `.backward()`; metrics are detached scalars.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from torch import Tensor

from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.objectives import (  # noqa: F401  (registration)
    cispo,
    dppo,
    gmpo,
    grpo,
    gspo,
    gtpo,
    no_is,
    presets_grpo,
    tic_grpo,
)
from ticgrpo.core.objectives._common import without_padded_values
from ticgrpo.core.objectives.registry import OBJECTIVES, ObjectiveSpec, register_objective


def make_objective_config(name: str, overrides: dict[str, Any] | None = None) -> Any:
    """The config dataclass of objective `name` with the spec's defaults and `overrides`.

    Unknown keys and wrong types raise ValueError naming the key and what is allowed.
    """
    options_cls = OBJECTIVES.spec(name).options
    overrides = dict(overrides or {})
    fields = {f.name: f for f in dataclasses.fields(options_cls)}
    hints = typing.get_type_hints(options_cls)
    for key, value in overrides.items():
        if key not in fields:
            raise ValueError(
                f"unknown option {key!r} for objective {name!r}; allowed: {', '.join(sorted(fields))}"
            )
        overrides[key] = _coerce(f"{name}.{key}", value, hints[key])
    config = options_cls(**overrides)
    config.validate()
    return config


def compute_loss(
    name: str, batch: PolicyBatch, config: Any = None, norms: StepNormalizers | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Run objective `name`; `norms` default to the batch being the whole step.

    Every objective runs on `without_padded_values(batch)`: whatever the padded positions hold
    (inf, NaN), the loss, its gradient and the metrics are those of zeros there."""
    spec = OBJECTIVES.spec(name)
    if config is None:
        config = make_objective_config(name)
    if norms is None:
        norms = StepNormalizers.from_mask(batch.mask)
    return spec.loss(without_padded_values(batch), config, norms)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check a config value against its annotation (bool, int, float, str, Optional)."""
    allowed = _allowed_types(hint)
    if value is None:
        if type(None) in allowed:
            return None
        raise ValueError(f"{key} may not be null")
    if bool in allowed and isinstance(value, bool):
        return value
    if float in allowed and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if int in allowed and isinstance(value, int) and not isinstance(value, bool):
        return value
    if str in allowed and isinstance(value, str):
        return value
    names = " or ".join(t.__name__ if t is not type(None) else "null" for t in allowed)
    raise ValueError(f"{key} must be {names}, got {value!r}")


def _allowed_types(hint: Any) -> tuple[type, ...]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return tuple(typing.get_args(hint))
    return (hint,)


__all__ = ["OBJECTIVES", "ObjectiveSpec", "compute_loss", "make_objective_config", "register_objective"]
