"""Run untrusted (model-written) Python in a sandbox and score it against test cases.

    box = Sandbox()                                   # isolation: bwrap > unshare > none (probed once)
    box = Sandbox(require="bwrap")                    # SandboxUnavailable (one line) if bwrap cannot run
    report = box.run_tests(code, ["assert add(2, 3) == 5", {"input": "1 2\\n", "output": "3"}])
    report.score, report.passed, report.total, report.status, report.reason, report.isolation

Every execution is a separate process with a scrubbed environment (only PATH, LANG, HOME,
TMPDIR, PYTHONIOENCODING), resource limits set before any untrusted line runs (RLIMIT_CPU,
RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_NPROC, RLIMIT_NOFILE, no core), a cap on the output it may
produce, and a wall-clock timeout after which its whole process group (and, with namespaces,
its whole PID namespace) is SIGKILLed. When running as root, it also runs under a throw-away
uid, so it cannot signal, ptrace or read the files of the trainer and RLIMIT_NPROC really caps
its forks; leftovers of that uid are killed afterwards.

Isolation levels (`Sandbox.isolation`, reported in every result, announced once on stderr):

* ``bwrap``: bubblewrap, ``--unshare-all --die-with-parent --new-session``: new user, PID,
  network (loopback only, nothing listening), IPC, UTS and cgroup namespaces. The filesystem
  is a read-only bind of the Python install (/usr, the interpreter's prefix), a fresh /proc
  that shows only the sandbox's processes, a read-only /dev of null/zero/full/random/urandom,
  and one size-limited tmpfs (``disk_mb``) holding /sandbox (the cwd), /tmp and /dev/shm.
  No file of the host is visible, nothing the program writes reaches the host's disk.
* ``unshare``: ``unshare --user --map-root-user --net --pid --fork --kill-child --mount
  --mount-proc``, then the trusted harness builds the same filesystem as bwrap itself
  (read-only binds, one size-limited tmpfs, ``pivot_root``, the old root detached) and drops
  every capability (bounding set included) and sets no_new_privs before the program runs.
* ``none``: only the limits, the scrubbed environment, a temporary cwd, a new session and
  (as root) the throw-away uid. The program sees the host's files and processes with the
  permissions of its uid (the trainer's own without root) and can open network connections.

Scoring (`run_tests`): tests are ``assert`` statements or ``{"input", "output"}`` pairs.

* stdin/stdout pairs: the program runs once per pair with ``input`` on stdin; the test passes
  when its exit status is 0 and its stdout equals ``output`` (trailing whitespace of each
  line and trailing blank lines ignored). The comparison happens outside the sandbox.
* ``assert <test>``: the program is loaded once; the sandbox evaluates only the *operands*
  of the test (each side of a comparison, each term of ``and``/``or``/``not``, or the
  whole expression for a bare truth test), with the builtins as they were before the program
  ran. Each value must be plain data (exact built-in types) and crosses the boundary as
  JSON (floats as text, so ``inf``/``nan`` survive), tagged with a per-run nonce; literals
  never enter the sandbox. The comparison (``==`` by exact type, numbers across int/float),
  truthiness, ``and``/``or``/``not`` are computed by the trainer, so a custom ``__eq__``, a
  patched ``bool`` or ``repr``, fake "PASS" lines or an early exit cannot make a test pass.
  Exactly one answer per operand is accepted; anything malformed (a duplicate, an unknown
  kind, a non-integer index, a 5,000-digit integer, a nesting too deep, ...) scores 0 with
  ``status="protocol"`` and the reason in ``report.reason``: it never raises.

Score = passed / total, and 0 on any violation: timeout, CPU/file-size limit signal, output
cap exceeded, MemoryError, a broken answer protocol, or a sandbox failure. `Sandbox.summary()`
counts the statuses and reasons of every scored program.
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
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ISOLATION_LEVELS = ("bwrap", "unshare", "none")  # strongest first
_UID_RANGE = (1_500_000_000, 1_600_000_000)  # throw-away uids (no passwd entry needed)
_MAX_DEPTH = 20  # nesting of an answer value
_MAX_INT_DIGITS = 4300  # Python's own default int<->str limit
_DEVICES = ("null", "zero", "full", "random", "urandom")


class SandboxUnavailable(ValueError):
    """The isolation level asked for (or required as a minimum) cannot run here; one line."""


@dataclass
class SandboxLimits:
    timeout_s: float = 5.0  # wall clock, whole execution
    cpu_s: int = 5  # RLIMIT_CPU (SIGXCPU, then SIGKILL)
    memory_mb: int = 512  # RLIMIT_AS
    file_size_mb: int = 4  # RLIMIT_FSIZE (SIGXFSZ)
    disk_mb: int = 64  # the one tmpfs for /sandbox, /tmp, /dev/shm (bwrap, unshare); RAM, on top of memory_mb
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
    status: str  # ok | the violation that zeroed the score (timeout, protocol, memory, ...) | no_tests
    isolation: str
    details: list[str] = field(default_factory=list)
    reason: str = ""  # why a violation zeroed the score, e.g. "answer 0: unknown kind 'x'"


class ProtocolError(ValueError):
    """An answer line from the sandbox that is not well-formed plain data."""


# The trusted side of every execution (stdlib only), run as `python -I -S -B -c HARNESS mode
# limits setup`. It reads its files (from inherited fds or the cwd), builds the filesystem at
# level unshare ("jail"), sets the resource limits, then runs solution.py; in "asserts" mode it
# afterwards evaluates each operand and writes `<nonce> <json [index, kind, payload]>` lines
# to the channel (its original stdout; the program's own stdout is redirected to stderr).
HARNESS = r"""
import json, os, resource, sys
mode, limits, setup = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
files = {}
for name, fd in setup["fds"].items():
    with os.fdopen(fd, "rb") as f:
        files[name] = f.read()
