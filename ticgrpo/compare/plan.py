"""Plan a comparison: every (algorithm, seed) pair on one base config, resolved and validated.

    plan = plan_comparison("configs/ablation.yaml", ["tic_grpo", "grpo"], [0, 1, 2], "runs/ablation")
    outcomes = run_plan(plan, parallel=2)   # ticgrpo.compare.execute

An *algorithm* name resolves, first match wins, to:
1. `compare.algorithms.<name>` in the base config,
2. a built-in named ablation (`BUILTIN_ALGORITHMS`: the TIC-GRPO component ablation),
3. a preset of `ticgrpo.presets` (objective + advantage + options + trainer mechanisms),
4. an objective name of `ticgrpo.core.objectives` (its default advantage and options).

A resolved algorithm is a dict of `algorithm.*` config keys. `objective`, `advantage`,
`objective_options` and `advantage_options` *replace* the base config's values (options left
out take the objective's defaults); any other `algorithm.*` key given overrides the base; `set`
holds dotted overrides of other sections (`{optim.lr: 1e-5}`); `add_rewards` appends reward
specs. Every other setting comes from the base config. `--set` overrides are applied after the
algorithm, to every run. Each run goes to `<out>/runs/<algorithm>/seed-<s>/` with its seed set.

Every combination's config is resolved and validated before anything runs. Resume: a run
folder holding `compare_done.json` (written after training finished) is skipped; a folder with
`compare.json` but no done marker continues from its newest checkpoint (`train --resume`) or
restarts when it has none. A folder made from a different config is an error, never overwritten.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ticgrpo.config import (
    AlgorithmConfig,
    ConfigError,
    TrainConfig,
    apply_override,
    load_config,
    read_yaml_mapping,
)

MARKER = "compare.json"  # identity of a run folder: algorithm, seed, resolved algorithm spec
DONE_MARKER = "compare_done.json"  # written after the run finished
COMPARISON_FILE = "comparison.json"  # at the top of the output folder: what was asked

# The paper's component ablation (spec: trajectory ratio, upper-only clip, length-corrected
# advantage). ε_high = 0.2 is ticgrpo's choice (the paper's value is not public).
BUILTIN_ALGORITHMS: dict[str, dict[str, Any]] = {
    "tic_ratio_only": {
        "description": "trajectory ratio only: no clip, group_norm advantage",
        "objective": "tic_grpo",
        "advantage": "group_norm",
        "objective_options": {"epsilon_high": None},
    },
    "tic_ratio_lenadv": {
        "description": "trajectory ratio + length-corrected advantage, no clip",
        "objective": "tic_grpo",
        "advantage": "length_corrected",
        "objective_options": {"epsilon_high": None},
    },
    "tic_ratio_clip": {
        "description": "trajectory ratio + upper-only clip (ε_high 0.2), group_norm advantage",
        "objective": "tic_grpo",
        "advantage": "group_norm",
        "objective_options": {"epsilon_high": 0.2},
    },
    "tic_grpo": {
        "description": "full TIC-GRPO: trajectory ratio + upper-only clip (ε_high 0.2) + length-corrected advantage",
        "objective": "tic_grpo",
        "advantage": "length_corrected",
        "objective_options": {"epsilon_high": 0.2},
    },
}

_REPLACED = ("advantage", "objective_options", "advantage_options")
_SPEC_EXTRA = ("description", "set", "add_rewards")
_COMPARE_KEYS = ("base", "algorithms", "run", "seeds")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
# sections of the resolved config that do not change results (ignored when checking a run folder)
_NEUTRAL = ("output_dir", "logging")


@dataclass
class RunSpec:
    algorithm: str
    seed: int
    run_dir: Path
    config: TrainConfig
    spec: dict[str, Any]  # the resolved algorithm definition
    status: str = "new"  # new | done | resume | restart

    @property
    def label(self) -> str:
        return f"{self.algorithm} seed {self.seed}"


@dataclass
class ComparisonPlan:
    out_dir: Path
    base_config: str | None
    algorithms: list[str]
    seeds: list[int]
    overrides: list[str]
    runs: list[RunSpec] = field(default_factory=list)
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class RunOutcome:
    run: RunSpec
    ok: bool
    skipped: bool = False
    wall_s: float = 0.0
    error: str = ""


# ---------------------------------------------------------------------- resolving algorithms


def parse_list(text: str | list | tuple | None, what: str) -> list[str]:
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else [str(x) for x in text]
    items = [x.strip() for x in items if str(x).strip()]
    if len(set(items)) != len(items):
        raise ConfigError(f"{what} lists a name twice: {items}")
    return items


def parse_seeds(text: str | list | tuple) -> list[int]:
    seeds = []
    for item in parse_list(text if isinstance(text, str) else [str(x) for x in text], "--seeds"):
        try:
            seeds.append(int(item))
        except ValueError:
            raise ConfigError(f"--seeds: {item!r} is not an integer (expected e.g. 0,1,2)") from None
    if not seeds:
        raise ConfigError("--seeds: expected at least one seed, e.g. 0,1,2")
    return seeds


def known_algorithms(custom: dict[str, Any] | None = None) -> list[str]:
    from ticgrpo.core.objectives import OBJECTIVES
    from ticgrpo.presets import PRESETS

    names = list(custom or {}) + list(BUILTIN_ALGORITHMS) + list(PRESETS) + list(OBJECTIVES.names())
    return list(dict.fromkeys(names))


def resolve_algorithm(name: str, custom: dict[str, Any] | None = None) -> dict[str, Any]:
    """The algorithm definition of `name` (see the module docstring for the lookup order)."""
    from ticgrpo.core.objectives import OBJECTIVES
    from ticgrpo.presets import PRESETS

    if not _NAME.match(name):
        raise ConfigError(f"algorithm name {name!r} must be letters, digits and _.+- (it names a folder)")
    custom = custom or {}
    if name in custom:
        spec = custom[name]
        if not isinstance(spec, dict):
            raise ConfigError(f"compare.algorithms.{name} must be a mapping, got {type(spec).__name__}")
        spec = copy.deepcopy(spec)
        source = "config"
    elif name in BUILTIN_ALGORITHMS:
        spec, source = copy.deepcopy(BUILTIN_ALGORITHMS[name]), "builtin"
    elif name in PRESETS:
        spec, source = _preset_spec(name), "preset"
    elif name in OBJECTIVES.names():
        spec, source = {"objective": name}, "objective"
    else:
        choices = known_algorithms(custom)
        close = difflib.get_close_matches(name, choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown algorithm {name!r}{hint}; choose one of: {', '.join(choices)}")
    allowed = {f.name for f in dataclasses.fields(AlgorithmConfig)} | set(_SPEC_EXTRA)
    for key in spec:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"algorithm {name!r}: unknown key {key!r}{hint} (allowed: {', '.join(sorted(allowed))})")
    if "objective" not in spec and "preset" not in spec:
        raise ConfigError(f"algorithm {name!r} must name an objective (compare.algorithms.{name}.objective)")
    spec["source"] = source
    return spec


def _preset_spec(name: str) -> dict[str, Any]:
    from ticgrpo.presets import get_preset

    preset = get_preset(name)
    spec: dict[str, Any] = {
        "description": f"preset {name!r}",
        "objective": preset.objective,
        "advantage": preset.advantage,
        "objective_options": dict(preset.objective_options),
        "advantage_options": dict(preset.advantage_options),
    }
    trainer = dict(preset.trainer)
    fields = {f.name for f in dataclasses.fields(AlgorithmConfig)}
    if trainer["dynamic_sampling"]:
        spec["dynamic_sampling"] = True
    if trainer["overlong_filter"]:
        spec["mask_truncated"] = True
    if trainer["overlong_reward"]:
        if "overlong_reward" in fields:
            spec["overlong_reward"] = True
        else:
            spec["add_rewards"] = [{"name": "overlong_soft", "weight": 1.0}]
    if trainer["espo_delta"] is not None:
        if "espo_delta" not in fields:
            raise ConfigError(f"preset {name!r} needs espo_delta, which this trainer does not implement")
        spec["espo_delta"] = trainer["espo_delta"]
    return spec


def apply_algorithm(raw: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """A copy of the raw base config with the algorithm definition applied."""
    raw = copy.deepcopy(raw)
    section = raw.get("algorithm") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"algorithm must be a mapping, got {type(section).__name__}")
    section = dict(section)
    section.pop("preset", None)  # the base config's preset must not leak into other algorithms
    if "objective" in spec:
        section["objective"] = spec["objective"]
        section["advantage"] = spec.get("advantage")
        section["objective_options"] = copy.deepcopy(spec.get("objective_options") or {})
        section["advantage_options"] = copy.deepcopy(spec.get("advantage_options") or {})
    else:  # {preset: name, ...}: the trainer's preset fills what the spec leaves out
        for key in ("objective", *_REPLACED):
            section.pop(key, None)
    for key, value in spec.items():
        if key in _SPEC_EXTRA or key == "source" or ("objective" in spec and key in ("objective", *_REPLACED)):
            continue
        section[key] = copy.deepcopy(value)
    if spec.get("add_rewards"):
        rewards = list(section.get("rewards") or [{"name": "math_correctness", "weight": 1.0}])
        present = {r.get("name") for r in rewards if isinstance(r, dict)}
        rewards += [copy.deepcopy(r) for r in spec["add_rewards"] if r.get("name") not in present]
        section["rewards"] = rewards
    raw["algorithm"] = section
    extra = spec.get("set") or {}
    items = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
             for k, v in extra.items()] if isinstance(extra, dict) else list(extra)
    for item in items:
        apply_override(raw, item)
    return raw


# ---------------------------------------------------------------------- planning


def load_base(source: str | Path | dict | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(raw base config without its `compare` section, the `compare` section)."""
    if isinstance(source, dict):
        raw = copy.deepcopy(source)
    elif source is None:
        raw = {}
    else:
        raw = read_yaml_mapping(source)
    section = raw.pop("compare", None) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"compare must be a mapping, got {type(section).__name__}")
    for key in section:
        if key not in _COMPARE_KEYS:
            close = difflib.get_close_matches(str(key), _COMPARE_KEYS, n=1)
            hint = f"; did you mean 'compare.{close[0]}'?" if close else ""
            raise ConfigError(f"unknown key 'compare.{key}'{hint} (allowed: {', '.join(_COMPARE_KEYS)})")
    if not isinstance(section.get("algorithms") or {}, dict):
        raise ConfigError("compare.algorithms must be a mapping {name: {objective: ..., advantage: ...}}")
    reference = section.pop("base", None)
    if reference is not None:
        # compare.base: another config (path relative to this file) that this one's keys refine
        if not isinstance(reference, str) or isinstance(source, dict) or source is None:
            raise ConfigError("compare.base must be a config path (relative to the config file)")
        parent_raw, parent_section = load_base(Path(source).parent / reference)
        raw = _merge(parent_raw, raw)
        section = _merge(parent_section, section)
    return raw, section


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else in `over` replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def plan_comparison(
    base: str | Path | dict | None,
    algorithms: list[str] | str | None,
    seeds: list[int] | str | None,
    out_dir: str | Path,
    overrides: list[str] | None = None,
) -> ComparisonPlan:
    """Resolve and validate every (algorithm, seed) config and classify each run folder; runs nothing."""
    raw, section = load_base(base)
    custom = section.get("algorithms") or {}
    names = parse_list(algorithms if algorithms is not None else section.get("run"), "--algorithms")
    if not names:
        raise ConfigError("no algorithms: pass --algorithms a,b,... (or list them under compare.run)")
    seed_list = parse_seeds(seeds if seeds is not None else section.get("seeds", [0, 1, 2]))
    overrides = list(overrides or [])
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key in ("algorithm.objective", "algorithm.advantage", "algorithm.preset", "seed", "output_dir"):
            raise ConfigError(f"--set {key} would make every run the same; the comparison sets it per run")
    out_dir = Path(out_dir)
    plan = ComparisonPlan(out_dir, None if isinstance(base, dict) or base is None else str(base), names,
                          seed_list, overrides)
    for name in names:
        plan.specs[name] = resolve_algorithm(name, custom)
    # Seed-major order: an interrupted comparison leaves whole seeds (every algorithm) finished.
    for seed in seed_list:
        for name, spec in plan.specs.items():
            run_dir = out_dir / "runs" / name / f"seed-{seed}"
            algo_raw = apply_algorithm(raw, spec)
            algo_raw["seed"] = seed
            try:
                config = load_config(algo_raw, overrides, str(run_dir))
            except ConfigError as exc:
                raise ConfigError(f"algorithm {name!r} (seed {seed}): {exc}") from None
            run = RunSpec(name, seed, run_dir, config, spec)
            run.status = _folder_status(run)
            plan.runs.append(run)
    return plan


