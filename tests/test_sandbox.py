"""The code sandbox (ticgrpo.rewards.sandbox) against a corpus of hostile programs, at every isolation
level available here ("none" always is): each one is contained and scores 0 where the level
claims containment (and its documented non-containment is asserted where it does not),
correct programs score 1, nothing a program prints can make scoring raise, and training with
a `code_tests` reward goes on through hostile completions."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from ticgrpo.rewards.sandbox import (
    Sandbox,
    SandboxLimits,
    SandboxUnavailable,
    default_sandbox,
    extract_code,
    parse_test,
    remove_tree,
)

ROOT = Path(__file__).resolve().parents[1]

SECRET = "ticgrpo-secret-" + secrets.token_hex(8)
MARKER = "ticgrpo-daemon-" + secrets.token_hex(8)
LIMITS = SandboxLimits(timeout_s=1.0, cpu_s=1, memory_mb=256, file_size_mb=1, disk_mb=8, max_processes=8,
                       max_open_files=32, max_output_bytes=20_000)
# both assert forms the issue found hackable: a comparison with a non-literal side, an ordering
TESTS = ["assert add(2, 3) == 5", "assert add(-1, 1) == 0", "assert add(1, 2) == 1 + 2", "assert add(1, 2) > 2",
         {"input": "2 3\n", "output": "5"}]
GOOD = """
def add(a, b):
    return a + b

if __name__ == "__main__":
    import sys
    data = sys.stdin.read().split()
    if data:
        print(add(*map(int, data)))
"""


def _levels() -> list[str]:
    levels = []
    for level in ("bwrap", "unshare", "none"):
        try:
            Sandbox(LIMITS, isolation=level)
            levels.append(level)
        except SandboxUnavailable:
            pass
    return levels


LEVELS = _levels()


@pytest.fixture(scope="module", params=LEVELS)
def box(request) -> Sandbox:
    return Sandbox(LIMITS, isolation=request.param)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Things outside the sandbox that hostile programs go for."""
    root = tmp_path_factory.mktemp("outside")
    os.chmod(root, 0o700)
    secret_file = root / "secret.txt"
    secret_file.write_text(SECRET)
    os.chmod(secret_file, 0o600)
    sentinel = root / "sentinel.txt"
    sentinel.write_text("keep me")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    hits: list[int] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            hits.append(1)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    os.environ["TICGRPO_SECRET"] = SECRET  # the trainer's environment holds a secret
    yield {"root": root, "secret_file": secret_file, "sentinel": sentinel, "port": server.getsockname()[1],
           "hits": hits}
    os.environ.pop("TICGRPO_SECRET", None)
    stop.set()
    thread.join()
    server.close()


