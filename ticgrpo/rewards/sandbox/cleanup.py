"""What is left after a program: its process group, the processes of its throw-away uid, its work folder."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess

log = logging.getLogger(__name__)


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


def kill_process_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def kill_uid(uid: int) -> None:
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
