"""The run folder: one run writes it at a time, a fresh start never takes over an earlier run's
outputs, a resume continues only the run the folder holds, and a finished run says so.

- **Lock.** The process that writes the folder holds an exclusive `fcntl.flock` on
  `<run>/.ticgrpo.lock` (which also holds its pid) for the whole run; the kernel drops it when
  the process ends, even by SIGKILL.
- **Fresh start.** A folder holding any of `RUN_OUTPUTS` is refused unless the start resumes it
  or was given `overwrite`; `overwrite` deletes exactly those outputs, and only once the new run
  has loaded its config, data, rewards and model (`clear_outputs`). Other files are left alone.
- **Resume.** The saved config.yaml is compared with the new config: a difference outside
  `RESUME_NEUTRAL_KEYS` is refused unless `allow_config_change`, and is then appended to
  config_changes.jsonl. `model.name` and `model.lora` never change on resume (the checkpoint
  holds that model's weights).
- **Finished.** finished.json is written (atomically, fsync'ed) after the last evaluation and the
  final save; it holds the step, the evaluations and the line count of every log, so that a resume
  of a finished run changes nothing and an extension (a larger max_steps) keeps its logs whole.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from ticgrpo.config import ConfigError, TrainConfig, load_saved_config
from ticgrpo.train.checkpoint import fsync_dir
from ticgrpo.train.logging import LOG_FILES

LOCK_FILE = ".ticgrpo.lock"
FINISHED_FILE = "finished.json"
CONFIG_CHANGES_FILE = "config_changes.jsonl"
SANDBOX_FILE = "sandbox.json"  # the code sandbox's isolation level, limits and outcome counts (ticgrpo.rewards.sandbox)
# What a run writes into its folder: present, the folder holds a run.
RUN_OUTPUTS = ("config.yaml", *LOG_FILES, FINISHED_FILE, CONFIG_CHANGES_FILE, SANDBOX_FILE, "checkpoints", "final",
               "tensorboard", "curves.png")
# Keys (or sections, ending in ".") a resume may change freely: none alters the weights' trajectory.
# Evaluation runs under a forked RNG; a new max_steps re-plans the LR schedule from there on.
# `threads` changes only the order of float reductions (resuming on another machine must not be refused).
RESUME_NEUTRAL_KEYS = ("output_dir", "max_steps", "threads", "logging.", "eval.", "data.eval", "checkpoint.")
# Keys a resume never changes, even with allow_config_change.
RESUME_FIXED_KEYS = ("model.name", "model.lora")


class RunFolderError(ValueError):
    """A run folder that this start may not use (a usage error: exit 2)."""


@dataclass
class ConfigChange:
    key: str
    old: Any
    new: Any
    neutral: bool  # in RESUME_NEUTRAL_KEYS: allowed without allow_config_change


@dataclass
class ResumePlan:
    """What `check_start` found: for a resume, the saved config's changes and the finished record."""

    resume: bool
    overwrite: bool
    changes: list[ConfigChange] = field(default_factory=list)  # every key that differs, neutral ones too
    finished: dict | None = None  # finished.json of the run in the folder, if it finished


