"""Policy objectives (spec §4): pure tensor functions behind the `OBJECTIVES` registry.

    loss, metrics = compute_loss("tic_grpo", batch, make_objective_config("tic_grpo"), norms)

The loss is minus the surrogate, ready for `.backward()`; metrics are detached scalars.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.objectives._common import without_padded_values
from ticgrpo.core.objectives.registry import OBJECTIVES, ObjectiveSpec, register_objective
from ticgrpo.core.options import build_options


def _import_every_module() -> None:
    """Every module of this package registers its objectives when imported (`@register_objective`):
    a new objective is a new module here, with no list of modules to extend."""
    for module in sorted(info.name for info in pkgutil.iter_modules(__path__)):
        importlib.import_module(f"{__name__}.{module}")


_import_every_module()


def make_objective_config(name: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """The options of objective `name` (its spec's options class): its defaults and `overrides`.

    Validated by the class's field metadata; an unknown key, a wrong type or a value out of
    range raises ValueError, one line naming `<objective>.<key>` and what is allowed.
    """
    return build_options(OBJECTIVES.spec(name).options, overrides, "objective", name)


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


__all__ = [
    "OBJECTIVES",
    "ObjectiveSpec",
    "compute_loss",
    "make_objective_config",
    "register_objective",
]
