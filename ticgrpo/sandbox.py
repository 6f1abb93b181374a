"""Run untrusted (model-written) Python in a sandbox and score it against test cases.

    box = Sandbox()                                   # isolation: bwrap > unshare > none (probed once)
    report = box.run_tests(code, ["assert add(2, 3) == 5", {"input": "1 2\\n", "output": "3"}])
    report.score, report.passed, report.total, report.status, report.isolation

Every execution is a separate process that starts in a fresh temporary folder with a scrubbed
environment (no secrets: only PATH/LANG/HOME), resource limits set before any untrusted line
runs (RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_NPROC, RLIMIT_NOFILE), a cap on the output
it may produce, and a wall-clock timeout after which its whole process group (and, with
namespaces, its whole PID namespace) is SIGKILLed. When running as root, the process also
runs under a dedicated throw-away uid, so it cannot signal, ptrace or read the files of the
trainer and RLIMIT_NPROC really caps its forks; leftovers of that uid are killed afterwards.

Isolation levels (`Sandbox.isolation`, reported in every result):

* ``bwrap``: bubblewrap with ``--unshare-all --die-with-parent --new-session``: new user,
  PID, network (loopback only, nothing listening), IPC, UTS and cgroup namespaces; the
  filesystem is only a read-only bind of the Python install (/usr), an empty tmpfs /tmp and
  the work folder; no other file of the host is visible.
* ``unshare``: ``unshare --user --map-root-user --net --pid --fork --mount --mount-proc``: no
  network and no view of the host's processes, but the host filesystem is visible (with the
  sandbox uid's permissions).
* ``none``: only the limits, the scrubbed environment, the temporary cwd, a new session and
  (as root) the throw-away uid. The program can open network connections and read world-
  readable files; without root it runs under the caller's uid. A warning is logged once.

Scoring (`run_tests`): tests are ``assert`` statements or ``{"input", "output"}`` pairs.

* stdin/stdout pairs: the program runs once per pair with ``input`` on stdin; the test passes
  when its exit status is 0 and its stdout equals ``output`` (trailing whitespace of each
  line and trailing blank lines ignored). The comparison happens outside the sandbox.
* ``assert <expr> == <literal>`` (or ``<literal> == <expr>``): the program is loaded once
  and each ``<expr>`` is evaluated after it; only the *value* (plain Python data, exact
  built-in types) comes back, over a channel tagged with a per-run nonce, and is compared
  with the literal outside the sandbox. The expected values never enter the sandbox, exactly
  one answer per test is accepted (duplicates, e.g. from a forked child or a forged line,
  are a violation), so exiting early, patching builtins or ``==``, printing fake "PASS" lines
  or writing to the channel cannot make a test pass.
* any other ``assert <expr>``: ``bool(<expr>)`` is evaluated in the sandbox and must come back
  as True. This verdict is computed inside the untrusted process, so a program that
  deliberately tampers with the harness can fake it; prefer the two forms above.

Score = passed / total, and 0 on any violation: timeout, CPU/file-size limit signal, output
cap exceeded, MemoryError, a broken answer protocol, or a sandbox failure.
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import os
import random
import re
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ISOLATION_LEVELS = ("bwrap", "unshare", "none")
_UID_RANGE = (1_500_000_000, 1_600_000_000)  # throw-away uids (no passwd entry needed)


@dataclass
class SandboxLimits:
    timeout_s: float = 5.0  # wall clock, whole execution
    cpu_s: int = 5  # RLIMIT_CPU (SIGXCPU, then SIGKILL)
    memory_mb: int = 512  # RLIMIT_AS
    file_size_mb: int = 4  # RLIMIT_FSIZE (SIGXFSZ)
    max_processes: int = 16  # RLIMIT_NPROC (per uid: a real cap only with the throw-away uid)
    max_open_files: int = 64  # RLIMIT_NOFILE
    max_output_bytes: int = 64_000  # stdout + stderr; more is a violation


@dataclass
class ExecResult:
    status: str  # ok | error (nonzero exit) | timeout | output_limit | signal | sandbox_error
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    isolation: str

    @property
    def violation(self) -> bool:
        return self.status in ("timeout", "output_limit", "signal", "sandbox_error")


@dataclass
class TestReport:
    score: float
    passed: int
    total: int
    status: str  # ok | the violation that zeroed the score | no_tests
    isolation: str
    details: list[str] = field(default_factory=list)


# The trusted side of every execution (stdlib only), run with `python -I -S -B -c HARNESS`.
# It sets the resource limits, then runs solution.py; in "asserts" mode it afterwards
# evaluates each test expression and writes `<nonce> <index> <json>` lines to the channel
# (its original stdout; the program's own stdout is redirected to stderr).
HARNESS = r"""
import json, os, resource, sys
limits = json.loads(sys.argv[2])
for name, value in limits.items():
    resource.setrlimit(getattr(resource, name), (value, value))
