"""scripts/gpu_grid.sh's log transfer: the packed logs of a comparison let `ticgrpo compare` resume
elsewhere (every finished run skipped) and `ticgrpo report` rebuild its report, with no checkpoint."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ticgrpo.cli", *args], cwd=ROOT, capture_output=True, text=True)


def test_packed_logs_resume_the_comparison_elsewhere(tmp_path: Path):
    compare = ["compare", "--config", str(ROOT / "configs" / "tiny.yaml"), "--algorithms", "grpo,tic_grpo",
               "--seeds", "0,1", "--no-report", "--set", "max_steps=2", "--set", "logging.progress_bar=false"]
    first = _cli(*compare, "--out", str(tmp_path / "gpu"))
    assert first.returncode == 0, first.stderr[-2000:]
    packed = tmp_path / "gpu-seed0.tar.gz"
    result = subprocess.run(["bash", "scripts/gpu_grid.sh", "pack", str(tmp_path / "gpu"), str(packed)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0 and "packed 4 finished runs" in result.stdout, result.stderr
    with tarfile.open(packed) as tar:
        names = tar.getnames()
    assert not [n for n in names if "checkpoints" in n or "final" in n]  # logs only
    assert "comparison.json" in names and len([n for n in names if n.endswith("metrics.jsonl")]) == 4
    unpacked = subprocess.run(["bash", "scripts/gpu_grid.sh", "unpack", str(packed), str(tmp_path / "here")],
                              cwd=ROOT, capture_output=True, text=True)
    assert unpacked.returncode == 0, unpacked.stderr
    again = _cli(*compare, "--out", str(tmp_path / "here"))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "4 finished, 0 to resume, 0 to restart, 0 new" in again.stdout and again.stdout.count("skip ") == 4
    report = _cli("report", str(tmp_path / "here"))
    assert report.returncode == 0, report.stderr[-2000:]
    assert (tmp_path / "here" / "report.md").is_file()


def test_an_unknown_mode_is_a_usage_error():
    result = subprocess.run(["bash", "scripts/gpu_grid.sh", "nope"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "one of prepare, stage, run, pack, unpack" in result.stderr