def _with_defaults(saved: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """A saved config with this version's defaults filled in, so that a key added to ticgrpo
    since that run (at its default) is not a difference. Unreadable configs stay as saved."""
    try:
        return load_config(saved, [], str(run_dir)).to_dict()
    except ConfigError:
        return saved


def _fingerprint(config_dict: dict[str, Any]) -> dict[str, Any]:
    data = yaml.safe_load(yaml.safe_dump(config_dict, sort_keys=True))
    return {k: v for k, v in data.items() if k not in _NEUTRAL}


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            out += _differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _folder_status(run: RunSpec) -> str:
    from ticgrpo.train.checkpoint import latest_checkpoint

    marker = run.run_dir / MARKER
    if not marker.is_file():
        if run.run_dir.is_dir() and any(run.run_dir.iterdir()):
            raise ConfigError(f"{run.run_dir} exists and is not a comparison run folder; choose another --out")
        return "new"
    try:
        identity = json.loads(marker.read_text())
    except json.JSONDecodeError:
        identity = {}
    if identity.get("algorithm") != run.algorithm or identity.get("seed") != run.seed:
        raise ConfigError(f"{run.run_dir} holds {identity.get('algorithm')!r} seed {identity.get('seed')!r}, "
                          f"not {run.algorithm!r} seed {run.seed}; choose another --out")
    saved = run.run_dir / "config.yaml"
    if saved.is_file():
        old = _fingerprint(_with_defaults(yaml.safe_load(saved.read_text()) or {}, run.run_dir))
        new = _fingerprint(run.config.to_dict())
        diff = _differences(old, new)
        if diff:
            raise ConfigError(f"{run.run_dir} was run with a different config (differs in: {', '.join(diff[:6])}); "
                              f"delete that folder or choose another --out")
    if (run.run_dir / DONE_MARKER).is_file():
        return "done"
    return "resume" if latest_checkpoint(run.run_dir) is not None else "restart"