def hostile(world: dict) -> dict[str, str]:
    """name → program. Several also define a (wrong) `add` so that the tests get to run."""
    port, outside = world["port"], world["root"]
    leak = "def add(a, b):\n    return None\nprint({!s})\n"
    return {
        "infinite_loop": "while True:\n    pass\n",
        "sleep_forever": "import time\ntime.sleep(1000)\n",
        "loop_in_function": "def add(a, b):\n    while True:\n        pass\n",
        "ignore_signals_and_spin": "import signal\nfor s in (signal.SIGXCPU, signal.SIGTERM, signal.SIGINT):\n"
                                   "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass\n",
        "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        "thread_bomb": "import threading, time\nwhile True:\n"
                       "    threading.Thread(target=time.sleep, args=(100,)).start()\n",
        "memory_bomb": "x = bytearray(8 * 1024 ** 3)\n",
        "memory_creep": "a = []\nwhile True:\n    a.append(' ' * 10 ** 7)\n",
        "huge_stdout": "while True:\n    print('x' * 10000)\n",
        "huge_stderr": "import sys\nwhile True:\n    sys.stderr.write('y' * 10000)\n",
        "huge_file": "with open('big.bin', 'wb') as f:\n    f.write(b'z' * (64 * 1024 * 1024))\n",
        "open_files": "fs = [open('/dev/null') for _ in range(100000)]\n",
        "env_secret": leak.format("__import__('os').environ.get('TICGRPO_SECRET')"),
        "parent_environ": leak.format("open('/proc/%d/environ' % __import__('os').getppid()).read()"),
        "all_environs": "import os\nfor p in os.listdir('/proc'):\n    try:\n"
                        "        print(open('/proc/%s/environ' % p).read())\n    except Exception:\n        pass\n",
        "read_outside_file": leak.format(f"open({str(world['secret_file'])!r}).read()"),
        "read_etc_shadow": leak.format("open('/etc/shadow').read()"),
        "write_outside": f"open({str(outside / 'pwned.txt')!r}, 'w').write('pwned')\n",
        "delete_outside": f"import os\nos.remove({str(world['sentinel'])!r})\n",
        "rmtree_parent_dir": f"import shutil\nshutil.rmtree({str(outside)!r})\n",
        "connect_listener": f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                            "s.sendall(b'leak')\n",
        "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
        "kill_everything": "import os, signal\nos.kill(-1, signal.SIGKILL)\n",
        "kill_self": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
        "background_daemon": "import os, sys\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                             f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60) "
                             f"# {MARKER}'])\n    os._exit(0)\n",
        "exit_zero_before_tests": "import sys\nsys.exit(0)\n",
        "os_exit_zero": "import os\nos._exit(0)\n",
        "exit_code_137": "import os\nos._exit(137)\n",
        "fake_pass_lines": "print('PASS')\nprint('test 0: pass')\nprint('OK 3/3')\n",
        "always_equal": "class A:\n    def __eq__(self, other):\n        return True\n"
                        "def add(a, b):\n    return A()\n",
        "int_subclass_equal": "class I(int):\n    def __eq__(self, other):\n        return True\n"
                              "    __hash__ = int.__hash__\ndef add(a, b):\n    return I(7)\n",
        "patch_builtins": "import builtins\nbuiltins.repr = lambda x: '5'\nbuiltins.type = lambda x: int\n"
                          "def add(a, b):\n    return 'five'\n",
        "patch_harness": "import __main__\n__main__.plain = lambda v, d=0: ['p', 'True']\n"
                         "def add(a, b):\n    return None\n",
        "forge_channel": "import __main__, os, json\nfor i in range(2):\n"
                         "    os.write(__main__._ch, (__main__.nonce + ' ' + json.dumps([i, 'value', ['p', '1']])"
                         " + '\\n').encode())\ndef add(a, b):\n    return 1\n",
        "forge_then_exit": "import __main__, os, json\nfor i in range(2):\n"
                           "    os.write(__main__._ch, (__main__.nonce + ' ' + json.dumps([i, 'value', ['p', '1']])"
                           " + '\\n').encode())\nos._exit(0)\n",
        "fork_to_duplicate_answers": "import os\nos.fork()\ndef add(a, b):\n    return a - b\n",
        "rewrite_tests_file": "open('tests.json', 'w').write('[]')\ndef add(a, b):\n    return None\n",
        "close_channels": "import os\nos.close(1)\nos.close(2)\ndef add(a, b):\n    return None\n",
        "segfault": "import ctypes\nctypes.string_at(0)\n",
        "deep_recursion": "import sys\nsys.setrecursionlimit(10 ** 7)\ndef f(n):\n    return f(n + 1)\nf(0)\n",
        "shell_out": "import os\nos.system('cat /etc/passwd; sleep 100')\n",
        "equal_to_everything": "class A:\n    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = "
                               "lambda self, other: True\n    __bool__ = lambda self: True\n"
                               "    __hash__ = object.__hash__\ndef add(a, b):\n    return A()\n",
        "patch_bool": "import builtins\nbuiltins.bool = lambda x=None: True\ndef add(a, b):\n    return -7\n",
        "patch_comparison_builtins": "import builtins\nbuiltins.int = lambda *a: 5\nbuiltins.abs = lambda x: 0\n"
                                     "def add(a, b):\n    return None\n",
        **{f"forge_{kind}": FORGE.format(payload=payload) for kind, payload in FORGERIES.items()},
    }  # DEEP_TREE and MANY_FILES: test_cleanup_never_raises_and_leaves_nothing (slow to delete at none)


# Forged answer lines written straight to the harness's channel (the nonce is readable in-process).
FORGE = ("import __main__, os, json\n"
         "os.write(__main__._ch, (__main__.nonce + ' ' + {payload} + '\\n').encode())\n"
         "def add(a, b):\n    return a + b\n")
