"""Reward functions: the `REWARDS` registry, name/import-path resolution and weighted sums.

A reward function is called with keyword arguments only (the TRL convention)::

    fn(prompts=[...], completions=[...], answer=[...], ..., completion_lengths=[...],
       truncated=[...], max_new_tokens=96, **reward_kwargs) -> list[float | None]

``prompts`` and every dataset column are lists aligned with ``completions``. A function
with ``**kwargs`` receives everything; one without receives only the arguments it names.
``None`` means "no opinion" and counts as 0. docs/training.md, "Reward functions".
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import math as _math
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

# the built-in rewards register themselves on import (ticgrpo.rewards.registry)
from ticgrpo.rewards import code as _code  # noqa: F401  (code_tests: sandboxed unit tests)
from ticgrpo.rewards import environment as _environment  # noqa: F401  (environment_reward: episodes)
from ticgrpo.rewards import math as _math_rewards  # noqa: F401
from ticgrpo.rewards import shaping as _shaping  # noqa: F401
from ticgrpo.rewards.math import extract_final_answer, math_correctness
from ticgrpo.rewards.registry import REWARDS, RewardFn, RewardSpec
from ticgrpo.rewards.shaping import answer_format, overlong_soft


class RewardError(ValueError):
    """A reward function failed (raised, wrong count, NaN, timed out); the message names it and the sample."""


class RewardSignatureError(RewardError):
    """A reward function cannot be called with what the trainer passes: a usage error, never zeroed."""


def resolve_reward(name_or_path: str | RewardFn, config_dir: str | Path | None = None) -> RewardFn:
    """A reward function from a registry name, a ``"module:function"`` or ``"path/file.py:function"``
    path, or a callable.

    Module names and relative file paths are looked up in `config_dir` (the folder of the
    config file), then in the working directory, then on ``sys.path``.
    """
    if callable(name_or_path):
        return name_or_path
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(f"reward must be a registry name, 'module:function' or a callable, got {name_or_path!r}")
    if ":" not in name_or_path:
        return REWARDS.spec(name_or_path).fn
    return import_attribute(name_or_path, config_dir, "reward")


def import_attribute(path: str, config_dir: str | Path | None, kind: str) -> Any:
    """The callable a "module:attribute" or "path/file.py:attribute" names (a reward function, an
    environment class); `kind` names it in the one-line errors."""
    what = "function" if kind == "reward" else "Class"
    where, _, attr = path.rpartition(":")
    if not where or not attr:
        raise ValueError(f"{kind} {path!r} must look like 'module:{what}' or 'path/file.py:{what}'")
    folders = _search_folders(config_dir)
    is_file = where.endswith(".py") or "/" in where or "\\" in where
    module = _import_file(where, folders, kind) if is_file else _import_module(where, folders, kind)
    fn: Any = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ValueError(f"{kind} module {where!r} has no attribute {attr!r}; check the 'module:{what}' path")
    if not callable(fn):
        raise ValueError(f"{kind} {path!r} is not callable")
    return fn


def _search_folders(config_dir: str | Path | None) -> list[Path]:
    folders = [Path(config_dir).resolve()] if config_dir is not None else []
    cwd = Path.cwd().resolve()
    return folders if cwd in folders else [*folders, cwd]


@contextmanager
def _on_sys_path(folder: Path) -> Iterator[None]:
    """`folder` first on sys.path while a reward module is imported (its own top-level imports
    of files beside it work), and no longer afterwards."""
    entry = str(folder)
    sys.path.insert(0, entry)
    importlib.invalidate_caches()
    try:
        yield
    finally:
        if entry in sys.path:
            sys.path.remove(entry)


def _import_module(name: str, folders: list[Path], kind: str = "reward") -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    top = name.split(".")[0]
    home = next((f for f in folders if (f / f"{top}.py").is_file() or (f / top).is_dir()), None)
    try:
        if home is None:
            return importlib.import_module(name)
        with _on_sys_path(home):
            return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            searched = " or ".join(str(f) for f in folders)
            raise ValueError(
                f"cannot import {kind} module {name!r}: no {top}.py in {searched} and no installed module of "
                f"that name; put the file beside the config or give its path as 'path/to/file.py:function'"
            ) from None
        raise ValueError(f"importing {kind} module {name!r} failed: {type(exc).__name__}: {exc}") from None
    except Exception as exc:
        raise ValueError(f"importing {kind} module {name!r} failed: {type(exc).__name__}: {exc}") from None


def _import_file(where: str, folders: list[Path], kind: str = "reward") -> ModuleType:
    given = Path(where).expanduser()
    candidates = [given] if given.is_absolute() else [f / given for f in folders]
    path = next((c.resolve() for c in candidates if c.is_file()), None)
    if path is None:
        searched = " or ".join(str(f) for f in folders) if not given.is_absolute() else "that location"
        raise ValueError(f"{kind} file {where!r} not found in {searched}; the path is relative to the config's "
                         f"folder, then the working directory")
    # One module per file, named after its absolute path: two files called rewards.py never collide.
    module_name = f"_ticgrpo_reward_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{kind} file {where!r} cannot be imported as Python; give a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # before executing it, as a normal import does (dataclasses need it)
    try:
        with _on_sys_path(path.parent):
            spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise ValueError(f"importing reward file {where!r} failed: {type(exc).__name__}: {exc}") from None
    return module


def reward_arguments(fn: RewardFn, name: str, available: Sequence[str]) -> set[str] | None:
    """Which keyword arguments `fn` takes of prompts, completions and the `available` ones:
    None when it takes ``**kwargs`` (all of them). Raises RewardSignatureError when `fn` needs
    an argument that is not available or cannot be called with keywords."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no introspectable signature (a builtin): pass everything
        return None
    offered = {"prompts", "completions", *available}
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for p in params.values():
        if p.kind is p.POSITIONAL_ONLY:
            raise RewardSignatureError(
                f"reward function {name!r} takes positional-only parameter {p.name!r}; rewards are called with "
                f"keyword arguments: def {name}(prompts, completions, **kwargs)")
        needed = p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        if needed and p.name not in offered:
            raise RewardSignatureError(
                f"reward function {name!r} needs the keyword argument {p.name!r}, which is neither a dataset "
                f"column nor a trainer argument; it is called with prompts, completions and: "
                f"{', '.join(sorted(available)) or 'nothing else'} (add the column or algorithm.reward_kwargs)")
    return None if takes_all else {n for n in params if n in offered}


