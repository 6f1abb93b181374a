"""Scoring a rollout: rewards of every completion, and the reward failures met, as one value.

    scorer = Scorer(rewards=[(math_correctness, 1.0)], max_new_tokens=96, on_error="skip")
    scored = scorer.score(rollout, rows, num_samples=8)
    scored.batch.group_rewards()        # [P, G] (groups with a failure dropped under "skip")
    scored.errors                       # (RewardFailure(sample, message), ...)

Each reward function is called with keyword arguments (`ticgrpo.rewards.call_reward`):
prompts, completions and the dataset columns (all but "prompt") as lists aligned with the
completions, plus completion_lengths, truncated, max_new_tokens and `reward_kwargs`
(`reward_argument_names` lists them; `ticgrpo train --dry-run` checks rewards against it).

A failure — the function raises, returns the wrong number of values, a NaN/inf/non-number,
or does not return within `timeout_s` — names the function and the sample. `on_error`:
"raise" raises RewardError; "zero" scores the failing samples 0; "skip" also drops the groups
holding one (when every group holds one, the zeroed batch is kept). Training, held-out
evaluation and the iGRPO drafts score through a Scorer.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ticgrpo.rewards import RewardError, RewardSignatureError, call_reward, reward_name, weighted_total
from ticgrpo.rewards.registry import REWARDS, RewardFn
from ticgrpo.rollout.base import RolloutBatch, concat_rollouts

ON_REWARD_ERROR = ("raise", "zero", "skip")

# What the trainer passes every reward beyond prompts, completions, the dataset columns and reward_kwargs.
# environment_reward: per completion, the sum of an episode's environment rewards (None: none given,
# or a single completion; rollout.environment)
TRAINER_REWARD_ARGUMENTS = ("completion_lengths", "truncated", "max_new_tokens", "environment_reward")


def dataset_columns(rows: list[dict]) -> list[str]:
    """The dataset columns a reward receives (every key of any row but "prompt"), in first-seen order."""
    return list(dict.fromkeys(key for row in rows for key in row if key != "prompt"))


def reward_argument_names(rows: list[dict], reward_kwargs: Mapping[str, Any]) -> list[str]:
    """Every keyword argument a reward receives besides prompts and completions."""
    return [*dataset_columns(rows), *TRAINER_REWARD_ARGUMENTS, *reward_kwargs]


@dataclass
class ScoredRollout:
    """A rollout of len(rows) prompt groups × G completions, with its rewards."""

    rollout: RolloutBatch
    rows: list[dict]  # one dataset row per prompt group
    rewards: Tensor  # [B] float32 (CPU)
    per_function: dict[str, list[float]]
    num_samples: int

    def group_rewards(self) -> Tensor:
        return self.rewards.view(len(self.rows), self.num_samples)

    def select_groups(self, groups: list[int]) -> ScoredRollout:
        g = self.num_samples
        idx = [k * g + j for k in groups for j in range(g)]
        sub = self.rollout.select(idx)
        sub.group_ids = torch.arange(len(groups), device=sub.group_ids.device).repeat_interleave(g)
        return ScoredRollout(
            rollout=sub,
            rows=[self.rows[k] for k in groups],
            rewards=self.rewards[idx],
            per_function={name: [v[i] for i in idx] for name, v in self.per_function.items()},
            num_samples=g,
        )


def concat_scored(parts: list[ScoredRollout], pad_token_id: int) -> ScoredRollout:
    if len(parts) == 1:
        return parts[0]
    names = parts[0].per_function
    return ScoredRollout(
        rollout=concat_rollouts([p.rollout for p in parts], pad_token_id),
        rows=[r for p in parts for r in p.rows],
        rewards=torch.cat([p.rewards for p in parts]),
        per_function={n: [v for p in parts for v in p.per_function[n]] for n in names},
        num_samples=parts[0].num_samples,
    )


@dataclass(frozen=True)
class RewardFailure:
    sample: int  # index of the completion in the scored rollout
    message: str  # names the reward function and the sample


@dataclass(frozen=True)
class Scored:
    """One scoring call's result: the scored rollout (after the on_error policy) and its failures."""

    batch: ScoredRollout
    errors: tuple[RewardFailure, ...] = ()
    dropped_groups: int = 0  # under "skip": groups removed for holding a failure

    @property
    def action(self) -> str:
        """What was done about the failures, for a warning line."""
        return f"dropped {self.dropped_groups} group(s)" if self.dropped_groups else "zeroed those rewards"