for name in setup["local"]:
    with open(name, "rb") as f:
        files[name] = f.read()

def jail(cfg):
    import ctypes, platform
    libc = ctypes.CDLL(None, use_errno=True)
    def check(rc, what):
        if rc != 0:
            err = ctypes.get_errno()
            raise OSError(err, "sandbox setup: %s: %s" % (what, os.strerror(err)))
    def b(s):
        return None if s is None else s.encode()
    def mount(src, dst, fstype, flags, data=None):
        check(libc.mount(b(src), b(dst), b(fstype), ctypes.c_ulong(flags), b(data)), "mount " + dst)
    RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, BIND, REC, PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
    def bind_ro(src, dst):
        mount(src, dst, None, BIND | REC)
        kept, flags = 0, os.statvfs(dst).f_flag
        for st, ms in ((os.ST_NOSUID, NOSUID), (os.ST_NODEV, NODEV), (os.ST_NOEXEC, NOEXEC),
                       (os.ST_NOATIME, 1024), (os.ST_NODIRATIME, 2048), (os.ST_RELATIME, 1 << 21)):
            kept |= ms if flags & st else 0
        mount(None, dst, None, REMOUNT | BIND | RDONLY | kept)  # locked flags must be kept
    root = cfg["root"]
    mount(None, "/", None, REC | PRIVATE)
    mount("tmpfs", root, "tmpfs", NOSUID | NODEV, "size=%d,mode=755" % cfg["size"])
    for path, kind, target in cfg["tree"]:
        dst = root + path
        if kind == "link":
            os.symlink(target, dst)
        else:
            os.makedirs(dst, exist_ok=True)
            bind_ro(path, dst)
    os.mkdir(root + "/proc")
    mount("proc", root + "/proc", "proc", NOSUID | NODEV | NOEXEC)
    os.makedirs(root + "/dev", exist_ok=True)
    for dev in cfg["devices"]:
        open(root + "/dev/" + dev, "w").close()
        mount("/dev/" + dev, root + "/dev/" + dev, None, BIND)
    os.symlink("/proc/self/fd", root + "/dev/fd")
    os.makedirs(root + "/sandbox/.tmp")
    os.chmod(root + "/sandbox/.tmp", 0o1777)
    os.symlink("/sandbox/.tmp", root + "/tmp")
    os.symlink("/sandbox/.tmp", root + "/dev/shm")
    for name, data in files.items():
        with open(root + "/sandbox/" + name, "wb") as f:
            f.write(data)
    os.chdir(root)
    os.mkdir(".old")
    pivot_root = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}[platform.machine()]
    check(libc.syscall(pivot_root, b".", b".old"), "pivot_root")
    os.chroot(".")
    check(libc.umount2(b"/.old", 2), "detach the old root")  # MNT_DETACH
    os.rmdir("/.old")
    os.chdir("/sandbox")
    cap = 0  # drop every capability for good: the bounding set, so that an exec regains none
    while libc.prctl(24, cap, 0, 0, 0) == 0:  # PR_CAPBSET_DROP until EINVAL
        cap += 1
    check(libc.prctl(38, 1, 0, 0, 0), "no_new_privs")  # PR_SET_NO_NEW_PRIVS
    header, data = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()
    check(libc.capset(header, data), "capset")