def call_reward(fn: RewardFn, prompts: list, completions: list, columns: dict[str, Any]) -> Any:
    """``fn(prompts=..., completions=..., **columns)``, limited to the columns `fn` names when it
    has no ``**kwargs``; the one calling convention of every reward (built-in, user, TRL-style)."""
    arguments = {**columns, "prompts": prompts, "completions": completions}
    accepted = reward_arguments(fn, reward_name(fn), list(columns))
    if accepted is not None:
        arguments = {k: v for k, v in arguments.items() if k in accepted}
    return fn(**arguments)


def reward_name(spec: str | RewardFn) -> str:
    """The name a reward is logged under: its registry name/path, else the function's name."""
    if isinstance(spec, str):
        return spec
    return getattr(spec, "__name__", type(spec).__name__)


def combine_rewards(
    specs: Sequence[tuple[str | RewardFn, float]],
    prompts: list[str],
    completions: list[str],
    columns: dict[str, Any] | None = None,
) -> tuple[list[float], dict[str, list[float]]]:
    """Weighted sum of several reward functions.

    Returns (total per completion, {name: raw values}) where None values count as 0.
    Raises ValueError naming the function when one raises, returns the wrong number of
    values, or returns NaN/inf/non-numbers. (`ticgrpo.rewards.scoring.Scorer` scores a
    rollout with a policy for such failures.)
    """
    if not specs:
        raise ValueError("no reward functions given; list at least one (name, weight)")
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions; they must align")
    columns = dict(columns or {})
    named: list[tuple[str, Any, float]] = []
    for spec in specs:
        try:
            fn_spec, weight = spec
        except (TypeError, ValueError):
            raise ValueError(f"reward spec {spec!r} must be a (name_or_function, weight) pair") from None
        name = reward_name(fn_spec)
        try:
            values = call_reward(resolve_reward(fn_spec), prompts, completions, columns)
        except RewardError:
            raise  # already names the function and the sample
        except Exception as exc:
            raise ValueError(f"reward function {name!r} raised {type(exc).__name__}: {exc}") from exc
        named.append((name, values, weight))
    return weighted_total(named, len(completions))


def weighted_total(
    named: Sequence[tuple[str, Any, float]], n: int
) -> tuple[list[float], dict[str, list[float]]]:
    """(Σ weight · value per completion, {name: values}) of (name, raw values, weight) triples;
    None counts as 0. Raises ValueError naming the function for a bad list or a repeated name."""
    total = [0.0] * n
    per_function: dict[str, list[float]] = {}
    for name, raw, weight in named:
        values = _check_values(name, raw, n)
        if name in per_function:
            raise ValueError(f"reward function {name!r} is listed twice; combine its weights instead")
        per_function[name] = values
        for i, v in enumerate(values):
            total[i] += float(weight) * v
    return total, per_function


def _check_values(name: str, values: Any, n: int) -> list[float]:
    try:
        values = list(values)
    except TypeError:
        raise ValueError(
            f"reward function {name!r} returned {type(values).__name__}, expected a list of floats"
        ) from None
    if len(values) != n:
        raise ValueError(f"reward function {name!r} returned {len(values)} values for {n} completions")
    out = []
    for i, v in enumerate(values):
        if v is None:
            out.append(0.0)
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"reward function {name!r} returned a non-number {v!r} at index {i}") from None
        if not _math.isfinite(f):
            raise ValueError(f"reward function {name!r} returned {f} at index {i}; rewards must be finite")
        out.append(f)
    return out


__all__ = [
    "REWARDS",
    "RewardError",
    "RewardSignatureError",
    "RewardSpec",
    "answer_format",
    "call_reward",
    "combine_rewards",
    "extract_final_answer",
    "math_correctness",
    "overlong_soft",
    "resolve_reward",
    "reward_arguments",
    "reward_name",
    "weighted_total",
]
