"""Checkpoints: `checkpoints/step-XXXX/` holding everything needed to continue exactly.

Contents (format 2): model.safetensors, optimizer.pt, scheduler.pt, rng.pt (torch CPU/CUDA,
numpy, python), state.json (step, data position, anything else the trainer adds), source.pt
when the batch source holds something a resume needs (a lagged run's queued batches, one state
per process; ticgrpo.train.sources) and manifest.json (every other file's name, size and
sha256, and what model.safetensors holds), written last. Every file loads with
`torch.load(weights_only=True)` or safetensors: no pickle in a checkpoint runs code.

model.safetensors holds the weights training can change: the trainable parameters and the
buffers. Frozen parameters (a LoRA run's base model) are not saved: they are whatever the
config loads, and the manifest records their count so that a checkpoint loaded into another
base model is refused. A LoRA checkpoint therefore costs the adapter's bytes, not the model's.
Tied parameters (e.g. lm_head tied to the embeddings) are stored once; the manifest names the
aliases. Checkpoints of format 1 (model.pt, pickled rng.pt) still load.

Weights are checked before anything is written: a model with a non-finite trainable weight is
never saved (NonFiniteWeightsError, exit 3), so every format-2 checkpoint is finite (the
manifest says so); `latest_checkpoint` also skips a format-1 checkpoint holding NaN/inf weights.

Crash safety: a checkpoint is written into a temporary folder, every file and the folder
are fsync'ed, the folder is renamed to `step-XXXX` and the parent folder is fsync'ed. A
crash therefore leaves either a complete checkpoint or a `.step-XXXX.tmp-*` folder that is
ignored (and swept up by the next save). A write that fails (disk full, file-size limit,
permissions) removes the temporary folder and raises CheckpointWriteError (exit 4): one line
naming the folder, the space the checkpoint needs and the space free. `latest_checkpoint`
checks the manifest (sizes, then sha256) of the newest checkpoint and falls back to the
previous complete one, with a one-line warning (logged; `ticgrpo` prints it on stderr), so a
torn or corrupt checkpoint is never loaded.

Test hook: `TICGRPO_TEST_CRASH_AT=<point>[:<n>]` makes the process SIGKILL itself the n-th
time (default 1st) it reaches the named point (see `crash_point`); used only by
tests/test_crash_resume.py to simulate power loss / OOM kills at exact places.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
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
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step-(\d+)$")
MANIFEST = "manifest.json"
MODEL_FILE = "model.safetensors"
SOURCE_FILE = "source.pt"  # the batch source's state per process (a lagged run's queued batches)
LEGACY_MODEL_FILE = "model.pt"  # format 1: the whole state dict, pickled
FORMAT = 2
CRASH_ENV = "TICGRPO_TEST_CRASH_AT"
_crash_counts: dict[str, int] = {}
_OS_ERROR_IN_MESSAGE = re.compile(r"\(os error (\d+)\)")  # how safetensors reports an I/O failure
_NO_SPACE = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


class CheckpointError(ValueError):
    """A checkpoint that fails its manifest check (torn, truncated or corrupt), or one that does
    not fit the model it is loaded into."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, file-size limit, permissions); the
    temporary folder was removed and earlier checkpoints are untouched. `ticgrpo` exits with 4."""

    exit_code = 4


class NonFiniteWeightsError(RuntimeError):
    """Refused to save a model holding NaN/inf weights; `ticgrpo` exits with 3 (a halted run)."""

    exit_code = 3


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
    """Every RNG's state as tensors, lists and numbers only, so it loads with weights_only=True."""
    numpy_state = np.random.get_state(legacy=True)
    assert isinstance(numpy_state, tuple)  # legacy=True: (kind, keys, pos, has_gauss, cached_gaussian)
    kind, keys, pos, has_gauss, cached_gaussian = numpy_state
    version, python_state, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached_gaussian)],
        "python": [version, list(python_state), gauss_next],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state, python_state = state["numpy"], state["python"]
    if isinstance(numpy_state, list):  # format 2; format 1 pickled numpy's own tuple
        kind, keys, pos, has_gauss, cached_gaussian = numpy_state
        numpy_state = (kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian)
    np.random.set_state(numpy_state)
    version, internal, gauss_next = python_state
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------- which weights a checkpoint holds