if setup["jail"]:
    jail(setup["jail"])
    del jail
for name, value in limits.items():
    resource.setrlimit(getattr(resource, name), (value, value))
src = files["solution.py"].decode("utf-8")
if mode == "stdio":
    del json, limits, mode, setup, files
    sys.argv = ["solution.py"]
    exec(compile(src, "solution.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    raise SystemExit(0)
import builtins, math
nonce = sys.stdin.readline().strip()
exprs = json.loads(files["tests.json"].decode("utf-8"))
del files
# everything the answers depend on is bound now, before the program can patch it
_write, _type, _dumps, _ch, _eval, _compile, _repr = os.write, type, json.dumps, os.dup(1), eval, compile, repr
_builtins = dict(vars(builtins))
os.dup2(2, 1)
def plain(v, depth=0, _type=type, _repr=repr, _str=str, _hex=bytes.hex, _isfinite=math.isfinite,
          _seqs=(list, tuple, set, frozenset), _dict=dict, _len=len):
    t = _type(v)
    if v is None or t is bool:
        return v
    if t is int:
        return ["int", _str(v)]
    if t is float:
        return ["float", _repr(v)]
    if t is str:
        return ["str", v]
    if t is bytes:
        return ["bytes", _hex(v)]
    if t is complex:
        return ["complex", [_repr(v.real), _repr(v.imag)]]
    if depth < 20 and t in _seqs:
        return [t.__name__, [plain(x, depth + 1) for x in v]]
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
env = dict(ns)
env["__builtins__"] = _builtins
for i, expr in enumerate(exprs):
    try:
        answer(i, "value", plain(_eval(_compile(expr, "test", "eval"), env)))
    except MemoryError:
        answer(i, "violation", "MemoryError")
    except BaseException as exc:
        answer(i, "error", _type(exc).__name__)
os._exit(0)
"""

_probe_cache: dict[str, tuple[str | None, str]] = {}  # level-drop_uid -> (interpreter or None, why not)
_announced: set[str] = set()
_announce_lock = threading.Lock()


def _interpreters() -> list[str]:
    found = []
    for cand in (os.path.realpath(sys.executable), shutil.which("python3"), "/usr/bin/python3"):
        if cand and os.path.isfile(cand) and os.path.realpath(cand) not in found:
            found.append(os.path.realpath(cand))
    return found


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _announce(level: str, why_weaker: str) -> None:
    """One stderr line (and a log record) per level, the first time a sandbox uses it."""
    with _announce_lock:
        if level in _announced:
            return
        _announced.add(level)
    what = {"bwrap": "bubblewrap namespaces, no host files, no network",
            "unshare": "unshare namespaces + read-only jail, no host files, no network",
            "none": "limits only: the program can read what its uid can read and open network connections"}[level]
    line = f"ticgrpo sandbox: isolation {level} ({what})" + (f"; stronger levels failed: {why_weaker}"
                                                              if why_weaker else "")
    log.info(line)  # info, not warning: logging's last-resort handler would print it a second time
    print(line, file=sys.stderr, flush=True)


class Sandbox:
    """Sandboxed execution with `limits`; `isolation` is "auto" (best available) or a level;
    `require` is the weakest level accepted (SandboxUnavailable otherwise)."""

    def __init__(self, limits: SandboxLimits | None = None, isolation: str = "auto",
                 drop_uid: bool | None = None, require: str = "none") -> None:
        self.limits = limits or SandboxLimits()
        self.drop_uid = _is_root() if drop_uid is None else (drop_uid and _is_root())
        for key, value in (("isolation", isolation), ("require", require)):
            allowed = ("auto", *ISOLATION_LEVELS) if key == "isolation" else ISOLATION_LEVELS
            if value not in allowed:
                raise SandboxUnavailable(f"sandbox {key} must be one of {', '.join(allowed)}, got {value!r}")
        self._counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        acceptable = ISOLATION_LEVELS[: ISOLATION_LEVELS.index(require) + 1]
        levels = acceptable if isolation == "auto" else (isolation,)
        failures = []
        for level in levels:
            interpreter, why = self._probe(level)
            if interpreter is not None:
                self.isolation, self.interpreter = level, interpreter
                break
            failures.append(f"{level}: {why}")
        else:
            wanted = f"isolation {isolation!r}" if isolation != "auto" else f"isolation {require!r} or stronger"
            raise SandboxUnavailable(f"sandbox: {wanted} is not available here ({'; '.join(failures)}); install "
                                     f"bubblewrap (apt-get install bubblewrap) or lower sandbox_require")
        if self.isolation not in acceptable:
            raise SandboxUnavailable(f"sandbox: isolation {self.isolation!r} is weaker than the required {require!r}")
        _announce(self.isolation, "; ".join(failures))

    # ------------------------------------------------------------------ availability

    def _probe(self, level: str) -> tuple[str | None, str]:
        """(the interpreter that runs under `level`, or None; why not), cached per process."""
        key = f"{level}-{self.drop_uid}-{self.limits.disk_mb}"
        if key not in _probe_cache:
            tool = {"bwrap": "bwrap", "unshare": "unshare"}.get(level)
            why = f"{tool} is not installed" if tool and not shutil.which(tool) else ""
            found = None
            for interp in _interpreters() if not why else []:
                self.isolation, self.interpreter = level, interp
                res = self.execute("print(6 * 7)", mode="stdio", timeout_s=10)
                if res.status == "ok" and res.stdout.strip() == "42":
                    found = interp
                    break
                lines = [ln for ln in (res.stderr or res.status).strip().splitlines() if ln.strip()]
                why = lines[-1][:200] if lines else f"exit status {res.returncode}"
            _probe_cache[key] = (found, why)
        return _probe_cache[key]

    # ------------------------------------------------------------------ one execution

    def _tree(self) -> list[list[str]]:
        """The read-only part of the sandbox's filesystem: [path, "link", target] | [path, "dir", ""]."""
        tree = [["/usr", "dir", ""]]
        for top in ("/bin", "/lib", "/lib64", "/lib32", "/sbin"):
            if os.path.islink(top):
                tree.append([top, "link", os.readlink(top)])
            elif os.path.isdir(top):
                tree.append([top, "dir", ""])
        prefix = os.path.dirname(os.path.dirname(self.interpreter))
        if not any(prefix == t or prefix.startswith(t + "/") for t, kind, _ in tree if kind == "dir"):
            tree.append([prefix, "dir", ""])
        return tree

    def _bwrap(self, argv: list[str], fds: dict[str, int]) -> list[str]:
        cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--as-pid-1"]
        for path, kind, target in self._tree():
            cmd += ["--symlink", target, path] if kind == "link" else ["--ro-bind", path, path]
        cmd += ["--proc", "/proc", "--size", str(int(self.limits.disk_mb) << 20), "--tmpfs", "/sandbox",
                "--perms", "1777", "--dir", "/sandbox/.tmp", "--symlink", "/sandbox/.tmp", "/tmp",
                "--tmpfs", "/dev"]
        for dev in _DEVICES:
            cmd += ["--dev-bind", f"/dev/{dev}", f"/dev/{dev}"]
        cmd += ["--symlink", "/proc/self/fd", "/dev/fd", "--symlink", "/sandbox/.tmp", "/dev/shm",
                "--remount-ro", "/dev"]
        for name, fd in fds.items():
            cmd += ["--ro-bind-data", str(fd), f"/sandbox/{name}"]
        return [*cmd, "--chdir", "/sandbox", "--", *argv]

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
        harness protocol of `run_tests`) in a fresh sandbox; never raises for what the code does."""
        timeout = self.limits.timeout_s if timeout_s is None else timeout_s
        uid = random.randrange(*_UID_RANGE) if self.drop_uid else None
        contents = {"solution.py": code, **(files or {})}
        start = time.perf_counter()
        workdir, fds = None, {}
        try:
            setup: dict[str, Any] = {"fds": {}, "local": [], "jail": None}
            env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/sandbox", "TMPDIR": "/tmp",
                   "PYTHONIOENCODING": "utf-8"}
            if self.isolation == "none":
                workdir = _make_workdir(uid)
                for name, text in contents.items():
                    Path(workdir, name).write_text(text, encoding="utf-8")
                    if uid is not None:
                        os.chown(os.path.join(workdir, name), uid, uid)
                setup["local"] = list(contents)
                env.update(HOME=workdir, TMPDIR=workdir)
            else:  # the files travel as memfds: nothing of the host's disk is shared with the program
                for name, text in contents.items():
                    fds[name] = _memfd(name, text.encode("utf-8"))
                setup["local"] = list(contents) if self.isolation == "bwrap" else []
                if self.isolation == "unshare":
                    setup["fds"] = dict(fds)
                    setup["jail"] = {"root": "/tmp", "size": int(self.limits.disk_mb) << 20,
                                     "tree": self._tree(), "devices": list(_DEVICES)}
            argv = [self.interpreter, "-I", "-S", "-B", "-c", HARNESS, mode, json.dumps(self._rlimits()),
                    json.dumps(setup)]
            if self.isolation == "bwrap":
                cmd, cwd = self._bwrap(argv, fds), "/"
            elif self.isolation == "unshare":
                cmd, cwd = ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child",
                            "--mount", "--mount-proc", *argv], "/"
            else:
                cmd, cwd = argv, workdir
            kwargs: dict[str, Any] = {}
            if uid is not None:
                kwargs.update(user=uid, group=uid, extra_groups=[])
            try:
                proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
                                        pass_fds=tuple(fds.values()), **kwargs)
            except OSError as exc:
                return ExecResult("sandbox_error", None, "", f"cannot start the sandbox: {exc}",
                                  time.perf_counter() - start, self.isolation)
            for fd in fds.values():
                os.close(fd)
            fds = {}
            out, err, status = self._communicate(proc, stdin, timeout)
            rc = proc.returncode
            if status == "ok" and rc is not None and rc != 0:
                # bwrap/unshare report a killed child as 128+signal
                status = "signal" if rc < 0 or (self.isolation != "none" and rc > 128) else "error"
            return ExecResult(status, rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"),
                              time.perf_counter() - start, self.isolation)
        finally:
            for fd in fds.values():
                os.close(fd)
            if uid is not None:
                _kill_uid(uid)
            if workdir is not None:
                remove_tree(workdir)

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
        """Score `code` against `tests` (see the module docstring); never raises for what the
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

    def _score(self, code: str, checks: list[tuple]) -> TestReport:
        total = len(checks)
        if total == 0:
            return TestReport(0.0, 0, 0, "no_tests", self.isolation)
        passed, details = 0, []
        asserts = [(i, c) for i, c in enumerate(checks) if c[0] == "assert"]
        if asserts:
            operands = [expr for _, c in asserts for expr in c[1]]
            nonce = secrets.token_hex(16)
            res = self.execute(code, stdin=nonce + "\n", mode="asserts", files={"tests.json": json.dumps(operands)})
            if res.violation:
                return TestReport(0.0, 0, total, res.status, self.isolation, [res.stderr[-500:]])
            try:
                answers = _read_answers(res.stdout, nonce, len(operands))
            except (ProtocolError, ValueError, TypeError, RecursionError, MemoryError) as exc:
                return TestReport(0.0, 0, total, "protocol", self.isolation, reason=str(exc)[:200])
            if any(kind == "violation" for kind, _ in answers.values()):
                return TestReport(0.0, 0, total, "memory", self.isolation, reason="MemoryError")
            first = 0
            for i, check in asserts:
                values = {j: answers.get(first + j) for j in range(len(check[1]))}
                first += len(check[1])
                ok = _holds(check[2], values)
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


# ---------------------------------------------------------------------- the answer protocol

def _read_answers(stdout: str, nonce: str, count: int) -> dict[int, tuple[str, Any]]:
    """index -> ("value", decoded) | ("error", name) | ("violation", what); ProtocolError on
    anything that is not exactly one well-formed answer per index."""
    answers: dict[int, tuple[str, Any]] = {}
    for line in stdout.splitlines():
        tag, _, payload = line.partition(" ")
        if tag != nonce:
            continue
        try:
            item = json.loads(payload)
        except ValueError:
            raise ProtocolError("an answer line is not JSON") from None
        if type(item) is not list or len(item) != 3:
            raise ProtocolError("an answer is not [index, kind, payload]")
        idx, kind, body = item
        if kind == "violation":
            answers[-1] = ("violation", str(body)[:100])
            continue
        if type(idx) is not int or not 0 <= idx < count:
            raise ProtocolError(f"an answer index is not one of 0..{count - 1}")
        if idx in answers:
            raise ProtocolError(f"answer {idx} came twice")
        if kind == "value":
            answers[idx] = ("value", decode_value(body))
        elif kind == "error" and type(body) is str:
            answers[idx] = ("error", body[:100])
        else:
            raise ProtocolError(f"answer {idx} has an unknown kind {str(kind)[:40]!r}")
    return answers


def decode_value(tagged: Any, depth: int = 0) -> Any:
    """Plain data from its JSON form (see HARNESS.plain); ProtocolError on anything else."""
    if tagged is None or type(tagged) is bool:
        return tagged
    if depth > _MAX_DEPTH:
        raise ProtocolError("a value is nested too deeply")
    if type(tagged) is not list or len(tagged) != 2 or type(tagged[0]) is not str:
        raise ProtocolError("a value is not a [kind, body] pair")
    kind, body = tagged
    if kind in ("int", "float", "str", "bytes") and type(body) is not str:
        raise ProtocolError(f"a {kind} value is not text")
    if kind == "int":
        if len(body) > _MAX_INT_DIGITS or not re.fullmatch(r"-?[0-9]+", body):
            raise ProtocolError("an int value is not a decimal integer of at most 4300 digits")
        return int(body)
    if kind == "float":
        return _float(body)
    if kind == "str":
        return body
    if kind == "bytes":
        return bytes.fromhex(body)
    if kind == "complex":
        if type(body) is not list or len(body) != 2 or not all(type(x) is str for x in body):
            raise ProtocolError("a complex value is not [real, imag]")
        return complex(_float(body[0]), _float(body[1]))
    if type(body) is not list:
        raise ProtocolError(f"a {kind[:20]!r} value has no item list")
    if kind == "dict":
        if not all(type(kv) is list and len(kv) == 2 for kv in body):
            raise ProtocolError("a dict value is not a list of [key, value] pairs")
        try:
            return {decode_value(k, depth + 1): decode_value(v, depth + 1) for k, v in body}
        except TypeError:
            raise ProtocolError("a dict key is unhashable") from None
    containers = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}
    if kind not in containers:
        raise ProtocolError(f"unknown value kind {kind[:20]!r}")
    try:
        return containers[kind](decode_value(x, depth + 1) for x in body)
    except TypeError:
        raise ProtocolError(f"a {kind} item is unhashable") from None