mode = sys.argv[1]
src = open("solution.py", encoding="utf-8").read()
if mode == "stdio":
    del json, limits, mode
    sys.argv = ["solution.py"]
    exec(compile(src, "solution.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    raise SystemExit(0)
nonce = sys.stdin.readline().strip()
exprs = json.load(open("tests.json", encoding="utf-8"))
_write, _type, _dumps, _ch, _eval, _compile = os.write, type, json.dumps, os.dup(1), eval, compile
os.dup2(2, 1)
# builtins are bound now, before the program can patch them
def plain(v, depth=0, _type=type, _repr=repr, _plain=(int, float, str, bool, type(None), complex, bytes),
          _seqs=(list, tuple, set, frozenset), _dict=dict, _name=lambda t: t.__name__):
    t = _type(v)
    if t in _plain:
        return ["p", _repr(v)]
    if depth < 20 and t in _seqs:
        return [_name(t), [plain(x, depth + 1) for x in v]]
    if depth < 20 and t is _dict:
        return ["dict", [[plain(k, depth + 1), plain(x, depth + 1)] for k, x in v.items()]]
    raise TypeError("not plain data")
def answer(i, kind, payload):
    _write(_ch, (nonce + " " + _dumps([i, kind, payload]) + "\n").encode())
ns = {"__name__": "__main__", "__builtins__": __builtins__}
try:
    exec(compile(src, "solution.py", "exec"), ns)
except MemoryError:
    answer(-1, "violation", "MemoryError")
except BaseException as exc:
    sys.stderr.write("solution raised %s\n" % _type(exc).__name__)
for i, (kind, expr) in enumerate(exprs):
    try:
        value = _eval(_compile(expr, "test", "eval"), ns)
        answer(i, "value", plain(value if kind == "value" else bool(value)))
    except MemoryError:
        answer(i, "violation", "MemoryError")
    except BaseException as exc:
        answer(i, "error", _type(exc).__name__)
os._exit(0)
"""

_probe_cache: dict[str, tuple[str, list[str]] | None] = {}
_warned_none = False


def _interpreters() -> list[str]:
    found = []
    for cand in (os.path.realpath(sys.executable), shutil.which("python3"), "/usr/bin/python3"):
        if cand and os.path.isfile(cand) and os.path.realpath(cand) not in found:
            found.append(os.path.realpath(cand))
    return found


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


class Sandbox:
    """Sandboxed execution with `limits`; `isolation` is "auto" (best available) or a level."""

    def __init__(self, limits: SandboxLimits | None = None, isolation: str = "auto",
                 drop_uid: bool | None = None) -> None:
        self.limits = limits or SandboxLimits()
        self.drop_uid = _is_root() if drop_uid is None else (drop_uid and _is_root())
        levels = ISOLATION_LEVELS if isolation == "auto" else (isolation,)
        if isolation != "auto" and isolation not in ISOLATION_LEVELS:
            raise ValueError(f"sandbox isolation must be auto or one of {ISOLATION_LEVELS}, got {isolation!r}")
        for level in levels:
            probe = self._probe(level)
            if probe is not None:
                self.isolation, self.interpreter = level, probe
                break
        else:
            raise RuntimeError(f"sandbox: isolation {isolation!r} is not available on this machine")
        if self.isolation == "none":
            global _warned_none
            if not _warned_none:
                _warned_none = True
                log.warning("sandbox: neither bubblewrap nor unshare works here; running code with resource "
                            "limits only (isolation: none): no network or filesystem isolation")
                print("warning: code sandbox isolation is 'none' (no bwrap/unshare): limits and env scrub only",
                      file=sys.stderr)

    # ------------------------------------------------------------------ availability

    def _probe(self, level: str) -> str | None:
        """The interpreter that runs under `level` (cached per process), or None."""
        key = f"{level}-{self.drop_uid}"
        if key not in _probe_cache:
            _probe_cache[key] = None
            if level != "none" and not shutil.which("bwrap" if level == "bwrap" else "unshare"):
                return None
            for interp in _interpreters():
                self.isolation, self.interpreter = level, interp
                res = self.execute("print(6 * 7)", mode="stdio", timeout_s=10)
                if res.status == "ok" and res.stdout.strip() == "42":
                    _probe_cache[key] = interp
                    break
        return _probe_cache[key]

    # ------------------------------------------------------------------ one execution

    def _wrap(self, argv: list[str], workdir: str) -> tuple[list[str], str]:
        """The command line for the isolation level, and the cwd to start it in."""
        if self.isolation == "bwrap":
            prefix = os.path.dirname(os.path.dirname(self.interpreter))
            cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session",
                   "--ro-bind", "/usr", "/usr"]
            for top in ("bin", "lib", "lib64", "lib32", "sbin"):
                path = f"/{top}"
                if os.path.islink(path):
                    cmd += ["--symlink", os.readlink(path), path]
                elif os.path.isdir(path):
                    cmd += ["--ro-bind", path, path]
            if not prefix.startswith("/usr"):
                cmd += ["--ro-bind", prefix, prefix]
            cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--bind", workdir, "/sandbox",
                    "--chdir", "/sandbox", "--setenv", "HOME", "/sandbox", "--"]
            return cmd + argv, "/"
        if self.isolation == "unshare":
            return ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child",
                    "--mount", "--mount-proc", *argv], workdir
        return argv, workdir

    def _rlimits(self) -> dict[str, int]:
        lim = self.limits
        return {
            "RLIMIT_CPU": int(lim.cpu_s),
            "RLIMIT_AS": int(lim.memory_mb) << 20,
            "RLIMIT_FSIZE": int(lim.file_size_mb) << 20,
            "RLIMIT_NPROC": int(lim.max_processes),
            "RLIMIT_NOFILE": int(lim.max_open_files),
            "RLIMIT_CORE": 0,
        }

    def execute(self, code: str, stdin: str = "", mode: str = "stdio", files: dict[str, str] | None = None,
                timeout_s: float | None = None) -> ExecResult:
        """Run `code` as solution.py (mode "stdio": as a script reading `stdin`; "asserts": the
        harness protocol of `run_tests`) in a fresh temporary folder; never raises for what the
        code does."""
        timeout = self.limits.timeout_s if timeout_s is None else timeout_s
        uid = random.randrange(*_UID_RANGE) if self.drop_uid else None
        workdir = tempfile.mkdtemp(prefix="ticgrpo-sandbox-")
        start = time.perf_counter()
        try:
            Path(workdir, "solution.py").write_text(code, encoding="utf-8")
            for name, text in (files or {}).items():
                Path(workdir, name).write_text(text, encoding="utf-8")
            if uid is not None:
                for path in [workdir, *[os.path.join(workdir, n) for n in os.listdir(workdir)]]:
                    os.chown(path, uid, uid)
            argv = [self.interpreter, "-I", "-S", "-B", "-c", HARNESS, mode, json.dumps(self._rlimits())]
            cmd, cwd = self._wrap(argv, workdir)
            env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "PYTHONIOENCODING": "utf-8"}
            kwargs: dict[str, Any] = {}
            if uid is not None:
                kwargs.update(user=uid, group=uid, extra_groups=[])
            try:
                proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, start_new_session=True, close_fds=True, **kwargs)
            except OSError as exc:
                return ExecResult("sandbox_error", None, "", f"cannot start the sandbox: {exc}",
                                  time.perf_counter() - start, self.isolation)
            out, err, status = self._communicate(proc, stdin, timeout)
            rc = proc.returncode
            if status == "ok" and rc is not None and rc != 0:
                # bwrap/unshare report a killed child as 128+signal
                status = "signal" if rc < 0 or (self.isolation != "none" and rc > 128) else "error"
            return ExecResult(status, rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"),
                              time.perf_counter() - start, self.isolation)
        finally:
            if uid is not None:
                _kill_uid(uid)
            shutil.rmtree(workdir, ignore_errors=True)

    def _communicate(self, proc: subprocess.Popen, stdin: str, timeout: float) -> tuple[bytes, bytes, str]:
        deadline = time.monotonic() + timeout
        cap = self.limits.max_output_bytes
        bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
        status = "ok"
        with contextlib.suppress(OSError):
            proc.stdin.write(stdin.encode("utf-8"))
        with contextlib.suppress(OSError):
            proc.stdin.close()
        sel = selectors.DefaultSelector()
        for stream in bufs:
            os.set_blocking(stream.fileno(), False)
            sel.register(stream, selectors.EVENT_READ)
        exited_at = None
        while sel.get_map():
            now = time.monotonic()
            if now > deadline:
                status = "timeout"
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > 0.5:
                break  # something that outlived the main process holds the pipes open
            for key, _ in sel.select(timeout=0.05):
                try:
                    chunk = os.read(key.fileobj.fileno(), 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                bufs[key.fileobj] += chunk
            if sum(len(b) for b in bufs.values()) > cap:
                status = "output_limit"
                break
        sel.close()
        _killpg(proc)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in bufs:
            stream.close()
        return bytes(bufs[proc.stdout][:cap]), bytes(bufs[proc.stderr][:cap]), status

    # ------------------------------------------------------------------ scoring

    def run_tests(self, code: str, tests: list[Any]) -> TestReport:
        """Score `code` against `tests` (see the module docstring); never raises for what the code does."""
        checks = [parse_test(t) for t in tests]
        total = len(checks)
        if total == 0:
            return TestReport(0.0, 0, 0, "no_tests", self.isolation)
        passed, details = 0, []
        asserts = [(i, c) for i, c in enumerate(checks) if c[0] in ("value", "truth")]
        if asserts:
            nonce = secrets.token_hex(16)
            exprs = [[c[0], c[1]] for _, c in asserts]
            res = self.execute(code, stdin=nonce + "\n", mode="asserts", files={"tests.json": json.dumps(exprs)})
            if res.violation:
                return TestReport(0.0, 0, total, res.status, self.isolation, [res.stderr[-500:]])
            answers: dict[int, list] = {}
            for line in res.stdout.splitlines():
                tag, _, payload = line.partition(" ")
                if tag != nonce:
                    continue
                try:
                    idx, kind, value = json.loads(payload)
                except (ValueError, TypeError):
                    return TestReport(0.0, 0, total, "protocol", self.isolation, ["garbled answer"])
                if idx in answers or kind == "violation":
                    status = "protocol" if idx in answers else "memory"
                    return TestReport(0.0, 0, total, status, self.isolation, [f"answer {idx}: {kind}"])
                answers[idx] = [kind, value]
            for j, (i, check) in enumerate(asserts):
                got = answers.get(j)
                ok = got is not None and got[0] == "value" and _same(_unplain(got[1]), check[2])
                passed += ok
                details.append(f"test {i}: {'pass' if ok else 'fail'}")
        for i, check in enumerate(checks):
            if check[0] != "stdio":
                continue
            res = self.execute(code, stdin=check[1], mode="stdio")
            if res.violation:
                return TestReport(0.0, 0, total, res.status, self.isolation, [res.stderr[-500:]])
            ok = res.status == "ok" and _normalise(res.stdout) == _normalise(check[2])
            passed += ok
            details.append(f"test {i}: {'pass' if ok else 'fail'}")
        return TestReport(passed / total, passed, total, "ok", self.isolation, details)


_MISSING = object()


def parse_test(test: Any) -> tuple:
    """("value", expr, expected) | ("truth", expr, True) | ("stdio", input, output)."""
    if isinstance(test, dict):
        if set(test) - {"input", "output"} or "output" not in test:
            raise ValueError(f"a stdin/stdout test needs keys 'input' and 'output', got {sorted(test)}")
        return ("stdio", str(test.get("input") or ""), str(test["output"]))
    if not isinstance(test, str):
        raise ValueError(f"a test must be an assert statement or an {{input, output}} pair, got {test!r}")
    try:
        tree = ast.parse(test.strip())
    except SyntaxError as exc:
        raise ValueError(f"test {test!r} is not valid Python: {exc.msg}") from None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        raise ValueError(f"test {test!r} must be a single assert statement")
    node = tree.body[0].test
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq):
        for expr, other in ((node.left, node.comparators[0]), (node.comparators[0], node.left)):
            expected = _literal(other)
            if expected is not _MISSING:
                return ("value", ast.unparse(expr), expected)
    return ("truth", ast.unparse(node), True)


def _literal(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _MISSING


def _unplain(tagged: Any) -> Any:
    kind, body = tagged
    if kind == "p":
        return ast.literal_eval(body)
    if kind == "dict":
        return {_unplain(k): _unplain(v) for k, v in body}
    items = [_unplain(x) for x in body]
    return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[kind](items)


def _same(got: Any, expected: Any) -> bool:
    try:
        return (type(got) is type(expected) and got == expected) or (
            isinstance(got, (int, float)) and isinstance(expected, (int, float))
            and not isinstance(got, bool) and not isinstance(expected, bool) and got == expected)
    except Exception:
        return False


def _normalise(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()).rstrip()


def _killpg(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of the throw-away `uid` (daemons that escaped the process group)."""
    pid = os.fork()
    if pid == 0:  # child: become the uid, kill(-1) reaches exactly its processes
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            for _ in range(3):
                try:
                    os.kill(-1, signal.SIGKILL)
                except ProcessLookupError:
                    break
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def extract_code(completion: str) -> str:
    """The last ```python fenced block (else the last ``` block), else the whole completion."""
    blocks = re.findall(r"```(?:python|py|python3)[^\n]*\n(.*?)```", completion, flags=re.S | re.I)
    if not blocks:
        blocks = re.findall(r"```[^\n]*\n(.*?)```", completion, flags=re.S)
    return blocks[-1] if blocks else completion


_default: dict[tuple, Sandbox] = {}


def default_sandbox(**limits: Any) -> Sandbox:
    """A shared Sandbox per set of limits (the isolation probe runs once)."""
    key = tuple(sorted(limits.items()))
    if key not in _default:
        _default[key] = Sandbox(SandboxLimits(**limits))
    return _default[key]