def trainable_parameters(model: Any) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def nonfinite_weights(model: Any) -> int:
    """How many trainable weights are NaN or ±inf (frozen ones cannot change). One reading pass
    over the trainable parameters and one device sync; the elements are counted only when some
    are non-finite."""
    params = [p for p in trainable_parameters(model) if p.is_floating_point() and p.numel()]
    if not params:
        return 0
    with torch.no_grad():
        # max |w| per tensor: a fused reduction without a temporary, and NaN propagates through it
        largest = torch.stack([torch.linalg.vector_norm(p, float("inf")).float() for p in params])
        if bool(torch.isfinite(largest).all()):
            return 0
        return int(torch.stack([(~torch.isfinite(p)).sum() for p in params]).sum())


def _saved_state(model: Any) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """(tensors to save, alias → saved name for tied tensors, names of frozen parameters):
    the state dict minus frozen parameters, each shared tensor once."""
    frozen = {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, tensor in model.state_dict().items():
        if name in frozen:
            continue
        identity = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
                    tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if identity in seen:
            aliases[name] = seen[identity]
            continue
        seen[identity] = name
        tensors[name] = tensor.detach().contiguous()
    return tensors, aliases, sorted(frozen)


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


# ---------------------------------------------------------------------- files


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


def fsync_dir(path: Path) -> None:
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


def _torch_save(obj: Any, path: Path) -> None:
    # Through a Python file object: a full disk is then an OSError(ENOSPC), where torch.save to a
    # path reports it as an opaque RuntimeError from its C++ writer.
    with open(path, "wb") as f:
        torch.save(obj, f)


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    try:
        save_file(tensors, path, metadata=metadata)
    except SafetensorError as exc:
        code = _OS_ERROR_IN_MESSAGE.search(str(exc))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from exc


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _free_bytes(path: Path) -> int:
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def _write_error(root: Path, step: int, needed: int, exc: OSError | None) -> CheckpointWriteError:
    free = _free_bytes(root)
    last = latest_checkpoint(root.parent, quiet=True)
    if exc is None or exc.errno in _NO_SPACE:
        reason = "no space left" if exc is None or exc.errno == errno.ENOSPC else (exc.strerror or str(exc)).lower()
        return CheckpointWriteError(
            f"cannot write checkpoint step-{step:04d} in {root}: {reason} (it needs about {_megabytes(needed)}, "
            f"{_megabytes(free)} free); free some space or set checkpoint.keep_last, then --resume "
            f"(the last complete checkpoint is {last or 'none'})")
    return CheckpointWriteError(f"cannot write checkpoint step-{step:04d} in {root}: {exc.strerror or exc} "
                                f"({exc.filename or root}); the last complete checkpoint is {last or 'none'}")


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    keep_last: int = 0,
    source_states: list[dict[str, Any]] | None = None,
) -> Path:
    """Write checkpoints/step-{step:04d} atomically (temp folder + fsync + rename) with a
    manifest; prune to the `keep_last` newest complete checkpoints (0 = keep all).
    `source_states` (each process's batch-source state, plain values and CPU tensors) go to
    source.pt when any holds something; `load_checkpoint` returns them as state["source"].

    Raises NonFiniteWeightsError (nothing written) when a trainable weight is NaN/inf, and
    CheckpointWriteError (the partial checkpoint removed) when the disk is full or a write fails."""
    root = checkpoint_root(output_dir)
    bad = nonfinite_weights(model)
    if bad:
        raise NonFiniteWeightsError(
            f"refused to save checkpoint step-{step:04d}: {bad} trainable weights are NaN or inf; the last "
            f"checkpoint with finite weights is {latest_checkpoint(output_dir, quiet=True) or 'none'}")
    tensors, aliases, frozen = _saved_state(model)
    optimizer_state = optimizer.state_dict()
    state_text = json.dumps({"step": step, **state}, indent=1)
    # + RNG states (~10 kB without CUDA), headers and the manifest
    sources = source_states if source_states and any(source_states) else None
    needed = (_tensor_bytes(tensors) + _tensor_bytes(optimizer_state) + _tensor_bytes(sources) + len(state_text)
              + (1 << 16))
    try:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".step-*.tmp-*"):  # left by a crash during an earlier save
            shutil.rmtree(stale, ignore_errors=True)
        if _free_bytes(root) < needed:
            raise _write_error(root, step, needed, None)
        tmp = Path(tempfile.mkdtemp(prefix=f".step-{step:04d}.tmp-", dir=root))
    except OSError as exc:
        raise _write_error(root, step, needed, exc) from None
    target = root / f"step-{step:04d}"
    try:
        _save_safetensors(tensors, tmp / MODEL_FILE, {"format": "pt"})
        crash_point("checkpoint_mid_write")
        _torch_save(optimizer_state, tmp / "optimizer.pt")
        _torch_save(scheduler.state_dict(), tmp / "scheduler.pt")
        _torch_save(rng_state(), tmp / "rng.pt")
        (tmp / "state.json").write_text(state_text)
        if sources is not None:
            _torch_save(sources, tmp / SOURCE_FILE)
        files = {}
        for path in sorted(tmp.iterdir()):
            _fsync_file(path)
            files[path.name] = {"size": path.stat().st_size, "sha256": _sha256(path)}
        model_entry = {"file": MODEL_FILE, "tensors": len(tensors), "aliases": aliases,
                       "frozen_parameters": len(frozen), "weights_finite": True}
        manifest = {"format": FORMAT, "step": step, "model": model_entry, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        _fsync_file(tmp / MANIFEST)
        fsync_dir(tmp)
        crash_point("checkpoint_before_rename")
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
        fsync_dir(root)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(root, step, needed, exc) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    crash_point("checkpoint_after_rename")
    if keep_last > 0:
        for old in list_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return target


def save_final_model(output_dir: str | Path, model: Any, tokenizer: Any) -> Path:
    """`final/` (save_pretrained of the model and the tokenizer), written into a temporary folder
    and renamed into place, so that `final/` is always whole. A full disk or failed write is a
    CheckpointWriteError (one line, exit 4) with the temporary folder removed."""
    output_dir = Path(output_dir)
    final, tmp, old = output_dir / "final", output_dir / ".final.tmp", output_dir / ".final.old"
    try:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash during an earlier save
        try:
            model.save_pretrained(tmp)
        except SafetensorError as exc:
            code = _OS_ERROR_IN_MESSAGE.search(str(exc))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(tmp)) from exc
        crash_point("final_save_mid")
        tokenizer.save_pretrained(tmp)
        for path in tmp.rglob("*"):
            if path.is_file():
                _fsync_file(path)
        fsync_dir(tmp)
        if final.exists():  # a run extended past its first end: the new final/ replaces the old
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
        os.rename(tmp, final)
        fsync_dir(output_dir)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not final.exists():
            os.rename(old, final)
        reason = "no space left" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc)).lower()
        raise CheckpointWriteError(
            f"cannot write the final model in {final}: {reason} ({_megabytes(_free_bytes(output_dir))} free); "
            f"free some space, then --resume (the last complete checkpoint is "
            f"{latest_checkpoint(output_dir, quiet=True) or 'none'})") from None
    shutil.rmtree(old, ignore_errors=True)
    return final


