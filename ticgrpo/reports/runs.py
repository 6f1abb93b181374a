"""Loading run folders for a report: their config, logs and the markers `ticgrpo compare` writes.

A run folder holds config.yaml, metrics.jsonl and eval.jsonl (what `ticgrpo train` writes),
plus `compare.json` (algorithm, seed) when `ticgrpo compare` made it; without that marker the
algorithm is the config's objective name. A run is complete when it has the done marker or
as many steps as its max_steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from ticgrpo.compare.plan import COMPARISON_FILE, DONE_MARKER, MARKER
from ticgrpo.config import TrainConfig
from ticgrpo.reports.io import read_json_object, read_jsonl


@cache
def config_defaults() -> TrainConfig:
    """What a config.yaml that leaves a key out means (older runs were written with fewer keys)."""
    return TrainConfig()


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _name_and_options(node: Any, legacy_options: Any) -> tuple[str | None, dict[str, Any]]:
    """`objective: {name: cispo, epsilon_high: 0.3}` or the older `objective: cispo` with a
    separate `objective_options:` mapping (run folders and docs/results written before the
    options were nested)."""
    if isinstance(node, dict):
        options = dict(node)
        name = options.pop("name", None)
        return (None if name is None else str(name)), options
    return (None if node is None else str(node)), dict(legacy_options or {})


def algorithm_summary(section: dict[str, Any]) -> dict[str, Any]:
    """objective, advantage, their options and μ, M of a run's `algorithm:` section (either form)."""
    objective, objective_options = _name_and_options(section.get("objective"), section.get("objective_options"))
    advantage, advantage_options = _name_and_options(section.get("advantage"), section.get("advantage_options"))
    return {"objective": objective, "objective_options": objective_options, "advantage": advantage,
            "advantage_options": advantage_options, "num_iterations": section.get("num_iterations"),
            "num_minibatches": section.get("num_minibatches")}


@dataclass
class RunData:
    algorithm: str
    seed: int
    run_dir: Path
    config: dict[str, Any]
    metrics: list[dict]
    evals: list[dict]
    spec: dict[str, Any] = field(default_factory=dict)
    done: dict[str, Any] | None = None

    @property
    def max_steps(self) -> int:
        return int(self.config.get("max_steps", config_defaults().max_steps) or 0)

    @property
    def last_step(self) -> int:
        return int(self.metrics[-1]["step"]) if self.metrics else 0

    @property
    def complete(self) -> bool:
        return self.done is not None or (bool(self.metrics) and self.last_step >= self.max_steps)

    def axes(self) -> dict[int, tuple[float, float]]:
        """step → (completions generated so far, training wall time so far)."""
        rollout, defaults = self.config.get("rollout") or {}, config_defaults().rollout
        prompts = int(rollout.get("prompts_per_step", defaults.prompts_per_step))
        generations = int(rollout.get("num_generations", defaults.num_generations))
        out, samples, seconds = {0: (0.0, 0.0)}, 0.0, 0.0
        for m in self.metrics:
            samples += float(m.get("groups_generated", prompts)) * generations
            seconds += float(m.get("time_step", 0.0))
            out[int(m["step"])] = (samples, seconds)
        return out

    def series(self, source: str, key: str, smooth: int = 1) -> dict[int, float]:
        """step → the logged value of `key` ("metrics" or "evals"); a trailing moving mean when smooth > 1."""
        records = self.metrics if source == "metrics" else self.evals
        pairs = [(int(r["step"]), float(r[key])) for r in records if finite(r.get(key))]
        if smooth > 1:
            values = [v for _, v in pairs]
            windows = [values[max(0, i - smooth + 1): i + 1] for i in range(len(values))]
            pairs = [(step, sum(window) / len(window)) for (step, _), window in zip(pairs, windows, strict=True)]
        return dict(pairs)

    @property
    def train_seconds(self) -> float:
        return sum(float(m.get("time_step", 0.0)) for m in self.metrics)

    @property
    def final_accuracy(self) -> float | None:
        values = [e["accuracy"] for e in self.evals if finite(e.get("accuracy"))]
        return float(values[-1]) if values else None


def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders under `paths`: a path that is a run folder, or every run folder below it."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{str(path)!r} does not exist")
        if (path / MARKER).is_file() or (path / "metrics.jsonl").is_file():
            found.append(path)
            continue
        below = sorted(p.parent for p in path.rglob(MARKER)) or sorted(
            p.parent for p in path.rglob("metrics.jsonl") if "checkpoints" not in p.parts
        )
        if not below:
            raise ValueError(f"{path}: no run folders (with {MARKER} or metrics.jsonl) found")
        found += below
    return list(dict.fromkeys(p.resolve() for p in found))


def load_run(path: str | Path) -> RunData:
    path = Path(path)
    config_path = path / "config.yaml"
    config = (yaml.safe_load(config_path.read_text()) or {}) if config_path.is_file() else {}
    marker = read_json_object(path / MARKER)
    objective = algorithm_summary(config.get("algorithm") or {})["objective"]
    algorithm = marker.get("algorithm") or objective or path.name
    seed = int(marker.get("seed", config.get("seed", config_defaults().seed)))
    done = read_json_object(path / DONE_MARKER) or None
    return RunData(str(algorithm), seed, path, config, read_jsonl(path / "metrics.jsonl"),
                   read_jsonl(path / "eval.jsonl"), marker.get("spec") or {}, done)


def load_runs(paths: Iterable[str | Path]) -> list[RunData]:
    """Every run folder under `paths`; two runs of one (algorithm, seed) are an error."""
    runs = [load_run(p) for p in find_run_dirs(paths)]
    seen: dict[tuple[str, int], Path] = {}
    for run in runs:
        key = (run.algorithm, run.seed)
        if key in seen:
            raise ValueError(f"two runs of {run.algorithm!r} seed {run.seed}: {seen[key]} and {run.run_dir}")
        seen[key] = run.run_dir
    return runs


def comparison_meta(runs: list[RunData], out_dir: Path) -> dict[str, Any]:
    """What `ticgrpo compare` recorded (comparison.json) in out_dir or above the run folders; {} if none."""
    candidates = [out_dir] + [p for r in runs for p in list(r.run_dir.parents)[:3]]
    for folder in dict.fromkeys(candidates):
        if (folder / COMPARISON_FILE).is_file():
            return read_json_object(folder / COMPARISON_FILE)
    return {}


def group(runs: list[RunData]) -> dict[str, list[RunData]]:
    """algorithm → its runs, by seed."""
    groups: dict[str, list[RunData]] = {}
    for run in runs:
        groups.setdefault(run.algorithm, []).append(run)
    return {name: sorted(rs, key=lambda r: r.seed) for name, rs in groups.items()}


__all__ = ["RunData", "algorithm_summary", "comparison_meta", "config_defaults", "find_run_dirs", "group",
           "load_run", "load_runs"]