FORGERIES = {
    "unhashable_index": "json.dumps([[0], 'value', ['int', '5']])",
    "unknown_kind": "json.dumps([0, 'weird', 1])",
    "non_literal": "json.dumps([0, 'value', ['float', \"__import__('os').getpid()\"]])",
    "huge_integer": "json.dumps([0, 'value', ['int', '9' * 5000]])",
    "not_a_pair": "json.dumps([0, 'value', ['int']])",
    "deep_nesting": "'[' * 5000",
    "unknown_value_kind": "json.dumps([0, 'value', ['object', []]])",
}
DEEP_TREE = "import os\nfor _ in range(3000):\n    os.mkdir('d')\n    os.chdir('d')\nprint('deep')\n"
MANY_FILES = "for i in range(50000):\n    open('f%d' % i, 'w').close()\nprint('many')\n"


def test_the_corpus_is_large_enough(world):
    assert len(hostile(world)) >= 50


def test_correct_programs_score_one(box):
    assert box.run_tests(GOOD, TESTS).score == 1.0
    noisy = GOOD.replace("return a + b", "print('debug', a, b)\n    return a + b")
    assert box.run_tests(noisy, TESTS[:2]).score == 1.0
    report = box.run_tests("def f(x):\n    return {'k': [x, (x, None)]}\n",
                           ["assert f(1) == {'k': [1, (1, None)]}", "assert f(2)['k'][0] == 2", "assert f(3)"])
    assert (report.score, report.isolation) == (1.0, box.isolation)
    assert box.run_tests("print(input()[::-1])", [{"input": "abc\n", "output": "cba\n\n"}]).score == 1.0
    assert box.run_tests(GOOD.replace("a + b", "a * b"), TESTS).score == 0.0  # wrong answers fail
    assert box.run_tests(GOOD.replace("a + b", "a + b if a > 0 else 9"), TESTS).score == pytest.approx(4 / 5)


def test_hostile_programs_are_contained_and_score_zero(box, world):
    parent = os.getpid()
    isolated = box.isolation != "none"
    private = box.isolation == "bwrap" or box.drop_uid  # outside files invisible or not permitted
    for name, code in hostile(world).items():
        if name == "kill_everything" and not (isolated or box.drop_uid):
            continue  # would signal every process of this user: documented limit of "none" without root
        start = time.monotonic()
        report = box.run_tests(code, TESTS)
        assert report.score == 0.0, (name, report)
        assert time.monotonic() - start < 2 * LIMITS.timeout_s + 5, name
        assert os.getpid() == parent
        if name in ("env_secret", "parent_environ", "all_environs", "read_outside_file", "huge_stdout"):
            plain = box.execute(code, stdin="1 2\n")  # its raw output, as a script
            output = plain.stdout + plain.stderr
            assert len(output.encode()) <= LIMITS.max_output_bytes * 2, name
            if name != "read_outside_file" or private:
                assert SECRET not in output, (name, output[:200])
    assert world["sentinel"].read_text() == "keep me" or not private
    assert not (world["root"] / "pwned.txt").exists() or not private
    if isolated:
        assert world["hits"] == []  # network namespace: the listener on 127.0.0.1 is unreachable
    # "none" cannot stop a connection (documented); everything else above still holds there.
    time.sleep(0.2)
    leftovers = []
    for pid in os.listdir("/proc"):
        try:
            if MARKER in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                leftovers.append(pid)
        except OSError:
            pass
    assert not leftovers or not (isolated or box.drop_uid), leftovers  # no daemon outlives its run


def test_specific_violations_are_reported(box):
    assert box.run_tests("while True:\n    pass\n", TESTS).status in ("timeout", "signal")
    assert box.run_tests("while True:\n    print('x' * 10000)\n", TESTS).status == "output_limit"
    forge = FORGE.format(payload="json.dumps([0, 'value', ['int', '5']])")
    report = box.run_tests(forge, TESTS[:2])  # a second answer to operand 0: zero
    assert (report.status, report.reason, report.score) == ("protocol", "answer 0 came twice", 0.0)
    assert box.run_tests("x = bytearray(8 * 1024 ** 3)\n", TESTS[:1]).status == "memory"


