"""Run folders: a fresh start never takes over an earlier run, one run at a time writes a folder,
a resume says what it resumes (or that the run finished) and refuses a config that would change
the run's trajectory. Real `ticgrpo train` runs on the tiny in-process model (configs/tiny.yaml)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ticgrpo.cli import main
from ticgrpo.train import run_folder

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["logging.progress_bar=false", "logging.plot=false", "eval.num_examples=2", "eval.ks=[]",
         "rollout.max_new_tokens=6", "checkpoint.every_steps=1"]


def _args(out: Path, *extra: str, steps: int = 2) -> list[str]:
    args = ["train", "--config", str(ROOT / "configs" / "tiny.yaml"), "--output-dir", str(out)]
    for item in [*QUICK, f"max_steps={steps}"]:
        args += ["--set", item]
    return [*args, *extra]


def _tree(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file's mtime and bytes, except the lock file (it holds the pid of the last run)."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != run_folder.LOCK_FILE}


def _error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ticgrpo train: error")]
    assert len(err) == 1, err
    return err[0]


def test_a_fresh_start_refuses_a_folder_holding_a_run_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(out)) == 0
    before = _tree(out)
    capsys.readouterr()
    assert main(_args(out)) == 2
    line = _error_line(capsys)
    assert str(out) in line and "--resume" in line and "--overwrite" in line
    assert _tree(out) == before
    # An evaluation log alone (no metrics.jsonl) is a run's output too: never kept or appended to.
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "eval.jsonl").write_text('{"step": 0, "accuracy": 0.5}\n')
    assert main(_args(lone)) == 2
    assert "eval.jsonl" in _error_line(capsys)
    assert (lone / "eval.jsonl").read_text() == '{"step": 0, "accuracy": 0.5}\n'


def test_overwrite_deletes_nothing_before_the_new_run_has_loaded(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(out)) == 0
    before = _tree(out)
    # The new run fails while loading its model: the earlier run is untouched.
    assert main(_args(out, "--overwrite", "--set", f"model.name={tmp_path / 'no-such-model'}")) == 2
    _error_line(capsys)
    assert _tree(out) == before
    (out / "notes.txt").write_text("mine")  # a file that is no run output stays
    assert main(_args(out, "--overwrite", steps=1)) == 0
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1]  # the new run's records only
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0001"]
    assert json.loads((out / "finished.json").read_text())["step"] == 1
    assert (out / "notes.txt").read_text() == "mine"


def test_the_python_api_protects_the_folder_too(tmp_path):
    from ticgrpo.train import train

    config = {"output_dir": str(tmp_path / "run"), "max_steps": 1,
              "model": {"name": "tiny-test", "chat_template": False},
              "data": {"train": {"task": "arithmetic", "level": 2, "num_train": 20, "num_eval": 4}, "eval": None},
              "rollout": {"prompts_per_step": 2, "num_generations": 2, "max_new_tokens": 4},
              "logging": {"progress_bar": False, "plot": False}, "eval": {"every_steps": 0}}
    first = train(config)
    metrics = (tmp_path / "run" / "metrics.jsonl").read_bytes()
    with pytest.raises(run_folder.RunFolderError, match="--overwrite"):
        train(config)
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == metrics
    again = train(config, overwrite=True)
    assert first.steps == again.steps == 1


def test_a_second_run_into_a_folder_in_use_is_refused(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "ticgrpo.cli", *_args(out, steps=500)]
    first = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lock, metrics = out / run_folder.LOCK_FILE, out / "metrics.jsonl"
        deadline = time.monotonic() + 240
        while not (metrics.is_file() and lock.is_file() and lock.read_text().strip() == str(first.pid)):
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not start training"
            time.sleep(0.2)
        # Even --overwrite may not touch a folder that a live run writes.
        second = subprocess.run([*cmd, "--overwrite"], env=env, cwd=ROOT, capture_output=True, text=True,
                                timeout=240)
        assert first.poll() is None  # still training, undisturbed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    assert second.returncode == 2, second.stderr[-2000:]
    errors = [line for line in second.stderr.splitlines() if "error" in line]
    assert errors == [f"ticgrpo train: error: {out} is in use by another ticgrpo run (pid {first.pid}); wait for "
                      f"it to end or choose another --output-dir"]
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines() if x.endswith("}")]
    assert steps == list(range(1, len(steps) + 1))  # one run's records, nothing interleaved
    assert yaml.safe_load((out / "config.yaml").read_text())["max_steps"] == 500  # the first run's config


def test_resume_says_what_it_resumes_and_a_finished_run_is_left_alone(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(out)) == 0
    before = _tree(out)
    capsys.readouterr()
    assert main(_args(out, "--resume")) == 0
    assert capsys.readouterr().out.strip() == (f"{out}: the run already finished at step 2; nothing to do "
                                               f"(raise max_steps to train further)")
    assert _tree(out) == before  # no evaluation appended, no checkpoint or final model rewritten
    evals = (out / "eval.jsonl").read_text().splitlines()
    assert main(_args(out, "--resume", steps=3)) == 0  # an extension continues and keeps the logs whole
    printed = capsys.readouterr().out
    assert f"resuming {out} from step 2 (step-0002); training to step 3" in printed
    assert (out / "eval.jsonl").read_text().splitlines()[: len(evals)] == evals
    assert [json.loads(x)["step"] for x in (out / "eval.jsonl").read_text().splitlines()] == [0, 2, 3]
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_resume_with_a_changed_lr_is_refused_unless_allowed_and_then_recorded_and_used(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(out, "--set", "optim.lr=0.001")) == 0
    saved = (out / "config.yaml").read_bytes()
    assert main(_args(out, "--resume", "--set", "optim.lr=0.002", "--set", "seed=5", "--set", "threads=1",
                      steps=3)) == 2
    line = _error_line(capsys)
    assert "optim.lr (0.001 -> 0.002)" in line and "seed (0 -> 5)" in line and "--allow-config-change" in line
    assert "max_steps" not in line and "threads" not in line  # an extension or another thread count: no change
    assert (out / "config.yaml").read_bytes() == saved
    assert not (out / run_folder.CONFIG_CHANGES_FILE).exists()
    assert main(_args(out, "--resume", "--allow-config-change", "--set", "optim.lr=0.002", steps=3)) == 0
    [record] = [json.loads(x) for x in (out / run_folder.CONFIG_CHANGES_FILE).read_text().splitlines()]
    assert record["step"] == 2
    assert record["changes"]["optim.lr"] == {"old": 0.001, "new": 0.002, "neutral": False}
    assert record["changes"]["max_steps"] == {"old": 2, "new": 3, "neutral": True}
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == 0.002
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["lr"] for m in metrics] == [0.001, 0.001, 0.002]  # the new value is the one used


def test_resume_into_another_model_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(out)) == 0
    before = _tree(out)
    for extra in ([], ["--allow-config-change"]):
        assert main(_args(out, "--resume", *extra, "--set", "model.name=smollm2-135m-instruct", steps=3)) == 2
        line = _error_line(capsys)
        assert "model.name ('tiny-test' -> 'smollm2-135m-instruct')" in line and "another --output-dir" in line
        assert _tree(out) == before


def test_a_folder_written_by_an_earlier_version_resumes_without_a_config_change(tmp_path, capsys):
    """config.yaml of earlier versions held `objective_options` / `advantage_options` beside the
    method names and `behavior_correction*` (today: options nested under the method, and
    algorithm.offpolicy_correction). Such a folder resumes as it is: the saved config is read in
    today's form, so none of those keys counts as a change of the trajectory."""
    out = tmp_path / "run"
    assert main(_args(out, "--set", "algorithm.objective={name: grpo, epsilon_high: 0.3}")) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    algo = saved["algorithm"]
    objective = algo["objective"]
    algo["objective"] = objective.pop("name")
    algo["objective_options"] = objective
    algo["advantage"], algo["advantage_options"] = None, {}
    del algo["offpolicy_correction"]
    algo["behavior_correction"], algo["behavior_correction_cap"] = None, 2.0
    (out / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    capsys.readouterr()
    assert main(_args(out, "--resume", "--set", "algorithm.objective={name: grpo, epsilon_high: 0.3}", steps=3)) == 0
    assert f"resuming {out} from step 2" in capsys.readouterr().out
    [record] = [json.loads(x) for x in (out / run_folder.CONFIG_CHANGES_FILE).read_text().splitlines()]
    assert list(record["changes"]) == ["max_steps"]  # the extension, nothing of the old forms
    # a real difference in an option is still one
    assert main(_args(out, "--resume", "--set", "algorithm.objective={name: grpo, epsilon_high: 0.25}",
                      steps=4)) == 2
    assert "algorithm.objective.epsilon_high (0.3 -> 0.25)" in _error_line(capsys)