# ---------------------------------------------------------------------- finding and reading checkpoints


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


def _manifest(path: Path) -> dict[str, Any] | None:
    """The parsed manifest (None for a checkpoint written before manifests existed)."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        dict(manifest["files"])
        return manifest
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: unreadable {MANIFEST} ({exc})") from None


def verify_checkpoint(path: str | Path, hashes: bool = True) -> None:
    """Raise CheckpointError unless every file listed in the manifest exists with its size
    (and, with `hashes`, its sha256). A checkpoint written before manifests existed (state.json
    but no manifest.json) only has its files' presence checked."""
    path = Path(path)
    manifest = _manifest(path)
    if manifest is None:
        missing = [n for n in (LEGACY_MODEL_FILE, "optimizer.pt", "scheduler.pt", "rng.pt", "state.json")
                   if not (path / n).is_file()]
        if missing:
            raise CheckpointError(f"{path}: no {MANIFEST} and missing {', '.join(missing)}")
        return
    for name, meta in dict(manifest["files"]).items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        if file.stat().st_size != int(meta["size"]):
            raise CheckpointError(f"{path}: {name} has {file.stat().st_size} bytes, the manifest says {meta['size']}")
        if hashes and _sha256(file) != meta["sha256"]:
            raise CheckpointError(f"{path}: {name} does not match its sha256 in the manifest")


