"""`Sandbox`: the strongest isolation level that runs here (probed once per process), its
executions, scoring a program against its tests, and the counts behind `summary()`."""

from __future__ import annotations

import json
import re
import secrets
import threading
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from ticgrpo.rewards.sandbox.checks import Check, holds, normalise_output, parse_test
from ticgrpo.rewards.sandbox.levels import (
    ISOLATION_LEVELS,
    SandboxUnavailable,
    announce,
    interpreters,
    is_root,
    missing_tool,
)
from ticgrpo.rewards.sandbox.limits import SandboxLimits
from ticgrpo.rewards.sandbox.protocol import ProtocolError, read_answers
from ticgrpo.rewards.sandbox.runner import ExecResult, execute

# (level, drop_uid, disk_mb) -> (the interpreter that runs there, or None; why not)
_probe_cache: dict[tuple[str, bool, int], tuple[str | None, str]] = {}

# A clock of executions, so that a run records only the sandboxes it used (`sandbox_summary(since=)`),
# not every sandbox an earlier run in the same process made.
_use_lock = threading.Lock()
_use_clock = 0


def _tick() -> int:
    global _use_clock
    with _use_lock:
        _use_clock += 1
        return _use_clock


def usage_mark() -> int:
    """The execution clock now: `sandbox_summary(since=usage_mark())` later lists the sandboxes used in between."""
    with _use_lock:
        return _use_clock


@dataclass
class TestReport:
    score: float
    passed: int
    total: int
    status: str  # ok | the violation that zeroed the score (timeout, protocol, memory, ...) | no_tests
    isolation: str
    details: list[str] = field(default_factory=list)
    reason: str = ""  # why a violation zeroed the score, e.g. "answer 0: unknown kind 'x'"


class Sandbox:
    """Sandboxed execution with `limits`; `isolation` is "auto" (best available) or a level;
    `require` is the weakest level accepted (SandboxUnavailable otherwise)."""

    def __init__(self, limits: SandboxLimits | None = None, isolation: str = "auto",
                 drop_uid: bool | None = None, require: str = "none") -> None:
        self.limits = limits or SandboxLimits()
        self.drop_uid = is_root() if drop_uid is None else (drop_uid and is_root())
        _check_choice("isolation", isolation, ("auto", *ISOLATION_LEVELS))
        _check_choice("require", require, ISOLATION_LEVELS)
        self._counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        self.last_use = 0  # the execution clock at this sandbox's latest execution (0: none yet)
        self.isolation, self.interpreter, failures = self._choose_level(isolation, require)
        announce(self.isolation, "; ".join(failures))

    def _choose_level(self, isolation: str, require: str) -> tuple[str, str, list[str]]:
        """(level, interpreter, why each stronger level failed) of the first level that runs."""
        acceptable = ISOLATION_LEVELS[: ISOLATION_LEVELS.index(require) + 1]
        failures = []
        for level in acceptable if isolation == "auto" else (isolation,):
            interpreter, why = _probe(level, self.drop_uid, self.limits)
            if interpreter is None:
                failures.append(f"{level}: {why}")
                continue
            if level not in acceptable:
                raise SandboxUnavailable(f"sandbox: isolation {level!r} is weaker than the required {require!r}")
            return level, interpreter, failures
        wanted = f"isolation {isolation!r}" if isolation != "auto" else f"isolation {require!r} or stronger"
        raise SandboxUnavailable(f"sandbox: {wanted} is not available here ({'; '.join(failures)}); install "
                                 f"bubblewrap (apt-get install bubblewrap) or lower sandbox_require")

    def execute(self, code: str, stdin: str = "", mode: str = "stdio", files: dict[str, str] | None = None,
                timeout_s: float | None = None) -> ExecResult:
        """Run `code` as solution.py (mode "stdio": as a script reading `stdin`; "asserts": the
        harness protocol of `run_tests`) in a fresh sandbox; never raises for what the code does."""
        self.last_use = _tick()
        return execute(self.isolation, self.interpreter, self.limits, code, stdin=stdin, mode=mode, files=files,
                       timeout_s=timeout_s, drop_uid=self.drop_uid)

    def run_tests(self, code: str, tests: list[Any]) -> TestReport:
        """Score `code` against `tests` (see the package docstring); never raises for what the
        code does (a malformed test is the dataset's fault: ValueError)."""
        report = self._score(code, [parse_test(t) for t in tests])
        with self._counts_lock:
            self._counts[report.status if not report.reason else f"{report.status}: {report.reason}"] += 1
        return report

    def summary(self) -> dict[str, Any]:
        """The level used, the limits, and how many scored programs ended in each status/reason."""
        with self._counts_lock:
            counts = dict(self._counts)
        return {"isolation": self.isolation, "interpreter": self.interpreter, "drop_uid": self.drop_uid,
                "limits": asdict(self.limits), "programs": counts}

    def _score(self, code: str, checks: list[Check]) -> TestReport:
        total = len(checks)
        if total == 0:
            return TestReport(0.0, 0, 0, "no_tests", self.isolation)
        verdicts: dict[int, bool] = {}
        asserts = [(i, check) for i, check in enumerate(checks) if check[0] == "assert"]
        if asserts:
            failed = self._judge_asserts(code, asserts, total, verdicts)
            if failed is not None:
                return failed
        for i, check in enumerate(checks):
            if check[0] != "stdio":
                continue
            res = self.execute(code, stdin=check[1], mode="stdio")
            if res.violation:
                return TestReport(0.0, 0, total, res.status, self.isolation, [res.stderr[-500:]])
            verdicts[i] = res.status == "ok" and normalise_output(res.stdout) == normalise_output(check[2])
        passed = sum(verdicts.values())
        details = [f"test {i}: {'pass' if ok else 'fail'}" for i, ok in verdicts.items()]
        return TestReport(passed / total, passed, total, "ok", self.isolation, details)

    def _judge_asserts(self, code: str, asserts: list[tuple[int, Check]], total: int,
                       verdicts: dict[int, bool]) -> TestReport | None:
        """Fill `verdicts` for the assert checks from one execution; the zero report of a violation."""
        operands = [expr for _, check in asserts for expr in check[1]]
        nonce = secrets.token_hex(16)
        res = self.execute(code, stdin=nonce + "\n", mode="asserts", files={"tests.json": json.dumps(operands)})
        if res.violation:
            return TestReport(0.0, 0, total, res.status, self.isolation, [res.stderr[-500:]])
        try:
            answers = read_answers(res.stdout, nonce, len(operands))
        except (ProtocolError, ValueError, TypeError, RecursionError, MemoryError) as exc:
            return TestReport(0.0, 0, total, "protocol", self.isolation, reason=str(exc)[:200])
        if any(kind == "violation" for kind, _ in answers.values()):
            return TestReport(0.0, 0, total, "memory", self.isolation, reason="MemoryError")
        first = 0
        for i, check in asserts:
            count = len(check[1])
            verdicts[i] = holds(check[2], {j: answers.get(first + j) for j in range(count)})
            first += count
        return None


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SandboxUnavailable(f"sandbox {key} must be one of {', '.join(allowed)}, got {value!r}")