def _float(text: str) -> float:
    if len(text) > 40 or not re.fullmatch(r"-?(inf|nan|[0-9.e+-]+)", text):
        raise ProtocolError("a float value is not a float")
    try:
        return float(text)
    except ValueError:
        raise ProtocolError("a float value is not a float") from None


# ---------------------------------------------------------------------- tests: parsed, checked

_MISSING = object()
_COMPARE = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
            ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not"}


def parse_test(test: Any) -> tuple:
    """("assert", [operand expressions for the sandbox], formula) | ("stdio", input, output).

    formula: ("compare", [term, ...], [op, ...]) | ("not", f) | ("and" | "or", [f, ...]) |
    ("truth", term); term: ("literal", value) | ("operand", j) (the j-th expression's value)."""
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
    operands: list[str] = []

    def term(node: ast.AST) -> tuple:
        value = _literal(node)
        if value is not _MISSING:
            return ("literal", value)
        operands.append(ast.unparse(node))
        return ("operand", len(operands) - 1)

    def formula(node: ast.AST) -> tuple:
        if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
            return ("compare", [term(n) for n in (node.left, *node.comparators)],
                    [_COMPARE[type(op)] for op in node.ops])
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return ("not", formula(node.operand))
        if isinstance(node, ast.BoolOp):
            return ("and" if isinstance(node.op, ast.And) else "or", [formula(v) for v in node.values])
        return ("truth", term(node))

    return ("assert", operands, formula(tree.body[0].test))


