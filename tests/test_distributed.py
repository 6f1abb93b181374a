"""Multi-process training: `accelerate launch` with 2 CPU processes (gloo) takes the same steps as
one process on the same global batch (real subprocesses, real generation, tiny model)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ticgrpo.core.batch import StepNormalizers
from ticgrpo.train.distributed import Distributed

ACCELERATE = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))


def config(out: Path, **algorithm) -> dict:
    return {
        "output_dir": str(out),
        "seed": 3,
        "max_steps": 3,
        "device": "cpu",
        "model": {"name": "tiny-test", "chat_template": False},
        "data": {"train": {"task": "arithmetic", "level": 1, "split": "train", "num_train": 64, "num_eval": 6},
                 "eval": {"task": "arithmetic", "level": 1, "split": "eval", "num_eval": 6}},
        # generation_batch_size = G: one seeded generate call per group, so each group's samples
        # do not depend on how the groups are spread over processes
        "rollout": {"prompts_per_step": 4, "num_generations": 4, "max_new_tokens": 12, "generation_batch_size": 4},
        "algorithm": {"objective": "tic_grpo", "num_iterations": 2, "micro_batch_size": 4,
                      "rewards": [{"name": "math_correctness", "weight": 1.0},
                                  {"name": "answer_format", "weight": 0.5}],
                      **algorithm},
        "optim": {"lr": 1.0e-3, "warmup_steps": 0},
        "eval": {"every_steps": 0, "num_examples": 6, "batch_size": 2},
        "logging": {"progress_bar": False, "plot": False},
        "checkpoint": {"every_steps": 0, "save_final": True},
    }


def run(tmp: Path, name: str, cfg: dict, processes: int) -> Path:
    out = tmp / name
    cfg = {**cfg, "output_dir": str(out)}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    train = ["-m", "ticgrpo.cli", "train", "--config", str(path)]
    if processes == 1:
        cmd = [sys.executable, *train]
    else:
        cmd = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), *train]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def max_param_difference(a: Path, b: Path) -> float:
    wa, wb = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    assert wa.keys() == wb.keys()
    return max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    cfg = config(tmp_path)
    one = run(tmp_path, "one", cfg, 1)
    two = run(tmp_path, "two", cfg, 2)
    # the policy moved, and both runs moved it to the same place
    start = run(tmp_path, "start", {**cfg, "max_steps": 0}, 1)
    assert max_param_difference(one, start) > 1e-3
    assert max_param_difference(one, two) < 1e-6

    m1, m2 = records(one / "metrics.jsonl"), records(two / "metrics.jsonl")
    assert [r["step"] for r in m2] == [1, 2, 3]
    for a, b in zip(m1, m2, strict=True):
        assert b["num_sequences"] == a["num_sequences"] == 16  # summed over the two processes
        for key in ("reward_mean", "completion_length_mean", "loss", "grad_norm", "truncated_frac"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    # evaluation split 3 + 3 over the processes and combined
    e1, e2 = records(one / "eval.jsonl"), records(two / "eval.jsonl")
    assert [r["num_examples"] for r in e2] == [6.0, 6.0]
    for a, b in zip(e1, e2, strict=True):
        assert b["accuracy"] == pytest.approx(a["accuracy"]) and b["reward_mean"] == pytest.approx(a["reward_mean"])
    assert not (two / "metrics.jsonl.tmp").exists() and sorted(p.name for p in two.iterdir()) == sorted(
        p.name for p in one.iterdir())


@pytest.mark.slow
def test_two_processes_batch_level_advantage_and_dynamic_sampling(tmp_path):
    """batch_std normalises by the std of the whole batch (gathered); dynamic sampling keeps
    every process's prompt stream in step even when they need different numbers of rounds."""
    cfg = config(tmp_path, advantage="batch_std", dynamic_sampling=True, dynamic_sampling_max_rounds=3)
    one = run(tmp_path, "one", cfg, 1)
    two = run(tmp_path, "two", cfg, 2)
    m2 = records(two / "metrics.jsonl")
    assert len(m2) == 3 and all(r["groups_generated"] >= 4 for r in m2)
    if records(one / "metrics.jsonl")[0]["sampling_rounds"] == 1 and m2[0]["sampling_rounds"] == 1:
        # no resampling at step 1: the first step is the same computation in both runs
        assert records(one / "metrics.jsonl")[0]["loss"] == pytest.approx(m2[0]["loss"], rel=1e-5, abs=1e-6)


def test_prompts_must_split_evenly(tmp_path, monkeypatch):
    """Checked before the model loads: a one-line ConfigError (exit 2 from the CLI)."""
    from ticgrpo.config import ConfigError
    from ticgrpo.train.trainer import Trainer

    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setattr(Distributed, "from_environment", classmethod(lambda cls, device: cls(0, 3, 0)))
    with pytest.raises(ConfigError, match="multiple of the number of processes"):
        Trainer(config(tmp_path / "x"))


def test_single_process_is_a_no_op():
    d = Distributed()
    assert not d.enabled and d.is_main and d.share([1, 2, 3]) == [1, 2, 3]
    assert d.sum_floats([1.5, 2.0]) == [1.5, 2.0] and d.any_true(False) is False
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert d.normalizers(mask, None) == StepNormalizers.from_mask(mask, None)
    assert d.reduce_metrics({"a": 1.0}) == {"a": 1.0}


def test_shares():
    parts = [Distributed(r, 2).share(list(range(8))) for r in range(2)]
    assert parts == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [Distributed(r, 3).uneven_share(list(range(7))) for r in range(3)] == [[0, 1], [2, 3], [4, 5, 6]]
    with pytest.raises(ValueError, match="cannot be split evenly"):
        Distributed(0, 3).share([1, 2])


@pytest.mark.parametrize(("variable", "name"),
                         [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")])
def test_sharding_launch_configs_are_refused(tmp_path, monkeypatch, variable, name):
    """accelerate launch with an FSDP / DeepSpeed config sets these; the trainer would silently
    replicate instead, so it says what to use."""
    from ticgrpo.config import ConfigError
    from ticgrpo.train.trainer import Trainer

    monkeypatch.setenv(variable, "true")
    with pytest.raises(ConfigError, match=f"does not shard with {name}.*ddp_8gpu.yaml.*TRL plug-in"):
        Trainer(config(tmp_path / "x"))