def _format_2_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of a format-2 checkpoint; None for format 1 (with or without a manifest)."""
    manifest = _manifest(path)
    return manifest if manifest is not None and int(manifest.get("format", 1)) >= FORMAT else None


def _is_format_2(path: Path) -> bool:
    return _format_2_manifest(path) is not None


def read_model_state(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The model tensors a checkpoint holds, by state-dict name (tied aliases included); for a
    LoRA run only the adapter weights and the buffers."""
    path = Path(path)
    manifest = _format_2_manifest(path)
    if manifest is None:
        return torch.load(path / LEGACY_MODEL_FILE, map_location=device, weights_only=True)
    tensors = load_file(path / MODEL_FILE, device=str(device))
    for alias, name in manifest["model"].get("aliases", {}).items():
        tensors[alias] = tensors[name]
    return tensors


def read_optimizer_state(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(Path(path) / "optimizer.pt", map_location=device, weights_only=True)


def _weights_finite(path: Path) -> bool:
    """Format 2 records it (only finite weights are ever saved); format 1 is read and checked."""
    manifest = _format_2_manifest(path)
    if manifest is not None:
        return bool(manifest["model"].get("weights_finite", False))
    state = torch.load(path / LEGACY_MODEL_FILE, map_location="cpu", weights_only=True, mmap=True)
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


def latest_checkpoint(output_dir: str | Path, quiet: bool = False) -> Path | None:
    """The newest checkpoint that passes `verify_checkpoint` and holds finite weights; for each
    newer one that fails, a warning is logged (unless `quiet`) and the previous one is tried."""
    for path in reversed(list_checkpoints(output_dir)):
        try:
            verify_checkpoint(path)
            if not _weights_finite(path):
                raise CheckpointError(f"{path}: its weights hold NaN or inf")
        except CheckpointError as exc:
            if not quiet:
                logger.warning("skipping corrupt checkpoint: %s", exc)
            continue
        return path
    return None


def _load_model_state(path: Path, model: Any, device: torch.device) -> None:
    tensors = read_model_state(path, device)
    manifest = _format_2_manifest(path)
    if manifest is None:
        model.load_state_dict(tensors)
        return
    _, _, frozen = _saved_state(model)
    recorded = int(manifest["model"].get("frozen_parameters", 0))
    if recorded != len(frozen):
        raise CheckpointError(f"{path} was saved from a model with {recorded} frozen parameters, this model has "
                              f"{len(frozen)}: resume with the model (and model.lora) the run was started with")
    expected = set(model.state_dict()) - set(frozen)
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:  # checked before loading, so a refused checkpoint changes nothing
        names = missing or unexpected
        raise CheckpointError(f"{path} does not fit this model ({'missing' if missing else 'unexpected'} "
                              f"{len(names)} tensors, e.g. {names[0]}): resume with the model the run was started "
                              f"with")
    model.load_state_dict(tensors, strict=False)  # the frozen parameters stay as loaded from the config


def load_checkpoint(
    path: str | Path, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any, verify: bool = True
) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG states; returns state.json's contents, with
    state["source"] the batch-source states (one per process, CPU tensors) when the checkpoint
    holds source.pt. Raises CheckpointError (before touching any state) when the manifest check
    fails."""
    path = Path(path)
    if verify:
        verify_checkpoint(path)
    device = next(model.parameters()).device
    _load_model_state(path, model, device)
    optimizer.load_state_dict(read_optimizer_state(path, device))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    # format 1 pickled numpy's RNG state (an ndarray), which weights_only refuses
    set_rng_state(torch.load(path / "rng.pt", weights_only=_is_format_2(path)))
    state = json.loads((path / "state.json").read_text())
    if (path / SOURCE_FILE).is_file():
        state["source"] = torch.load(path / SOURCE_FILE, map_location="cpu", weights_only=True)
    return state
