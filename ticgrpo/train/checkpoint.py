"""Checkpoints: `checkpoints/step-XXXX/` holding everything needed to continue exactly.

Contents: model.pt (state dict), optimizer.pt, scheduler.pt, rng.pt (torch CPU/CUDA,
numpy, python), state.json (step, data position, anything else the trainer adds) and
manifest.json (every other file's name, size and sha256), written last.

Crash safety: a checkpoint is written into a temporary folder, every file and the folder
are fsync'ed, the folder is renamed to `step-XXXX` and the parent folder is fsync'ed. A
crash therefore leaves either a complete checkpoint or a `.step-XXXX.tmp-*` folder that is
ignored (and swept up by the next save). `latest_valid_checkpoint` checks the manifest
(sizes, then sha256) of the newest checkpoint and falls back to the previous complete one,
with a one-line warning on stderr, so a torn or corrupt checkpoint is never loaded.

Test hook: `TICGRPO_TEST_CRASH_AT=<point>[:<n>]` makes the process SIGKILL itself the n-th
time (default 1st) it reaches the named point (see `crash_point`); used only by
tests/test_crash_resume.py to simulate power loss / OOM kills at exact places.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

_STEP_DIR = re.compile(r"^step-(\d+)$")
MANIFEST = "manifest.json"
CRASH_ENV = "TICGRPO_TEST_CRASH_AT"
_crash_counts: dict[str, int] = {}


class CheckpointError(ValueError):
    """A checkpoint that fails its manifest check (torn, truncated or corrupt)."""


def crash_point(name: str) -> None:
    """Test hook: SIGKILL this process at the n-th arrival at point `name` when the environment
    variable TICGRPO_TEST_CRASH_AT is `name` or `name:n`. A no-op (one dict lookup) otherwise."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _crash_counts[name] = _crash_counts.get(name, 0) + 1
    if _crash_counts[name] == int(nth or 1):
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    keep_last: int = 0,
) -> Path:
    """Write checkpoints/step-{step:04d} atomically (temp folder + fsync + rename) with a
    manifest; prune to the `keep_last` newest complete checkpoints (0 = keep all)."""
    root = checkpoint_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step-*.tmp-*"):  # left by a crash during an earlier save
        shutil.rmtree(stale, ignore_errors=True)
    target = root / f"step-{step:04d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
    try:
        torch.save(model.state_dict(), tmp / "model.pt")
        crash_point("checkpoint_mid_write")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=1))
        files = {}
        for path in sorted(tmp.iterdir()):
            _fsync_file(path)
            files[path.name] = {"size": path.stat().st_size, "sha256": _sha256(path)}
        (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1))
        _fsync_file(tmp / MANIFEST)
        _fsync_dir(tmp)
        crash_point("checkpoint_before_rename")
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
        _fsync_dir(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    crash_point("checkpoint_after_rename")
    if keep_last > 0:
        for old in list_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Renamed (complete-looking) checkpoints, oldest first; `verify_checkpoint` checks contents."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and ((child / MANIFEST).is_file() or (child / "state.json").is_file()):
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def verify_checkpoint(path: str | Path, hashes: bool = True) -> None:
    """Raise CheckpointError unless every file listed in the manifest exists with its size
    (and, with `hashes`, its sha256). A checkpoint written before manifests existed (state.json
    but no manifest.json) only has its files' presence checked."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        missing = [n for n in ("model.pt", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json")
                   if not (path / n).is_file()]
        if missing:
            raise CheckpointError(f"{path}: no {MANIFEST} and missing {', '.join(missing)}")
        return
    try:
        manifest = json.loads(manifest_path.read_text())
        files = dict(manifest["files"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: unreadable {MANIFEST} ({exc})") from None
    for name, meta in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        if file.stat().st_size != int(meta["size"]):
            raise CheckpointError(f"{path}: {name} has {file.stat().st_size} bytes, the manifest says {meta['size']}")
        if hashes and _sha256(file) != meta["sha256"]:
            raise CheckpointError(f"{path}: {name} does not match its sha256 in the manifest")


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest checkpoint that passes `verify_checkpoint`; for each newer one that fails, a
    one-line warning goes to stderr and the previous one is tried."""
    for path in reversed(list_checkpoints(output_dir)):
        try:
            verify_checkpoint(path)
        except CheckpointError as exc:
            print(f"warning: skipping corrupt checkpoint: {exc}", file=sys.stderr)
            continue
        return path
    return None


def load_checkpoint(
    path: str | Path, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any, verify: bool = True
) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG states; returns state.json's contents.
    Raises CheckpointError (before touching any state) when the manifest check fails."""
    path = Path(path)
    if verify:
        verify_checkpoint(path)
    device = next(model.parameters()).device
    model.load_state_dict(torch.load(path / "model.pt", map_location=device, weights_only=True))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    return json.loads((path / "state.json").read_text())
