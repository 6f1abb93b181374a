"""CPU threading under load: the OpenMP wait policy that takes effect, and the `threads` setting.

Each check runs in a fresh interpreter: libgomp reads its environment once, when torch loads
it, and the thread count is process-wide. OMP_DISPLAY_ENV=verbose makes libgomp print the
settings it actually uses (GOMP_SPINCOUNT 0 is the passive policy; 300000 is the spinning default).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ticgrpo.cli import main

REPO = Path(__file__).resolve().parent.parent


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT", "LOCAL_WORLD_SIZE")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**clean, **env}, timeout=300, check=True)


def _spin_count(stderr: str) -> str:
    (line,) = [line for line in stderr.splitlines() if "GOMP_SPINCOUNT" in line]
    return line.split("=")[1].strip().strip("'")


def test_importing_ticgrpo_first_makes_openmp_threads_sleep_instead_of_spinning():
    assert _spin_count(_python("import torch", OMP_DISPLAY_ENV="verbose").stderr) == "300000"  # torch alone
    assert _spin_count(_python("import ticgrpo, torch", OMP_DISPLAY_ENV="verbose").stderr) == "0"
    assert _spin_count(_python("from ticgrpo.cli import main; import torch", OMP_DISPLAY_ENV="verbose").stderr) == "0"
    # a policy the user chose is kept
    active = _python("import ticgrpo, torch", OMP_DISPLAY_ENV="verbose", OMP_WAIT_POLICY="ACTIVE").stderr
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in active


TRAINER_THREADS = """
import ticgrpo, torch
from ticgrpo.config import load_config
from ticgrpo.train.trainer import Trainer
Trainer(load_config("configs/tiny.yaml", {overrides!r}))
print(torch.get_num_threads())
"""


@pytest.mark.parametrize(("overrides", "env", "expected"), [
    (["threads=1"], {}, 1),
    ([], {}, len(os.sched_getaffinity(0))),  # auto: the cores this process may use
    ([], {"OMP_NUM_THREADS": "1"}, 1),  # auto keeps what torchrun / the user set
    ([], {"LOCAL_WORLD_SIZE": str(len(os.sched_getaffinity(0)))}, 1),  # shared among local processes
])
def test_trainer_sets_the_cpu_thread_count(overrides, env, expected, tmp_path):
    code = TRAINER_THREADS.format(overrides=[f"output_dir={tmp_path / 'run'}", *overrides])
    assert int(_python(code, **env).stdout.split()[-1]) == expected


@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_bad_threads_value_is_a_one_line_usage_error(value, capsys):
    assert main(["train", "--config", str(REPO / "configs/tiny.yaml"), "--dry-run", "--set", f"threads={value}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "threads must be a positive integer or 'auto'" in err, err
