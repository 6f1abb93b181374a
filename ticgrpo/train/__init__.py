"""Training: `train(config) -> TrainResult` and the `ticgrpo train` command."""

from ticgrpo.train.trainer import Trainer, TrainResult, train

__all__ = ["TrainResult", "Trainer", "train"]