def _literal(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _MISSING


class _Unanswered(Exception):
    """An operand the program did not answer with a value (it raised, exited, or is missing)."""


def _holds(formula: tuple, answers: dict[int, tuple[str, Any] | None]) -> bool:
    """The test's verdict, computed here from plain data (never raises)."""
    def value(t: tuple) -> Any:
        if t[0] == "literal":
            return t[1]
        got = answers.get(t[1])
        if got is None or got[0] != "value":
            raise _Unanswered
        return got[1]

    def truth(f: tuple) -> bool:
        kind = f[0]
        if kind == "not":
            return not truth(f[1])
        if kind == "and":
            return all(truth(g) for g in f[1])
        if kind == "or":
            return any(truth(g) for g in f[1])
        if kind == "truth":
            return bool(value(f[1]))
        terms, ops = f[1], f[2]
        left = value(terms[0])
        for op, t in zip(ops, terms[1:], strict=True):
            right = value(t)
            if not _compare(left, op, right):
                return False
            left = right
        return True

    try:
        return truth(formula)
    except (_Unanswered, TypeError, ValueError, OverflowError, RecursionError):
        return False


def _compare(a: Any, op: str, b: Any) -> bool:
    if op in ("==", "!="):
        return _same(a, b) == (op == "==")
    if op in ("is", "is not"):  # None/True/False are the only identities that survive the boundary
        same = a is b if a is None or b is None or type(a) is bool or type(b) is bool else _same(a, b)
        return same == (op == "is")
    if op in ("in", "not in"):
        if isinstance(b, (str, bytes)):
            found = type(a) is type(b) and a in b
        else:
            found = isinstance(b, (list, tuple, set, frozenset, dict)) and any(_same(a, x) for x in b)
        return found == (op == "in")
    return bool({"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]) if _ordered(a, b) else False


def _ordered(a: Any, b: Any) -> bool:
    numbers = (int, float)
    return (isinstance(a, numbers) and isinstance(b, numbers)) or type(a) is type(b)


def _same(got: Any, expected: Any) -> bool:
    """Equality by exact type, deep (True is not 1), numbers across int/float (nan != nan, as in Python)."""
    numbers = (int, float)
    if type(got) in numbers and type(expected) in numbers and bool not in (type(got), type(expected)):
        return got == expected
    if type(got) is not type(expected):
        return False
    if isinstance(got, (list, tuple)):
        return len(got) == len(expected) and all(_same(x, y) for x, y in zip(got, expected, strict=True))
    if isinstance(got, dict):
        return got.keys() == expected.keys() and all(_same(got[k], expected[k]) for k in got)
    if isinstance(got, complex):
        return got == expected
    return got == expected


def _normalise(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()).rstrip()


# ---------------------------------------------------------------------- processes and files

def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, 0)  # no MFD_CLOEXEC: the child inherits it through pass_fds
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _make_workdir(uid: int | None) -> str:
    """A fresh folder for level none; with a throw-away uid under a folder that uid can enter
    (a 0700 TMPDIR would lock it out)."""
    candidates = [tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm"] if uid is not None else [None]
    for base in candidates:
        if base is None or (os.path.isdir(base) and os.stat(base).st_mode & stat.S_IXOTH):
            workdir = tempfile.mkdtemp(prefix="ticgrpo-sandbox-", dir=base)
            if uid is not None:
                os.chown(workdir, uid, uid)
            return workdir
    return tempfile.mkdtemp(prefix="ticgrpo-sandbox-")


def remove_tree(path: str) -> bool:
    """Delete `path` whatever the program left in it (any depth, any number of files, modes it
    removed); never raises. False (and a log line) if something is still there."""
    with contextlib.suppress(Exception):
        # fd-relative and non-recursive in C: a 3,000-deep tree is no RecursionError, and
        # paths longer than PATH_MAX still go
        subprocess.run(["chmod", "-R", "u+rwx", "--", path], capture_output=True, timeout=120)
        subprocess.run(["rm", "-rf", "--one-file-system", "--", path], capture_output=True, timeout=120)
    if os.path.lexists(path):
        with contextlib.suppress(BaseException):
            shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        log.warning("sandbox: could not remove its work folder %s", path)
        return False
    return True


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
_default_lock = threading.Lock()


def default_sandbox(require: str = "none", **limits: Any) -> Sandbox:
    """A shared Sandbox per set of limits and required level (the isolation probe runs once)."""
    key = (require, *sorted(limits.items()))
    with _default_lock:
        if key not in _default:
            _default[key] = Sandbox(SandboxLimits(**limits), require=require)
        return _default[key]


def sandbox_summary() -> list[dict[str, Any]]:
    """`Sandbox.summary()` of every shared sandbox this process used (e.g. for a run folder's sandbox.json)."""
    with _default_lock:
        boxes = list(_default.values())
    return [box.summary() for box in boxes]
