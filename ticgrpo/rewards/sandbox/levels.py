"""The isolation levels (bwrap > unshare > none): how each one starts a program, the read-only
filesystem the namespaced levels show it, and the one-line announcement of the level in use."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
from typing import Any

log = logging.getLogger(__name__)

ISOLATION_LEVELS = ("bwrap", "unshare", "none")  # strongest first
DEVICES = ("null", "zero", "full", "random", "urandom")
TOOLS = {"bwrap": "bwrap", "unshare": "unshare"}  # the program each namespaced level needs on PATH
_DESCRIPTIONS = {
    "bwrap": "bubblewrap namespaces, no host files, no network",
    "unshare": "unshare namespaces + read-only jail, no host files, no network",
    "none": "limits only: the program can read what its uid can read and open network connections",
}

_announced: set[str] = set()
_announce_lock = threading.Lock()


class SandboxUnavailable(ValueError):
    """The isolation level asked for (or required as a minimum) cannot run here; one line."""


def interpreters() -> list[str]:
    """The Python interpreters a level may run the harness with, the trainer's own first."""
    found: list[str] = []
    for candidate in (os.path.realpath(sys.executable), shutil.which("python3"), "/usr/bin/python3"):
        if candidate and os.path.isfile(candidate) and os.path.realpath(candidate) not in found:
            found.append(os.path.realpath(candidate))
    return found


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def missing_tool(level: str) -> str:
    """Why `level` cannot start here without trying it ("" when its tool is on PATH)."""
    tool = TOOLS.get(level)
    return f"{tool} is not installed" if tool and not shutil.which(tool) else ""


def announce(level: str, why_weaker: str) -> None:
    """One stderr line (and a log record) per level, the first time a sandbox uses it."""
    with _announce_lock:
        if level in _announced:
            return
        _announced.add(level)
    line = f"ticgrpo sandbox: isolation {level} ({_DESCRIPTIONS[level]})"
    if why_weaker:
        line += f"; stronger levels failed: {why_weaker}"
    log.info(line)  # info, not warning: logging's last-resort handler would print it a second time
    # the level decides what a hostile program can reach, so it is shown even without logging set up
    print(line, file=sys.stderr, flush=True)


def readonly_tree(interpreter: str) -> list[list[str]]:
    """The read-only part of a namespaced level's filesystem: [path, "link", target] | [path, "dir", ""]."""
    tree = [["/usr", "dir", ""]]
    for top in ("/bin", "/lib", "/lib64", "/lib32", "/sbin"):
        if os.path.islink(top):
            tree.append([top, "link", os.readlink(top)])
        elif os.path.isdir(top):
            tree.append([top, "dir", ""])
    prefix = os.path.dirname(os.path.dirname(interpreter))
    if not any(prefix == path or prefix.startswith(path + "/") for path, kind, _ in tree if kind == "dir"):
        tree.append([prefix, "dir", ""])
    return tree


def bwrap_command(argv: list[str], fds: dict[str, int], tree: list[list[str]], disk_mb: int) -> list[str]:
    """bubblewrap around `argv`: every namespace, the read-only tree, one `disk_mb` tmpfs, the files as memfds."""
    cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--as-pid-1"]
    for path, kind, target in tree:
        cmd += ["--symlink", target, path] if kind == "link" else ["--ro-bind", path, path]
    cmd += ["--proc", "/proc", "--size", str(int(disk_mb) << 20), "--tmpfs", "/sandbox",
            "--perms", "1777", "--dir", "/sandbox/.tmp", "--symlink", "/sandbox/.tmp", "/tmp",
            "--tmpfs", "/dev"]
    for dev in DEVICES:
        cmd += ["--dev-bind", f"/dev/{dev}", f"/dev/{dev}"]
    cmd += ["--symlink", "/proc/self/fd", "/dev/fd", "--symlink", "/sandbox/.tmp", "/dev/shm",
            "--remount-ro", "/dev"]
    for name, fd in fds.items():
        cmd += ["--ro-bind-data", str(fd), f"/sandbox/{name}"]
    return [*cmd, "--chdir", "/sandbox", "--", *argv]


def unshare_command(argv: list[str]) -> list[str]:
    """unshare around `argv`; the harness then builds the jail itself (see `jail_setup`)."""
    return ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child",
            "--mount", "--mount-proc", *argv]


def jail_setup(tree: list[list[str]], disk_mb: int) -> dict[str, Any]:
    """What the harness's `jail` needs at level unshare: the tmpfs root and size, the tree, the devices."""
    return {"root": "/tmp", "size": int(disk_mb) << 20, "tree": tree, "devices": list(DEVICES)}


def launch_command(level: str, argv: list[str], fds: dict[str, int], interpreter: str, disk_mb: int) -> list[str]:
    """The command line that runs the harness `argv` at `level` (the files as `fds` at bwrap)."""
    if level == "bwrap":
        return bwrap_command(argv, fds, readonly_tree(interpreter), disk_mb)
    if level == "unshare":
        return unshare_command(argv)
    return argv
