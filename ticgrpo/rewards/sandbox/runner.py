"""One execution: the program's files staged for its level, the harness started under the limits,
its output collected (capped, with a wall-clock timeout), its exit classified, everything cleaned up."""

from __future__ import annotations

import contextlib
import json
import os
import random
import selectors
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ticgrpo.rewards.sandbox.cleanup import kill_process_group, kill_uid, remove_tree
from ticgrpo.rewards.sandbox.harness import HARNESS
from ticgrpo.rewards.sandbox.levels import jail_setup, launch_command, readonly_tree
from ticgrpo.rewards.sandbox.limits import SandboxLimits, rlimits

UID_RANGE = (1_500_000_000, 1_600_000_000)  # throw-away uids (no passwd entry needed)
# the whole environment a program gets; HOME and TMPDIR are its work folder at level none
SCRUBBED_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/sandbox", "TMPDIR": "/tmp",
                "PYTHONIOENCODING": "utf-8"}
VIOLATIONS = ("timeout", "output_limit", "signal", "sandbox_error")
_EXITED_GRACE_S = 0.5  # after the main process exits, how long its pipes may stay open (a daemon holds them)


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
        return self.status in VIOLATIONS


@dataclass
class _Staged:
    setup: dict[str, Any]  # what the harness reads: {"fds": name -> fd, "local": [names], "jail": ...}
    env: dict[str, str]
    fds: dict[str, int]  # passed to the child
    workdir: str | None  # the cwd at level none


def execute(level: str, interpreter: str, limits: SandboxLimits, code: str, *, stdin: str = "",
            mode: str = "stdio", files: dict[str, str] | None = None, timeout_s: float | None = None,
            drop_uid: bool = False) -> ExecResult:
    """Run `code` as solution.py at `level` (mode "stdio": as a script reading `stdin`; "asserts":
    the harness's answer protocol); never raises for what the code does."""
    timeout = limits.timeout_s if timeout_s is None else timeout_s
    uid = random.randrange(*UID_RANGE) if drop_uid else None
    start = time.perf_counter()
    with contextlib.ExitStack() as afterwards:
        staged = _stage(level, interpreter, limits, {"solution.py": code, **(files or {})}, uid, afterwards)
        if uid is not None:
            afterwards.callback(kill_uid, uid)  # before the work folder goes: its daemons could still write
        argv = [interpreter, "-I", "-S", "-B", "-c", HARNESS, mode, json.dumps(rlimits(limits)),
                json.dumps(staged.setup)]
        try:
            proc = _start(launch_command(level, argv, staged.fds, interpreter, limits.disk_mb), staged, uid)
        except OSError as exc:
            return ExecResult("sandbox_error", None, "", f"cannot start the sandbox: {exc}",
                              time.perf_counter() - start, level)
        out, err, status = communicate(proc, stdin, timeout, limits.max_output_bytes)
        return ExecResult(_exit_status(level, status, proc.returncode), proc.returncode,
                          out.decode("utf-8", "replace"), err.decode("utf-8", "replace"),
                          time.perf_counter() - start, level)


def _stage(level: str, interpreter: str, limits: SandboxLimits, contents: dict[str, str], uid: int | None,
           afterwards: contextlib.ExitStack) -> _Staged:
    """The program's files where its level reads them; their removal is registered on `afterwards`."""
    env = dict(SCRUBBED_ENV)
    if level == "none":
        workdir = _make_workdir(uid)
        afterwards.callback(remove_tree, workdir)
        for name, text in contents.items():
            Path(workdir, name).write_text(text, encoding="utf-8")
            if uid is not None:
                os.chown(os.path.join(workdir, name), uid, uid)
        env.update(HOME=workdir, TMPDIR=workdir)
        return _Staged({"fds": {}, "local": list(contents), "jail": None}, env, {}, workdir)
    fds: dict[str, int] = {}  # memfds: nothing of the host's disk is shared with the program
    for name, text in contents.items():
        fds[name] = _memfd(name, text.encode("utf-8"))
        afterwards.callback(os.close, fds[name])
    if level == "bwrap":  # bwrap itself binds the fds to /sandbox/<name>
        return _Staged({"fds": {}, "local": list(contents), "jail": None}, env, fds, None)
    jail = jail_setup(readonly_tree(interpreter), limits.disk_mb)
    return _Staged({"fds": dict(fds), "local": [], "jail": jail}, env, fds, None)


def _start(cmd: list[str], staged: _Staged, uid: int | None) -> subprocess.Popen[bytes]:
    as_uid: dict[str, Any] = {} if uid is None else {"user": uid, "group": uid, "extra_groups": []}
    return subprocess.Popen(cmd, cwd=staged.workdir or "/", env=staged.env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            close_fds=True, pass_fds=tuple(staged.fds.values()), **as_uid)


def _exit_status(level: str, status: str, returncode: int | None) -> str:
    if status == "ok" and returncode is not None and returncode != 0:
        # bwrap/unshare report a killed child as 128+signal
        return "signal" if returncode < 0 or (level != "none" and returncode > 128) else "error"
    return status


def communicate(proc: subprocess.Popen[bytes], stdin: str, timeout: float, cap: int) -> tuple[bytes, bytes, str]:
    """(stdout, stderr, "ok" | "timeout" | "output_limit"), each at most `cap` bytes; the process
    group is SIGKILLed afterwards whatever happened."""
    stdin_pipe, stdout_pipe, stderr_pipe = _pipes(proc)
    with contextlib.suppress(OSError):
        stdin_pipe.write(stdin.encode("utf-8"))
    with contextlib.suppress(OSError):
        stdin_pipe.close()
    out_fd, err_fd = stdout_pipe.fileno(), stderr_pipe.fileno()
    buffers = {out_fd: bytearray(), err_fd: bytearray()}
    status = _collect(proc, buffers, time.monotonic() + timeout, cap)
    kill_process_group(proc)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    stdout_pipe.close()
    stderr_pipe.close()
    return bytes(buffers[out_fd][:cap]), bytes(buffers[err_fd][:cap]), status


def _pipes(proc: subprocess.Popen[bytes]) -> tuple[IO[bytes], IO[bytes], IO[bytes]]:
    if proc.stdin is None or proc.stdout is None or proc.stderr is None:
        raise RuntimeError("the sandbox process was started without its three pipes")
    return proc.stdin, proc.stdout, proc.stderr


def _collect(proc: subprocess.Popen[bytes], buffers: dict[int, bytearray], deadline: float, cap: int) -> str:
    selector = selectors.DefaultSelector()
    for fd in buffers:
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    try:
        exited_at = None
        while selector.get_map():
            now = time.monotonic()
            if now > deadline:
                return "timeout"
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > _EXITED_GRACE_S:
                break  # something that outlived the main process holds the pipes open
            for key, _ in selector.select(timeout=0.05):
                _read_into(selector, key.fd, buffers[key.fd])
            if sum(len(b) for b in buffers.values()) > cap:
                return "output_limit"
        return "ok"
    finally:
        selector.close()


def _read_into(selector: selectors.BaseSelector, fd: int, buffer: bytearray) -> None:
    try:
        chunk = os.read(fd, 65536)
    except BlockingIOError:
        return
    if chunk:
        buffer += chunk
    else:
        selector.unregister(fd)


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
