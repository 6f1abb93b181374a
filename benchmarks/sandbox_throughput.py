"""Sandboxed executions per second vs a plain `subprocess.run([python, -c, code])`.

    python benchmarks/sandbox_throughput.py --n 40 --workers 1
    python benchmarks/sandbox_throughput.py --n 40 --workers 2 --isolation none

Both sides run the same small correct program (and, for the sandbox, score it against two
assert tests and one stdin/stdout test = 2 executions per completion); the sandbox pays for
process start-up in namespaces, the harness, the throw-away uid, and the memfds + tmpfs
(bwrap, unshare: the jail is built per execution) or the temp folder (none).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ticgrpo.rewards.sandbox import Sandbox, SandboxLimits

CODE = """
def add(a, b):
    return a + b

if __name__ == "__main__":
    import sys
    data = sys.stdin.read().split()
    if data:
        print(add(*map(int, data)))
"""
TESTS = ["assert add(2, 3) == 5", "assert add(-1, 1) == 0", {"input": "2 3\n", "output": "5"}]


def rate(fn, n: int, workers: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda _: fn(), range(n)))
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="executions per measurement")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--isolation", default="auto", choices=["auto", "bwrap", "unshare", "none"])
    args = parser.parse_args()
    box = Sandbox(SandboxLimits(), isolation=args.isolation)
    python = box.interpreter

    def plain() -> None:
        subprocess.run([python, "-c", CODE], input="2 3\n", capture_output=True, text=True, check=True)

    def sandboxed() -> None:
        res = box.execute(CODE, stdin="2 3\n")
        assert res.status == "ok" and res.stdout.strip() == "5", res

    def scored() -> None:
        assert box.run_tests(CODE, TESTS).score == 1.0

    for warm_up in (plain, sandboxed, scored):
        warm_up()
    r_plain = rate(plain, args.n, args.workers)
    r_box = rate(sandboxed, args.n, args.workers)
    r_scored = rate(scored, args.n, args.workers)
    print(f"isolation: {box.isolation}  interpreter: {python}  drop_uid: {box.drop_uid}  workers: {args.workers}")
    print(f"plain subprocess.run        : {r_plain:7.1f} executions/s")
    print(f"sandboxed execute           : {r_box:7.1f} executions/s   ratio sandbox/plain = {r_box / r_plain:.2f}")
    print(f"sandboxed run_tests (3 tests): {r_scored:7.1f} completions/s (2 executions each)")


if __name__ == "__main__":
    main()
