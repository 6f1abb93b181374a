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

The package, one seam per module: `levels` (the isolation levels, how each starts a program,
the announcement), `limits` (what one execution may use), `harness` (the trusted code that
runs inside, before the program), `runner` (one execution: staging, starting, collecting,
classifying), `cleanup` (process group, throw-away uid, work folder), `protocol` (the answer
lines read back as plain data), `checks` (tests parsed, verdicts computed outside), `box`
(`Sandbox`: level choice, scoring, summary, the shared sandboxes).
"""

from __future__ import annotations

from ticgrpo.rewards.sandbox.box import (
    Sandbox,
    TestReport,
    default_sandbox,
    extract_code,
    sandbox_summary,
    usage_mark,
)
from ticgrpo.rewards.sandbox.checks import parse_test
from ticgrpo.rewards.sandbox.cleanup import remove_tree
from ticgrpo.rewards.sandbox.harness import HARNESS
from ticgrpo.rewards.sandbox.levels import ISOLATION_LEVELS, SandboxUnavailable
from ticgrpo.rewards.sandbox.limits import SandboxLimits
from ticgrpo.rewards.sandbox.protocol import ProtocolError, decode_value
from ticgrpo.rewards.sandbox.runner import ExecResult

__all__ = [
    "HARNESS",
    "ISOLATION_LEVELS",
    "ExecResult",
    "ProtocolError",
    "Sandbox",
    "SandboxLimits",
    "SandboxUnavailable",
    "TestReport",
    "decode_value",
    "default_sandbox",
    "extract_code",
    "parse_test",
    "remove_tree",
    "sandbox_summary",
    "usage_mark",
]
