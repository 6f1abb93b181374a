"""Training configuration: the schema (`schema.py`, pydantic models), the loader (`loading.py`:
YAML, dotted overrides, presets, one-line errors), the ALGORITHMS table (`algorithms.py`) and
the keys that earlier versions wrote (`migrations.py`).

    config = load_config("configs/quickstart.yaml", overrides=["algorithm.objective=grpo"])

Everything is checked before any model or dataset is loaded: unknown keys (with the closest
valid key suggested), wrong types, values out of range, impossible combinations and unknown
registry names all raise `ConfigError` (a ValueError) whose one-line message names the key and
the allowed values. Every key, its default, range and description: docs/config.md (generated
by `python -m ticgrpo.config.docs`).
"""

from ticgrpo.config.loading import (
    DuplicateKeyError,
    apply_override,
    apply_preset,
    config_to_yaml,
    load_config,
    load_saved_config,
    load_yaml,
    parse_override,
    read_yaml_mapping,
)
from ticgrpo.config.schema import (
    AdvantageChoice,
    AlgorithmConfig,
    CheckpointConfig,
    ConfigError,
    DataConfig,
    EvalConfig,
    LoggingConfig,
    ModelConfig,
    ObjectiveChoice,
    OptimConfig,
    RolloutConfig,
    TrainConfig,
    WeightedReward,
    check_output_dir,
)

__all__ = [
    "AdvantageChoice",
    "AlgorithmConfig",
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "DuplicateKeyError",
    "EvalConfig",
    "LoggingConfig",
    "ModelConfig",
    "ObjectiveChoice",
    "OptimConfig",
    "RolloutConfig",
    "TrainConfig",
    "WeightedReward",
    "apply_override",
    "apply_preset",
    "check_output_dir",
    "config_to_yaml",
    "load_config",
    "load_saved_config",
    "load_yaml",
    "parse_override",
    "read_yaml_mapping",
]