def test_parse_and_extract():
    assert parse_test("assert f(1) == [1, 2]") == (
        "assert", ["f(1)"], ("compare", [("operand", 0), ("literal", [1, 2])], ["=="]))
    assert parse_test("assert 3 == g()") == ("assert", ["g()"], ("compare", [("literal", 3), ("operand", 0)], ["=="]))
    assert parse_test("assert f(1) > 0 and not g(2)") == (
        "assert", ["f(1)", "g(2)"], ("and", [("compare", [("operand", 0), ("literal", 0)], [">"]),
                                            ("not", ("truth", ("operand", 1)))]))
    assert parse_test({"input": "1", "output": "2"}) == ("stdio", "1", "2")
    for bad in ("x = 1", "assert (", {"stdin": "1"}, 3):
        with pytest.raises(ValueError):
            parse_test(bad)
    text = "Here:\n```python\ndef f():\n    return 1\n```\nand\n```python\ndef f():\n    return 2\n```"
    assert extract_code(text) == "def f():\n    return 2\n"
    assert extract_code("def f(): pass") == "def f(): pass"


HONEST_FLOATS = "import math\ndef big():\n    return float('inf')\ndef nan():\n    return float('nan')\n"
FLOAT_TESTS = ["assert big() == 1e999", "assert big() > 10 ** 300", "assert math.isnan(nan())", "assert nan() != nan()",
               "assert [big(), -big()] == [1e999, -1e999]", "assert not nan() == nan()"]


def test_answers_are_plain_data_and_malformed_ones_score_zero(box):
    """inf/nan come back intact; forged answer lines, always-equal objects and a patched bool
    score 0 (forgeries as status protocol, with the reason counted) and never raise."""
    assert box.run_tests(HONEST_FLOATS, FLOAT_TESTS).score == 1.0
    assert box.run_tests(HONEST_FLOATS.replace("'inf'", "'-inf'"), FLOAT_TESTS[:2]).score == 0.0
    for kind, payload in FORGERIES.items():
        report = box.run_tests(FORGE.format(payload=payload), TESTS)
        assert (report.score, report.status) == (0.0, "protocol"), (kind, report)
        assert report.reason, kind
    for name in ("equal_to_everything", "patch_bool"):
        code = hostile({"port": 0, "root": Path("/nonexistent"), "secret_file": "x", "sentinel": "x"})[name]
        report = box.run_tests(code, TESTS)
        assert (report.score, report.status) == (0.0, "ok"), (name, report)
    counted = box.summary()["programs"]
    assert sum(n for status, n in counted.items() if status.startswith("protocol: ")) >= len(FORGERIES)
    assert box.summary()["isolation"] == box.isolation


FILL_DISK = """
import os, tempfile
dirs = ['.', tempfile.gettempdir()] + (['/dev/shm'] if os.path.realpath('/dev/shm').startswith('/sandbox') else [])
written = 0
for d in dirs:
    for i in range(16):
        try:
            with open(os.path.join(d, 'fill%d' % i), 'wb') as f:
                f.write(b'x' * (1 << 20))
            written += 1
        except OSError:
            break
print(written)
"""


def test_writable_space_is_bounded(box):
    """bwrap and unshare: /sandbox, /tmp and /dev/shm share one tmpfs of disk_mb; none has no quota (documented)."""
    res = box.execute(FILL_DISK, timeout_s=20)
    written_mb = int(res.stdout.split()[-1])
    if box.isolation in ("bwrap", "unshare"):
        assert written_mb <= LIMITS.disk_mb, res
    else:
        assert written_mb > LIMITS.disk_mb, res  # RLIMIT_FSIZE caps each file, not their sum


def test_proc_shows_nothing_of_the_trainer(box):
    """No process outside the sandbox is visible (bwrap, unshare), or none whose memory, fds or
    environment can be read (none as root); at none, command lines are visible (documented)."""
    # the probe reports every process of the machine: its output grows with their number, not with hostility
    roomy = Sandbox(dataclasses.replace(LIMITS, max_output_bytes=4_000_000), isolation=box.isolation)
    res = roomy.execute((ROOT / "tests" / "sandbox_corpus" / "proc_probe.py").read_text(), timeout_s=20)
    assert res.status == "ok", res
    seen = json.loads(res.stdout)
    if box.isolation != "none":
        assert seen == {}, seen
        return
    if not box.drop_uid:
        pytest.skip("level none without root runs as the trainer's uid: it can read the trainer's /proc (documented)")
    readable = {pid: got for pid, got in seen.items()
                if any(not str(got[item]).startswith("ERR") for item in ("environ", "mem", "fd"))}
    assert str(os.getpid()) not in readable and readable == {}, readable
    assert any("pytest" in str(got["cmdline"]) for got in seen.values())  # the documented exposure