class RunFolderLock:
    """An exclusive lock on a run folder, held until `release` (or the process ends)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._file: TextIO | None = None

    def acquire(self) -> RunFolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        lock_file = open(self.folder / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the whole run
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            holder = lock_file.read().strip()
            lock_file.close()
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise RunFolderError(f"{self.folder} is in use by another ticgrpo run{who}; wait for it to end or "
                                 f"choose another --output-dir") from None
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(f"{os.getpid()}\n")
        lock_file.flush()
        self._file = lock_file
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def outputs_present(folder: str | Path) -> list[str]:
    folder = Path(folder)
    return [name for name in RUN_OUTPUTS if (folder / name).exists()]


def check_start(folder: str | Path, config: TrainConfig, resume: bool, overwrite: bool = False,
                allow_config_change: bool = False) -> ResumePlan:
    """Raise RunFolderError unless this start may use `folder`; reads, never writes."""
    folder = Path(folder)
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite exclude each other: --resume continues the run in "
                             f"{folder}, --overwrite replaces it")
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"output folder {folder} is a file; choose another --output-dir")
    if not resume:
        present = outputs_present(folder)
        if present and not overwrite:
            raise RunFolderError(f"{folder} already holds a run ({', '.join(present)}); pass --resume to continue "
                                 f"it or --overwrite to replace it (deletes those outputs)")
        return ResumePlan(resume=False, overwrite=bool(present))
    changes = config_changes(folder, config)
    fixed = [c for c in changes if c.key in RESUME_FIXED_KEYS or c.key.startswith("model.lora.")]
    if fixed:
        raise RunFolderError(f"--resume: {folder} holds a run of another model ({_describe(fixed)}); a checkpoint "
                             f"only resumes into its own model: choose another --output-dir")
    trajectory = [c for c in changes if not c.neutral]
    if trajectory and not allow_config_change:
        raise RunFolderError(f"--resume: the config differs from {folder / 'config.yaml'} in {_describe(trajectory)}; "
                             f"these keys change the run's trajectory: resume with the saved values, or pass "
                             f"--allow-config-change to use the new ones (recorded in {CONFIG_CHANGES_FILE})")
    return ResumePlan(resume=True, overwrite=False, changes=changes, finished=read_finished(folder))


def config_changes(folder: Path, config: TrainConfig) -> list[ConfigChange]:
    """The keys where `config` differs from the folder's config.yaml."""
    saved_path = folder / "config.yaml"
    if not saved_path.is_file():
        return []  # nothing to compare with (the checkpoint check reports a folder that holds no run)
    try:
        saved = load_saved_config(saved_path).to_dict()
    except (ConfigError, FileNotFoundError):  # a config from another version of ticgrpo: compare as written
        saved = yaml.safe_load(saved_path.read_text()) or {}
    old, new = _flatten(saved), _flatten(config.to_dict())
    keys = sorted(set(old) | set(new))
    return [ConfigChange(k, old.get(k), new.get(k), _neutral(k)) for k in keys if old.get(k) != new.get(k)]


def clear_outputs(folder: str | Path) -> None:
    """`overwrite`: delete the earlier run's outputs (checkpoints first, so that a crash midway never
    leaves logs that a resume would continue from)."""
    folder = Path(folder)
    for name in ("checkpoints", FINISHED_FILE, *[n for n in RUN_OUTPUTS if n not in ("checkpoints", FINISHED_FILE)]):
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def record_config_changes(folder: str | Path, step: int, changes: list[ConfigChange]) -> None:
    record = {"step": step, "changes": {c.key: {"old": c.old, "new": c.new, "neutral": c.neutral}
                                        for c in changes}}
    with open(Path(folder) / CONFIG_CHANGES_FILE, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_finished(folder: str | Path) -> dict | None:
    path = Path(folder) / FINISHED_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        int(record["step"])
    except (ValueError, KeyError, TypeError):
        return None  # torn: written atomically, so only by hand; treat the run as unfinished
    return record


def write_finished(folder: str | Path, record: dict) -> None:
    """finished.json, atomically."""
    write_json_atomically(Path(folder) / FINISHED_FILE, record)


def write_json_atomically(path: Path, record: Any) -> None:
    """`path` as JSON: a temp file, fsync, rename, fsync of the folder (never a torn file)."""
    folder = path.parent
    tmp = folder / f".{path.name}.tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(record, indent=1, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(folder)


def _neutral(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUME_NEUTRAL_KEYS)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def _describe(changes: list[ConfigChange], limit: int = 6) -> str:
    shown = ", ".join(f"{c.key} ({c.old!r} -> {c.new!r})" for c in changes[:limit])
    return shown + (f" and {len(changes) - limit} more" if len(changes) > limit else "")
