"""`code_tests`: the fraction of a dataset row's unit tests that the model's program passes.

The program is the last ```python fenced block of the completion (else the last ``` block,
else the whole completion). It runs in `ticgrpo.rewards.sandbox` (separate process, scrubbed
environment, resource limits, timeout; with bwrap/unshare no network, no host files and a
size-limited tmpfs as its only writable space).

Dataset column ``tests`` (one entry per row, a list or a JSON string of a list), each test:

* ``"assert add(2, 3) == 5"``: an assert statement run after the program; its operands are
  evaluated in the sandbox and come back as plain data, the comparison is made outside;
* ``{"input": "2 3\\n", "output": "5"}``: the program runs as a script with ``input`` on stdin
  and must print ``output`` (trailing whitespace ignored) and exit with status 0.

Reward = passed / total, 0 on a timeout, resource violation, oversized output or protocol
tampering: nothing a program does raises here. Options through ``algorithm.reward_kwargs``:
``sandbox_timeout_s`` (default 5), ``sandbox_memory_mb`` (512), ``sandbox_disk_mb`` (64,
the tmpfs), ``sandbox_workers`` (parallel executions, default 2) and ``sandbox_require``
(``bwrap`` | ``unshare`` | ``none``, default ``none``: the weakest isolation level accepted;
the run stops at start, in one line, when it is not available).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ticgrpo.rewards.registry import register_reward

if TYPE_CHECKING:  # imported when a code reward runs: the trainer records sandbox.json only then
    from ticgrpo.rewards.sandbox import Sandbox

OPTIONS = ("sandbox_timeout_s", "sandbox_memory_mb", "sandbox_disk_mb", "sandbox_workers", "sandbox_require")


def code_tests_sandbox(**kwargs: Any) -> Sandbox:
    """The shared Sandbox for these reward_kwargs; ValueError (one line) for a bad option or
    an unavailable required level."""
    from ticgrpo.rewards.sandbox import ISOLATION_LEVELS, default_sandbox

    limits: dict[str, Any] = {}
    try:
        if kwargs.get("sandbox_timeout_s") is not None:
            limits["timeout_s"] = float(kwargs["sandbox_timeout_s"])
            limits["cpu_s"] = max(1, int(float(kwargs["sandbox_timeout_s"])))
        for key, limit in (("sandbox_memory_mb", "memory_mb"), ("sandbox_disk_mb", "disk_mb")):
            if kwargs.get(key) is not None:
                limits[limit] = int(kwargs[key])
    except (TypeError, ValueError):
        raise ValueError("algorithm.reward_kwargs: sandbox_timeout_s, sandbox_memory_mb and sandbox_disk_mb "
                         "must be numbers") from None
    if any(v <= 0 for v in limits.values()):
        raise ValueError(f"algorithm.reward_kwargs: sandbox limits must be > 0, got {limits}")
    require = kwargs.get("sandbox_require") or "none"
    if require not in ISOLATION_LEVELS:
        raise ValueError(f"algorithm.reward_kwargs.sandbox_require must be one of {', '.join(ISOLATION_LEVELS)}, "
                         f"got {require!r}")
    return default_sandbox(require=require, **limits)


def check_code_tests_options(reward_kwargs: dict[str, Any]) -> None:
    """Run before training: the sandbox options are valid and the required level runs here."""
    code_tests_sandbox(**{k: v for k, v in reward_kwargs.items() if k in OPTIONS})


# own_time_limit: every execution has its own wall-clock timeout and is killed with its namespace
@register_reward("code_tests", check_options=check_code_tests_options, own_time_limit=True)
def code_tests(prompts: list, completions: list[str], tests: list | None = None, **kwargs: Any) -> list[float]:
    from ticgrpo.rewards.sandbox import extract_code

    if tests is None:
        raise ValueError("code_tests needs a dataset column 'tests' (assert statements or {input, output} pairs)")
    box = code_tests_sandbox(**kwargs)

    def one(i: int) -> float:
        cases = tests[i]
        if isinstance(cases, str):
            cases = json.loads(cases)
        return box.run_tests(extract_code(completions[i]), list(cases or [])).score

    workers = max(1, int(kwargs.get("sandbox_workers", 2)))
    if workers == 1 or len(completions) <= 1:
        return [one(i) for i in range(len(completions))]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, range(len(completions))))
