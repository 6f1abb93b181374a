"""Training: `train(config) -> TrainResult` and the `ticgrpo train` command.

The trainer (and with it torch and transformers) loads on first use of these names, so that
the light modules of this package (drafts' options, metrics, run folders) import quickly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ticgrpo.train.trainer import Trainer, TrainResult, train

__all__ = ["TrainResult", "Trainer", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("ticgrpo.train.trainer"), name)
    raise AttributeError(f"module 'ticgrpo.train' has no attribute {name!r}")