@dataclass(frozen=True)
class Scorer:
    """The rewards of a run (callables and weights) and how their failures are handled."""

    rewards: Sequence[tuple[RewardFn, float]]
    max_new_tokens: int
    reward_kwargs: Mapping[str, Any] = field(default_factory=dict)
    on_error: str = "raise"
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.on_error not in ON_REWARD_ERROR:
            raise ValueError(f"on_reward_error must be one of {', '.join(ON_REWARD_ERROR)}, got {self.on_error!r}")

    def score(self, rollout: RolloutBatch, rows: list[dict], num_samples: int) -> Scored:
        """Rewards of the len(rows) × num_samples completions of `rollout`."""
        expanded = [row for row in rows for _ in range(num_samples)]
        columns: dict[str, Any] = {key: [row.get(key) for row in expanded] for key in dataset_columns(rows)}
        episodes = rollout.episodes or []
        environment_rewards = [e.environment_reward for e in episodes] or [None] * len(rollout.completions)
        trainer_values = (rollout.completion_lengths.tolist(), rollout.truncated.tolist(), self.max_new_tokens,
                          environment_rewards)
        columns.update(zip(TRAINER_REWARD_ARGUMENTS, trainer_values, strict=True))
        columns.update(self.reward_kwargs)
        prompts = [row["prompt"] for row in expanded]
        named: list[tuple[str, Any, float]] = []
        errors: list[RewardFailure] = []
        for fn, weight in self.rewards:
            values, failures = self._values(fn, prompts, rollout.completions, columns)
            named.append((reward_name(fn), values, weight))
            errors += failures
        if not named:
            raise ValueError("no reward functions given; list at least one (name, weight)")
        total, per_function = weighted_total(named, len(rollout.completions))
        # an episode whose environment failed scores 0 whatever the rewards say (never raised: the run goes on)
        failed = [RewardFailure(i, str(e.error)) for i, e in enumerate(episodes) if e.error is not None]
        for failure in failed:
            total[failure.sample] = 0.0
        errors += failed
        batch = ScoredRollout(rollout, list(rows), torch.tensor(total, dtype=torch.float32), per_function,
                              num_samples)
        return self._apply_policy(batch, tuple(errors))

    def _values(self, fn: RewardFn, prompts: list, completions: list,
                columns: dict[str, Any]) -> tuple[list, list[RewardFailure]]:
        """One reward's values (0 at the failures unless on_error is "raise") and its failures."""
        name = reward_name(fn)
        limit = None if self.timeout_s is None or _has_own_time_limit(fn) else float(self.timeout_s)
        values, found = checked_call(fn, name, limit, prompts, completions, columns)
        if found is None:
            return list(values), []
        if isinstance(found, str):  # the whole call is unusable
            if self.on_error == "raise":
                raise RewardError(f"reward function {name!r} {found}")
            found = {i: found for i in range(len(completions))}
        if self.on_error == "raise":
            i, message = next(iter(found.items()))
            raise RewardError(f"reward function {name!r} {message} at sample {i} (completion {completions[i][:60]!r})")
        failures = [RewardFailure(i, f"reward function {name!r} {message} at sample {i}")
                    for i, message in found.items()]
        return [0.0 if i in found else values[i] for i in range(len(completions))], failures

    def _apply_policy(self, batch: ScoredRollout, errors: tuple[RewardFailure, ...]) -> Scored:
        if not errors or self.on_error != "skip":
            return Scored(batch, errors)
        bad = {e.sample // batch.num_samples for e in errors}
        keep = [k for k in range(len(batch.rows)) if k not in bad]
        if not keep:  # every group failed somewhere: train on the zeroed batch rather than nothing
            return Scored(batch, errors)
        return Scored(batch.select_groups(keep), errors, dropped_groups=len(bad))


# ---------------------------------------------------------------------- one checked reward call


class RewardTimeout(Exception):
    """A reward call did not return within the reward timeout."""


Failures = dict[int, str] | str | None  # per sample, the whole call, or none


def checked_call(fn: RewardFn, name: str, timeout_s: float | None, prompts: list, completions: list,
                 columns: dict[str, Any]) -> tuple[list, Failures]:
    """`fn`'s values (None where a sample failed) and what failed. When the batched call
    raises, the samples are retried one at a time to find the culprits; a timed-out call is
    not retried (every sample failed). RewardSignatureError (the function cannot be called
    as written) propagates: no sample is to blame."""
    n = len(completions)
    try:
        values = _call(fn, name, timeout_s, prompts, completions, columns)
        return values, _problems(values, n)
    except RewardSignatureError:
        raise
    except RewardTimeout as exc:
        return [None] * n, str(exc)
    except Exception as exc:
        values, found = _one_at_a_time(fn, name, timeout_s, prompts, completions, columns)
        return values, found or {i: f"raised {type(exc).__name__}: {exc}" for i in range(n)}


def _one_at_a_time(fn: RewardFn, name: str, timeout_s: float | None, prompts: list, completions: list,
                   columns: dict[str, Any]) -> tuple[list, dict[int, str]]:
    n = len(completions)
    values: list = [None] * n
    found: dict[int, str] = {}
    for i in range(n):
        cols = {k: [v[i]] if isinstance(v, list) and len(v) == n else v for k, v in columns.items()}
        try:
            one = _call(fn, name, timeout_s, prompts[i : i + 1], completions[i : i + 1], cols)
        except RewardTimeout as timeout:  # the rest would time out too, one limit each
            found.update({j: str(timeout) for j in range(i, n)})
            break
        except Exception as inner:
            found[i] = f"raised {type(inner).__name__}: {inner}"
            continue
        issue = _problems(one, 1)
        if issue is None:
            values[i] = next(iter(one))
        else:
            found[i] = issue if isinstance(issue, str) else issue[0]
    return values, found


def _call(fn: RewardFn, name: str, timeout_s: float | None, prompts: list, completions: list,
          columns: dict[str, Any]) -> Any:
    if timeout_s is None:
        return call_reward(fn, prompts, completions, columns)
    return _call_with_timeout(name, timeout_s, call_reward, fn, prompts, completions, columns)


def _problems(values: Any, n: int) -> Failures:
    try:
        values = list(values)
    except TypeError:
        return f"returned {type(values).__name__}, expected a list of floats"
    if len(values) != n:
        return f"returned {len(values)} values for {n} completions"
    bad = {}
    for i, v in enumerate(values):
        try:
            ok = v is None or math.isfinite(float(v))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            bad[i] = f"returned {v!r}"
    return bad or None


def _call_with_timeout(name: str, timeout_s: float, call: Callable[..., Any], *args: Any) -> Any:
    """``call(*args)`` in a daemon thread; RewardTimeout when it has not returned after `timeout_s`.

    A timed-out call cannot be stopped (it is Python code in a thread): it is abandoned and
    runs on in the daemon thread, which dies with the process."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(call(*args))
        except BaseException as exc:  # handed to the waiting caller, never lost in the thread
            future.set_exception(exc)

    threading.Thread(target=run, name=f"reward {name}", daemon=True).start()
    try:
        return future.result(timeout=timeout_s)
    except FutureTimeout:
        raise RewardTimeout(
            f"did not return within {timeout_s:g} s (algorithm.reward_timeout_s); the call was abandoned and runs "
            f"on in a background thread: fix the function or raise the timeout"
        ) from None


def _has_own_time_limit(fn: RewardFn) -> bool:
    """Registered rewards with ``own_time_limit`` bound their own run time: called directly, in this thread."""
    return any(spec.fn is fn and spec.own_time_limit for spec in REWARDS.specs())


def guard_reward(fn: RewardFn, timeout_s: float | None = None) -> RewardFn:
    """`fn` as a reward function whose failures raise RewardError naming the function and the
    sample (and that times out after `timeout_s`); for using one reward outside a Scorer."""
    scorer_free = Scorer([(fn, 1.0)], max_new_tokens=0, timeout_s=timeout_s)

    def guarded(*, prompts: list, completions: list, **columns: Any) -> list:
        values, _ = scorer_free._values(fn, prompts, completions, columns)
        return values

    # The name and docstring of `fn`, but not its signature: the guard takes every keyword
    # and passes on what `fn` accepts.
    name = reward_name(fn)
    guarded.__name__, guarded.__qualname__, guarded.__doc__ = name, name, fn.__doc__
    return guarded


__all__ = [
    "ON_REWARD_ERROR", "TRAINER_REWARD_ARGUMENTS", "RewardFailure", "RewardTimeout", "Scored", "ScoredRollout",
    "Scorer", "checked_call", "concat_scored", "dataset_columns", "guard_reward", "reward_argument_names",
]
