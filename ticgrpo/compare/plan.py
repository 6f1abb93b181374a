"""Plan a comparison: every (algorithm, seed) pair on one base config, resolved and validated.

    plan = plan_comparison("configs/ablation.yaml", ["tic_grpo", "grpo"], [0, 1, 2], "runs/ablation")
    outcomes = run_plan(plan, parallel=2)   # ticgrpo.compare.execute

An *algorithm* name resolves, first match wins, to:
1. `compare.algorithms.<name>` in the base config,
2. an entry of `ticgrpo.config.algorithms.ALGORITHMS` (the presets, the TIC-GRPO component
   ablation, the lab's variants), or a registered objective with its defaults.

A resolved algorithm is a partial `algorithm:` section in the config's key names, the options
nested under their method (`objective: {name: tic_grpo, epsilon_high: null}`). Its `objective`
and `advantage` nodes *replace* the base config's whole nodes (options left out take the
method's defaults; an absent advantage is the objective's default); any other `algorithm.*` key
given overrides the base; `set` holds dotted overrides of other sections (`{optim.lr: 1e-5}`);
`add_rewards` appends reward specs; `description` is for the report. Every other setting comes
from the base config. `--set` overrides are applied after the algorithm, to every run. Each run
goes to `<out>/runs/<algorithm>/seed-<s>/` with its seed set.

Every combination's config is resolved and validated before anything runs. Resume: a run
folder holding `compare_done.json` (written after training finished) is skipped; a folder with
`compare.json` but no done marker continues from its newest checkpoint (`train --resume`) or
restarts when it has none. A folder made from a different config is an error, never overwritten.
"""

from __future__ import annotations

import copy
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
from ticgrpo.config.algorithms import ALGORITHMS, algorithm_names, get_algorithm, plain_settings
from ticgrpo.config.loading import flow_yaml
from ticgrpo.config.migrations import check_removed_keys, upgrade_saved_config
from ticgrpo.errors import unknown_choice, unknown_key

MARKER = "compare.json"  # identity of a run folder: algorithm, seed, resolved algorithm spec
DONE_MARKER = "compare_done.json"  # written after the run finished
COMPARISON_FILE = "comparison.json"  # at the top of the output folder: what was asked

# the algorithm's method nodes replace the base config's whole nodes (options never leak)
_REPLACED = ("objective", "advantage")
_SPEC_EXTRA = ("description", "set", "add_rewards")
# keys of configs written before the options nested under their method (saved run folders, old specs)
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
    return list(dict.fromkeys([*(custom or {}), *algorithm_names()]))


def resolve_algorithm(name: str, custom: dict[str, Any] | None = None) -> dict[str, Any]:
    """The algorithm definition of `name` (see the module docstring for the lookup order)."""
    if not _NAME.match(name):
        raise ConfigError(f"algorithm name {name!r} must be letters, digits and _.+- (it names a folder)")
    custom = custom or {}
    if name in custom:
        if not isinstance(custom[name], dict):
            raise ConfigError(f"compare.algorithms.{name} must be a mapping, got {type(custom[name]).__name__}")
        spec, source = copy.deepcopy(custom[name]), "config"
    elif name in algorithm_names():
        algorithm = get_algorithm(name)
        spec = {"description": algorithm.description, **plain_settings(algorithm.settings)}
        source = "table" if name in ALGORITHMS else "objective"
    else:
        raise ConfigError(unknown_choice("algorithm", name, known_algorithms(custom)))
    _check_keys(name, spec)
    spec["source"] = source
    return spec


def _check_keys(name: str, spec: dict[str, Any]) -> None:
    allowed = set(AlgorithmConfig.model_fields) | set(_SPEC_EXTRA)
    check_removed_keys(spec, "algorithm", f"compare.algorithms.{name}")
    for key in spec:
        if key not in allowed:
            raise ConfigError(f"algorithm {name!r}: {unknown_key(str(key), sorted(allowed))}")
    if "objective" not in spec and "preset" not in spec:
        raise ConfigError(f"algorithm {name!r} must name an objective (compare.algorithms.{name}.objective)")


def apply_algorithm(raw: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """A copy of the raw base config with the algorithm definition applied."""
    raw = copy.deepcopy(raw)
    section = raw.get("algorithm") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"algorithm must be a mapping, got {type(section).__name__}")
    section = dict(section)
    section.pop("preset", None)  # the base config's preset must not leak into other algorithms
    for key in _REPLACED:  # {preset: name, ...} without an objective: the preset fills them
        section[key] = copy.deepcopy(spec.get(key)) if "objective" in spec else None
    for key, value in spec.items():
        if key not in (*_SPEC_EXTRA, *_REPLACED, "source"):
            section[key] = copy.deepcopy(value)
    if spec.get("add_rewards"):
        rewards = list(section.get("rewards") or [{"name": "math_correctness", "weight": 1.0}])
        present = {r.get("name") for r in rewards if isinstance(r, dict)}
        rewards += [copy.deepcopy(r) for r in spec["add_rewards"] if r.get("name") not in present]
        section["rewards"] = rewards
    raw["algorithm"] = section
    extra = spec.get("set") or {}
    items = [f"{k}={flow_yaml(v)}" for k, v in extra.items()] if isinstance(extra, dict) else list(extra)
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
            raise ConfigError(unknown_key(f"compare.{key}", _COMPARE_KEYS))
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
        return load_config(upgrade_saved_config(saved), [], str(run_dir)).to_dict()
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
