"""Reward functions: the `REWARDS` registry, name/import-path resolution and weighted sums.

A reward function is ``fn(prompts, completions, **columns) -> list[float | None]``; the
columns are the dataset's other columns as lists aligned with ``completions`` plus what the
trainer adds (``completion_lengths``, ``truncated``, ``max_new_tokens``). Functions take
``**kwargs`` and ignore what they do not need. ``None`` means "no opinion" and counts as 0.
"""

from __future__ import annotations

import importlib
import math as _math
from collections.abc import Callable, Sequence
from typing import Any

from ticgrpo.registry import Registry

RewardFn = Callable[..., list]
REWARDS: Registry[RewardFn] = Registry("reward")

# Registration happens on import; these imports must follow REWARDS' definition.
from ticgrpo.rewards import code as _code  # noqa: E402, F401  (code_tests: sandboxed unit tests)
from ticgrpo.rewards import math as _math_rewards  # noqa: E402, F401
from ticgrpo.rewards import shaping as _shaping  # noqa: E402, F401
from ticgrpo.rewards.math import extract_final_answer, math_correctness  # noqa: E402
from ticgrpo.rewards.shaping import answer_format, overlong_soft  # noqa: E402


def resolve_reward(name_or_path: str | RewardFn) -> RewardFn:
    """A reward function from a registry name, a ``"package.module:function"`` path, or a callable."""
    if callable(name_or_path):
        return name_or_path
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(f"reward must be a registry name, 'module:function' or a callable, got {name_or_path!r}")
    if ":" not in name_or_path:
        return REWARDS.get(name_or_path)
    module_name, _, attr = name_or_path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"cannot import reward module {module_name!r} ({exc}); check the 'module:function' path"
        ) from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}; check the 'module:function' path")
    if not callable(fn):
        raise ValueError(f"reward {name_or_path!r} is not callable")
    return fn


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
    values, or returns NaN/inf/non-numbers.
    """
    if not specs:
        raise ValueError("no reward functions given; list at least one (name, weight)")
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions; they must align")
    columns = dict(columns or {})
    total = [0.0] * len(completions)
    per_function: dict[str, list[float]] = {}
    for spec in specs:
        try:
            fn_spec, weight = spec
        except (TypeError, ValueError):
            raise ValueError(f"reward spec {spec!r} must be a (name_or_function, weight) pair") from None
        name = reward_name(fn_spec)
        fn = resolve_reward(fn_spec)
        try:
            values = fn(prompts, completions, **columns)
        except RewardError:
            raise  # from `guard_reward`: already names the function and the sample
        except Exception as exc:
            raise ValueError(f"reward function {name!r} raised {type(exc).__name__}: {exc}") from exc
        values = _check_values(name, values, len(completions))
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


class RewardError(ValueError):
    """A reward function failed (raised, wrong count, NaN); the message names it and the sample."""


def guard_reward(fn: RewardFn, on_error: str = "raise", errors: list | None = None) -> RewardFn:
    """Wrap reward `fn` so that a failure (it raises, returns the wrong number of values, or a
    NaN/inf/non-number) names the function and the sample index. `on_error`: "raise" raises
    ValueError; "zero" and "skip" return 0 for the failing samples and append
    (sample index, message) to `errors` (the trainer drops whole groups under "skip").
    When the batched call raises, the samples are retried one at a time to find the culprits."""
    import functools

    name = reward_name(fn)
    sink = errors if errors is not None else []

    def problems(values: Any, n: int) -> dict[int, str] | str | None:
        try:
            values = list(values)
        except TypeError:
            return f"returned {type(values).__name__}, expected a list of floats"
        if len(values) != n:
            return f"returned {len(values)} values for {n} completions"
        bad = {}
        for i, v in enumerate(values):
            try:
                ok = v is None or _math.isfinite(float(v))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                bad[i] = f"returned {v!r}"
        return bad or None

    @functools.wraps(fn)
    def guarded(prompts: list, completions: list, **columns: Any) -> list:
        n = len(completions)
        try:
            values = fn(prompts, completions, **columns)
            found = problems(values, n)
        except Exception as exc:  # locate the failing samples one by one
            values, found = [None] * n, {}
            for i in range(n):
                cols = {k: [v[i]] if isinstance(v, list) and len(v) == n else v for k, v in columns.items()}
                try:
                    one = fn(prompts[i : i + 1], completions[i : i + 1], **cols)
                    issue = problems(one, 1)
                    values[i] = next(iter(one)) if issue is None else None
                    if issue is not None:
                        found[i] = issue if isinstance(issue, str) else issue[0]
                except Exception as inner:
                    found[i] = f"raised {type(inner).__name__}: {inner}"
            if not found:
                found = {i: f"raised {type(exc).__name__}: {exc}" for i in range(n)}
        if found is None:
            return list(values)
        if isinstance(found, str):  # the whole call is unusable
            if on_error == "raise":
                raise RewardError(f"reward function {name!r} {found}")
            found = {i: found for i in range(n)}
        if on_error == "raise":
            i, message = next(iter(found.items()))
            raise RewardError(f"reward function {name!r} {message} at sample {i} (completion {completions[i][:60]!r})")
        sink.extend((i, f"reward function {name!r} {message} at sample {i}") for i, message in found.items())
        return [0.0 if i in found else values[i] for i in range(n)]

    return guarded


__all__ = [
    "REWARDS",
    "answer_format",
    "combine_rewards",
    "extract_final_answer",
    "guard_reward",
    "math_correctness",
    "overlong_soft",
    "resolve_reward",
    "reward_name",
]
