"""What one execution may use: the limits a `Sandbox` is built with, as the harness sets them."""

from __future__ import annotations

from dataclasses import dataclass


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


def rlimits(limits: SandboxLimits) -> dict[str, int]:
    """The resource limits the harness sets (by `resource` name) before any untrusted line runs."""
    return {
        "RLIMIT_CPU": int(limits.cpu_s),
        "RLIMIT_AS": int(limits.memory_mb) << 20,
        "RLIMIT_FSIZE": int(limits.file_size_mb) << 20,
        "RLIMIT_NPROC": int(limits.max_processes),
        "RLIMIT_NOFILE": int(limits.max_open_files),
        "RLIMIT_CORE": 0,
    }