def _probe(level: str, drop_uid: bool, limits: SandboxLimits) -> tuple[str | None, str]:
    """(the interpreter that runs under `level`, or None; why not), cached per process."""
    key = (level, drop_uid, limits.disk_mb)
    if key not in _probe_cache:
        _probe_cache[key] = _try_level(level, drop_uid, limits)
    return _probe_cache[key]


def _try_level(level: str, drop_uid: bool, limits: SandboxLimits) -> tuple[str | None, str]:
    why = missing_tool(level)
    if why:
        return None, why
    for interpreter in interpreters():
        res = execute(level, interpreter, limits, "print(6 * 7)", mode="stdio", timeout_s=10, drop_uid=drop_uid)
        if res.status == "ok" and res.stdout.strip() == "42":
            return interpreter, ""
        lines = [line for line in (res.stderr or res.status).strip().splitlines() if line.strip()]
        why = lines[-1][:200] if lines else f"exit status {res.returncode}"
    return None, why


def extract_code(completion: str) -> str:
    """The last ```python fenced block (else the last ``` block), else the whole completion."""
    blocks = re.findall(r"```(?:python|py|python3)[^\n]*\n(.*?)```", completion, flags=re.S | re.I)
    if not blocks:
        blocks = re.findall(r"```[^\n]*\n(.*?)```", completion, flags=re.S)
    return blocks[-1] if blocks else completion


_shared: dict[tuple[Any, ...], Sandbox] = {}
_shared_lock = threading.Lock()


def default_sandbox(require: str = "none", **limits: Any) -> Sandbox:
    """A shared Sandbox per set of limits and required level (the isolation probe runs once)."""
    key = (require, *sorted(limits.items()))
    with _shared_lock:
        if key not in _shared:
            _shared[key] = Sandbox(SandboxLimits(**limits), require=require)
        return _shared[key]


def sandbox_summary(since: int = 0) -> list[dict[str, Any]]:
    """`Sandbox.summary()` of every shared sandbox this process executed code in after the execution
    clock read `since` (`usage_mark()`; 0: ever), e.g. for a run folder's sandbox.json."""
    with _shared_lock:
        boxes = [box for box in _shared.values() if box.last_use > since]
    return [box.summary() for box in boxes]
