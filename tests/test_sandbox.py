"""The code sandbox (ticgrpo.sandbox) against a corpus of hostile programs, at every isolation
level available here ("none" always is): each one is contained and scores 0 where the level
claims containment (and its documented non-containment is asserted where it does not),
correct programs score 1, nothing a program prints can make scoring raise, and training with
a `code_tests` reward goes on through hostile completions."""

from __future__ import annotations

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

from ticgrpo.sandbox import Sandbox, SandboxLimits, SandboxUnavailable, extract_code, parse_test, remove_tree

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
        "deep_tree": DEEP_TREE,
        "many_files": MANY_FILES,
    }


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
    "deep_nesting": "'[' * 100000",
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
        # level none cleans a 3,000-deep tree or 50,000 files off the host's disk: slower there
        slow_cleanup = box.isolation == "none" and name in ("deep_tree", "many_files")
        assert time.monotonic() - start < 2 * LIMITS.timeout_s + (40 if slow_cleanup else 5), name
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
    assert parse_test("assert f(1) == [1, 2]") == ("assert", ["f(1)"], ("compare", [("operand", 0), ("literal", [1, 2])],
                                                                                    ["=="]))
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


def test_training_goes_on_with_hostile_completions(tmp_path, monkeypatch):
    """A short run with the `code_tests` reward whose completions are hostile programs."""
    from ticgrpo.config import load_config
    from ticgrpo.rewards import REWARDS
    from ticgrpo.testing import make_tiny_model, make_tiny_tokenizer
    from ticgrpo.train import Trainer

    programs = [GOOD, "while True:\n    pass\n", "import os\nwhile True:\n    os.fork()\n",
                "print('x' * 10 ** 7)", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
                "import sys\nsys.exit(0)\n", "x = bytearray(8 * 1024 ** 3)\n", "```python\n" + GOOD + "```"]
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
                      eval_rows=[], reward_fns=[(REWARDS.get("code_tests"), 1.0)])
    result = trainer.train()
    assert result.steps == 2
    for metrics in result.history:
        assert metrics["reward_mean"] == pytest.approx(2 / 8)  # GOOD twice in every 8, all else 0
        assert metrics["reward_errors"] == 0