def _work_folders() -> set[str]:
    found = set()
    for base in {tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm"}:
        with contextlib.suppress(OSError):
            found |= {os.path.join(base, n) for n in os.listdir(base) if n.startswith("ticgrpo-sandbox-")}
    return found


def test_cleanup_never_raises_and_leaves_nothing(box):
    before = _work_folders()
    for code in (DEEP_TREE, MANY_FILES, "import os\nos.mkdir('locked')\nopen('locked/f', 'w').close()\n"
                 "os.chmod('locked', 0)\nos.chmod('.', 0o500)\n"):
        assert box.run_tests(code, TESTS).score == 0.0
    assert _work_folders() - before == set()


def test_remove_tree_takes_any_depth_and_mode(tmp_path):
    base = Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    cwd = os.getcwd()
    try:
        os.chdir(base)
        for _ in range(3000):  # 6,000 characters of path: deeper than PATH_MAX and the recursion limit
            os.mkdir("d")
            os.chdir("d")
    finally:
        os.chdir(cwd)
    (base / "closed").mkdir()
    os.chmod(base / "closed", 0)
    assert remove_tree(str(base)) is True
    assert not base.exists()
    assert remove_tree(str(base)) is True  # already gone: still no error


def _python_in(env: dict, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_level_is_announced_once_and_a_required_level_fails_fast(tmp_path):
    """Without bwrap/unshare on PATH: one stderr line names the level used and why; requiring
    bwrap fails in one line, in Sandbox() and at config validation (before any training)."""
    code = ("from ticgrpo.rewards.sandbox import Sandbox, SandboxUnavailable\n"
            "Sandbox(); Sandbox()\n"
            "try:\n    Sandbox(require='bwrap')\nexcept SandboxUnavailable as exc:\n    print('REFUSED', exc)\n"
            "from ticgrpo.config import ConfigError, load_config\n"
            "try:\n    load_config({'algorithm': {'rewards': [{'name': 'code_tests'}], "
            "'reward_kwargs': {'sandbox_require': 'unshare'}}})\n"
            "except ConfigError as exc:\n    print('CONFIG', exc)\n")
    res = _python_in({"PATH": str(tmp_path)}, code)
    announced = [line for line in res.stderr.splitlines() if line.startswith("ticgrpo sandbox: isolation")]
    assert len(announced) == 1 and "isolation none" in announced[0] and "bwrap is not installed" in announced[0], \
        res.stderr
    refused = [line for line in res.stdout.splitlines() if line.startswith("REFUSED")]
    assert len(refused) == 1 and "'bwrap'" in refused[0] and "install bubblewrap" in refused[0], res.stdout
    assert any(line.startswith("CONFIG") and "unshare" in line for line in res.stdout.splitlines()), res


needs_root = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                                reason="needs root (to run a trainer as an unprivileged user / a throw-away uid)")


@needs_root
def test_a_0700_tmpdir_as_root_keeps_the_strongest_level(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    available = ",".join(LEVELS)
    code = ("from ticgrpo.rewards.sandbox import Sandbox\n"
            f"print(Sandbox().isolation, [Sandbox(isolation=l).run_tests({GOOD!r}, {TESTS!r}).score "
            f"for l in {available!r}.split(',')])\n")
    res = _python_in({"TMPDIR": str(private)}, code)
    assert res.stdout.split()[0] == LEVELS[0], res
    assert "[" + ", ".join(["1.0"] * len(LEVELS)) + "]" in res.stdout, res


@needs_root
def test_a_non_root_trainer_keeps_its_files():
    """A trainer running as nobody (no throw-away uid): at bwrap and unshare its private key and
    repository are out of reach; at none they are not (documented)."""
    python = "/usr/bin/python3"
    if not (os.path.exists(python) and subprocess.run(["which", "setpriv"], capture_output=True).returncode == 0):
        pytest.skip("needs /usr/bin/python3 and setpriv to run a trainer as an unprivileged user")
    home = Path(tempfile.mkdtemp(prefix="ticgrpo-nonroot-", dir="/tmp"))
    try:
        (home / ".ssh").mkdir()
        (home / ".ssh" / "id_rsa").write_text(SECRET)
        (home / "repo").mkdir()
        (home / "repo" / "model.py").write_text("weights = 1\n")
        subprocess.run(["chown", "-R", "65534:65534", str(home)], check=True)
        os.chmod(home, 0o700)
        os.chmod(home / ".ssh" / "id_rsa", 0o600)
        res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "env", f"HOME={home}",
                              f"PYTHONPATH={ROOT}", "PATH=/usr/bin:/bin", python,
                              str(ROOT / "tests" / "sandbox_corpus" / "non_root_trainer.py")],
                             capture_output=True, text=True, timeout=120, cwd="/")
        assert res.returncode == 0, res.stderr[-2000:]
        results = json.loads(res.stdout)
    finally:
        remove_tree(str(home))
    assert results["none"]["drop_uid"] is False
    for level in ("bwrap", "unshare"):
        if "unavailable" in results[level]:
            continue  # the announced fallback; the levels that do run are checked
        assert results[level] == {"drop_uid": False, "key_leaked": False, "source_changed": False}, (level, results)
    assert results["none"]["key_leaked"] and results["none"]["source_changed"]  # documented: runs as the trainer
    assert sum("unavailable" not in results[level] for level in ("bwrap", "unshare")) >= 1, results


