"""The config schema: the generated key reference is current, and on every shipped config
`--set algorithm.objective=X` gives objective X with its own defaults (nothing of the file's
objective leaks), for every registered X."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ticgrpo.compare.plan import load_base
from ticgrpo.config import TrainConfig, load_config
from ticgrpo.config.docs import config_reference
from ticgrpo.core.advantages import make_advantage_options
from ticgrpo.core.objectives import OBJECTIVES, make_objective_config

ROOT = Path(__file__).resolve().parents[1]


def _training_configs() -> list[Path]:
    """configs/*.yaml and examples/**/*.yaml that are ticgrpo training configs (not accelerate's or verl's)."""
    keys = set(TrainConfig.model_fields) | {"compare"}
    paths = sorted([*(ROOT / "configs").glob("*.yaml"), *(ROOT / "examples").rglob("*.yaml")])
    return [p for p in paths if set(yaml.safe_load(p.read_text()) or {}) <= keys]


SHIPPED = _training_configs()


def test_the_shipped_training_configs_are_found():
    names = {str(p.relative_to(ROOT)) for p in SHIPPED}
    assert {"configs/quickstart.yaml", "configs/tiny.yaml", "configs/ablation.yaml", "examples/custom_task/config.yaml",
            "examples/paper/tic_grpo_qwen3_8b_dapo_math.yaml"} <= names, names


def test_docs_config_md_is_generated_from_the_schema():
    written = (ROOT / "docs" / "config.md").read_text()
    assert written == config_reference(), "docs/config.md is stale: python -m ticgrpo.config.docs > docs/config.md"
    printed = subprocess.run([sys.executable, "-m", "ticgrpo.config.docs"], capture_output=True, text=True,
                             check=True, cwd=ROOT).stdout
    assert printed == written


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(ROOT)) for p in SHIPPED])
@pytest.mark.parametrize("objective", OBJECTIVES.names())
def test_objective_override_gives_the_objectives_own_defaults(path, objective):
    raw, _ = load_base(path)  # a comparison config: its base config with its own keys merged in
    micro, group = raw.get("algorithm", {}).get("micro_batch_size"), raw.get("rollout", {}).get("num_generations", 8)
    if OBJECTIVES.spec(objective).couples_group and micro is not None and micro % group:
        # a group-coupled loss (gtpo, nthr) must see whole groups: the config refuses the split
        with pytest.raises(ValueError, match=rf"micro_batch_size={micro} splits groups .* {objective} couples"):
            load_config(raw, [f"algorithm.objective={objective}"])
        return
    config = load_config(raw, [f"algorithm.objective={objective}"])
    assert config.algorithm.objective.name == objective
    assert config.algorithm.objective.options == make_objective_config(objective)
    advantage = config.algorithm.advantage
    if advantage.from_objective:
        assert advantage.name == OBJECTIVES.spec(objective).default_advantage
    assert advantage.options == make_advantage_options(advantage.name, advantage.options)
    assert load_config(config.to_dict()) == config  # the written form reloads to itself
