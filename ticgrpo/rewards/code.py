"""`code_tests`: the fraction of a dataset row's unit tests that the model's program passes.

The program is the last ```python fenced block of the completion (else the last ``` block,
else the whole completion). It runs in `ticgrpo.sandbox` (separate process, fresh temporary
folder, scrubbed environment, resource limits, timeout, no network where bwrap/unshare work).

Dataset column ``tests`` (one entry per row, a list or a JSON string of a list), each test:

* ``"assert add(2, 3) == 5"``: an assert statement run after the program; the form
  ``assert <expr> == <literal>`` is checked outside the sandbox (tamper-proof), any other
  assert inside it;
* ``{"input": "2 3\\n", "output": "5"}``: the program runs as a script with ``input`` on stdin
  and must print ``output`` (trailing whitespace ignored) and exit with status 0.

Reward = passed / total, 0 on a timeout, resource violation, oversized output or protocol
tampering. Options through ``algorithm.reward_kwargs``: ``sandbox_timeout_s`` (default 5),
``sandbox_memory_mb`` (512), ``sandbox_workers`` (parallel executions, default 2).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ticgrpo.rewards import REWARDS


@REWARDS.register("code_tests")
def code_tests(prompts: list, completions: list[str], tests: list | None = None, **kwargs: Any) -> list[float]:
    from ticgrpo.sandbox import default_sandbox, extract_code

    if tests is None:
        raise ValueError("code_tests needs a dataset column 'tests' (assert statements or {input, output} pairs)")
    limits = {}
    if kwargs.get("sandbox_timeout_s") is not None:
        limits["timeout_s"] = float(kwargs["sandbox_timeout_s"])
        limits["cpu_s"] = max(1, int(float(kwargs["sandbox_timeout_s"])))
    if kwargs.get("sandbox_memory_mb") is not None:
        limits["memory_mb"] = int(kwargs["sandbox_memory_mb"])
    box = default_sandbox(**limits)

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