def test_training_goes_on_with_hostile_completions(tmp_path, monkeypatch):
    """A short run with the `code_tests` reward whose completions are hostile programs."""
    from ticgrpo.config import load_config
    from ticgrpo.rewards import REWARDS
    from ticgrpo.testing import make_tiny_model, make_tiny_tokenizer
    from ticgrpo.train import Trainer

    # under the default on_reward_error: raise, any of these used to stop the run at step 1
    programs = [GOOD, FORGE.format(payload=FORGERIES["unknown_kind"]), FORGE.format(payload=FORGERIES["huge_integer"]),
                DEEP_TREE, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
                "def add(a, b):\n    return float('nan')\n", "x = bytearray(8 * 1024 ** 3)\n",
                "```python\n" + GOOD + "```"]
    import ticgrpo.rollout.hf as hf_module

    original = hf_module.HFGenerateEngine.generate

    def generate(self, prompts, n, params):
        out = original(self, prompts, n, params)
        out.completions = [programs[i % len(programs)] for i in range(len(out.completions))]
        return out

    monkeypatch.setattr(hf_module.HFGenerateEngine, "generate", generate)
    tok = make_tiny_tokenizer()
    rows = [{"prompt": "Write add(a, b).", "tests": TESTS}] * 4
    cfg = load_config({
        "output_dir": str(tmp_path / "run"), "max_steps": 2, "model": {"name": "x", "chat_template": False},
        "rollout": {"prompts_per_step": 2, "num_generations": 4, "max_new_tokens": 4},
        "algorithm": {"rewards": [{"name": "code_tests"}], "reward_kwargs": {"sandbox_timeout_s": 1}},
        "eval": {"at_start": False, "at_end": False, "every_steps": 0},
        "logging": {"progress_bar": False, "plot": False}, "checkpoint": {"save_final": False},
    })
    trainer = Trainer(cfg, model=make_tiny_model(seed=0, tokenizer=tok), tokenizer=tok, train_rows=rows,
                      eval_rows=[], reward_fns=[(REWARDS.spec("code_tests").fn, 1.0)])
    result = trainer.train()
    assert result.steps == 2
    for metrics in result.history:
        assert metrics["reward_mean"] == pytest.approx(2 / 8)  # GOOD twice in every 8, all else 0
        assert metrics["reward_errors"] == 0
    # the run folder says which isolation level the programs ran at, and how they ended
    [record] = json.loads((tmp_path / "run" / "sandbox.json").read_text())
    assert record["isolation"] == default_sandbox().isolation
    assert sum(record["programs"].values()) >= 2 * 8  # every completion of both steps was scored
