"""Checkpoints: a LoRA checkpoint holds the adapter (not the base model) and resumes bit-exactly;
the learning-rate schedule gives the documented lr at every step and resumes bit-identically;
a full disk or a file-size limit is one line and leaves no partial checkpoint; NaN/inf weights
are never saved, never named as the last good checkpoint, and halt the run where they appear.

The disk-full and kill-and-resume tests run the real `ticgrpo train` (python -m ticgrpo.cli) on
the tiny in-process model in subprocesses."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ticgrpo.cli import warnings_to_stderr
from ticgrpo.config import TrainConfig, load_config
from ticgrpo.testing import make_tiny_model, make_tiny_tokenizer
from ticgrpo.train import checkpoint as ckpt
from ticgrpo.train.setup import make_lr_scheduler

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = make_tiny_tokenizer()
LORA = "model.lora={r: 4, lora_alpha: 8}"
REWARD = "algorithm.rewards=[{name: 'test_checkpoint:char_count'}]"  # differs within a group: real gradients
QUIET = [
    REWARD, "checkpoint.save_final=false", "eval.at_start=false", "eval.at_end=false", "eval.every_steps=0",
    "data.eval=null", "logging.progress_bar=false", "logging.plot=false", "rollout.max_new_tokens=8",
]


def _cli(out: Path, *overrides: str, resume: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "ticgrpo.cli", "train", "--config", str(ROOT / "configs" / "tiny.yaml"),
           "--output-dir", str(out)]
    for item in (*QUIET, *overrides):
        cmd += ["--set", item]
    return [*cmd, "--resume"] if resume else cmd


def char_count(prompts, completions, **kwargs):
    """A reward that tells a random model's completions apart (tiny.yaml's math rewards are all 0)."""
    return [len(c) / 10 for c in completions]


def _env(crash: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != ckpt.CRASH_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), *filter(None, [env.get("PYTHONPATH")])])
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    if crash is not None:
        env[ckpt.CRASH_ENV] = crash
    return env


def _run(cmd: list[str], crash: str | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=_env(crash), cwd=ROOT, capture_output=True, text=True, timeout=300, **kwargs)


def _lora_model():
    from peft import LoraConfig, get_peft_model

    base = make_tiny_model(seed=0, tokenizer=TOKENIZER)
    return get_peft_model(base, LoraConfig(target_modules="all-linear", task_type="CAUSAL_LM", r=4, lora_alpha=8))


def _trained(model):
    """`model` after one AdamW step (so the optimizer has state), with its optimizer and scheduler."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


# ---------------------------------------------------------------------- LoRA: the adapter only


def test_lora_checkpoint_holds_the_adapter_not_the_base_model(tmp_path):
    pytest.importorskip("peft")
    model, optimizer, scheduler = _trained(_lora_model())
    path = ckpt.save_checkpoint(tmp_path, 1, model, optimizer, scheduler, {})
    adapter = [p for p in model.parameters() if p.requires_grad]
    adapter_bytes = sum(p.numel() * p.element_size() for p in adapter)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    saved = (path / ckpt.MODEL_FILE).stat().st_size
    # the adapter's bytes plus the safetensors header (one JSON entry per tensor), nothing more
    assert adapter_bytes <= saved <= adapter_bytes + 200 * len(adapter) + 1024, (saved, adapter_bytes)
    assert saved < model_bytes / 4  # the tiny model is 7x its r=4 adapter; a 7B model ~100x
    state = ckpt.read_model_state(path)
    assert set(state) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in name for name in state)
    assert (path / "optimizer.pt").stat().st_size < 3 * adapter_bytes + 8192  # AdamW: two moments per weight
    manifest = json.loads((path / ckpt.MANIFEST).read_text())
    assert manifest["model"]["weights_finite"] is True and manifest["model"]["frozen_parameters"] > 0

    fresh, fresh_optimizer, fresh_scheduler = _trained(_lora_model())  # other adapter values, same base
    ckpt.load_checkpoint(path, fresh, fresh_optimizer, fresh_scheduler)
    for (name, value), (_, restored) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(value, restored), name
    with pytest.raises(ckpt.CheckpointError, match="frozen parameters"):  # a full model is another model
        ckpt.load_checkpoint(path, *_trained(make_tiny_model(seed=0, tokenizer=TOKENIZER)))


def test_lora_kill_and_resume_is_bit_identical(tmp_path):
    pytest.importorskip("peft")
    steps = ["max_steps=3", "checkpoint.every_steps=1", "checkpoint.keep_last=0", LORA]
    reference = _run(_cli(tmp_path / "ref", *steps))
    assert reference.returncode == 0, reference.stderr[-2000:]
    out = tmp_path / "crashy"
    for i, crash in enumerate(["after_optimizer_step:2", "checkpoint_mid_write:1"]):  # step 2, then step 3's save
        killed = _run(_cli(out, *steps, resume=i > 0), crash)
        assert killed.returncode == -signal.SIGKILL, (crash, killed.returncode, killed.stderr[-2000:])
    final = _run(_cli(out, *steps, resume=True))
    assert final.returncode == 0, final.stderr[-2000:]
    ref_path, path = (folder / "checkpoints" / "step-0003" for folder in (tmp_path / "ref", out))
    first = ckpt.read_model_state(tmp_path / "ref" / "checkpoints" / "step-0001")
    assert any(not torch.equal(first[name], value) for name, value in ckpt.read_model_state(ref_path).items())
    ref_model, model = ckpt.read_model_state(ref_path), ckpt.read_model_state(path)
    assert model.keys() == ref_model.keys() and all("lora_" in name for name in model)
    for name, value in ref_model.items():
        assert torch.equal(value, model[name]), name
    ref_opt, opt = ckpt.read_optimizer_state(ref_path), ckpt.read_optimizer_state(path)
    assert ref_opt["state"].keys() == opt["state"].keys() and ref_opt["state"]
    for key, state in ref_opt["state"].items():
        for name, value in state.items():
            assert torch.equal(value, opt["state"][key][name]), (key, name)


def test_full_model_checkpoint_is_safetensors_with_tied_weights_once(tmp_path):
    model, optimizer, scheduler = _trained(make_tiny_model(seed=0, tokenizer=TOKENIZER))
    assert model.lm_head.weight is model.model.embed_tokens.weight  # the tiny model ties them
    path = ckpt.save_checkpoint(tmp_path, 1, model, optimizer, scheduler, {})
    assert not (path / ckpt.LEGACY_MODEL_FILE).exists()
    manifest = json.loads((path / ckpt.MANIFEST).read_text())
    assert manifest["model"]["aliases"] == {"lm_head.weight": "model.embed_tokens.weight"}
    assert (path / ckpt.MODEL_FILE).stat().st_size < sum(p.numel() * 4 for p in model.parameters()) + 8192
    for name in ("optimizer.pt", "scheduler.pt", "rng.pt"):  # no pickle that can run code
        torch.load(path / name, weights_only=True)
    fresh = _trained(make_tiny_model(seed=1, tokenizer=TOKENIZER))
    ckpt.load_checkpoint(path, *fresh)
    for (name, value), (_, restored) in zip(model.state_dict().items(), fresh[0].state_dict().items(), strict=True):
        assert torch.equal(value, restored), name
    assert fresh[0].lm_head.weight is fresh[0].model.embed_tokens.weight  # still tied


def _legacy_checkpoint(output_dir: Path, step: int, model, optimizer, scheduler) -> Path:
    """A checkpoint as ticgrpo wrote them before format 2 (model.pt, a pickled rng.pt)."""
    import hashlib
    import random

    import numpy as np

    path = ckpt.checkpoint_root(output_dir) / f"step-{step:04d}"
    path.mkdir(parents=True)
    torch.save(model.state_dict(), path / "model.pt")
    torch.save(optimizer.state_dict(), path / "optimizer.pt")
    torch.save(scheduler.state_dict(), path / "scheduler.pt")
    torch.save({"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
               path / "rng.pt")
    (path / "state.json").write_text(json.dumps({"step": step}))
    files = {p.name: {"size": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
             for p in sorted(path.iterdir())}
    (path / ckpt.MANIFEST).write_text(json.dumps({"step": step, "files": files}))
    return path


def test_format_1_checkpoints_load_and_one_with_nan_weights_is_never_the_latest(tmp_path, capsys, caplog):
    model, optimizer, scheduler = _trained(make_tiny_model(seed=0, tokenizer=TOKENIZER))
    good = _legacy_checkpoint(tmp_path, 1, model, optimizer, scheduler)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    _legacy_checkpoint(tmp_path, 2, model, optimizer, scheduler)
    with warnings_to_stderr():  # what `ticgrpo` does while a command runs
        assert ckpt.latest_checkpoint(tmp_path) == good
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: skipping corrupt checkpoint: ") and "step-0002" in err[0]
    assert "NaN or inf" in err[0]
    caplog.clear()
    assert ckpt.latest_checkpoint(tmp_path) == good  # a library call: logged, nothing printed
    assert capsys.readouterr().err == "" and "step-0002" in caplog.records[0].getMessage()
    assert ckpt.latest_checkpoint(tmp_path, quiet=True) == good and len(caplog.records) == 1
    fresh = _trained(make_tiny_model(seed=1, tokenizer=TOKENIZER))
    assert ckpt.load_checkpoint(good, *fresh)["step"] == 1
    assert torch.equal(fresh[0].model.layers[1].mlp.down_proj.weight, model.model.layers[1].mlp.down_proj.weight)


# ---------------------------------------------------------------------- disk full


def _assert_one_line_write_error(run: subprocess.CompletedProcess, out: Path, reason: str) -> str:
    err = run.stderr.strip().splitlines()
    assert run.returncode == ckpt.CheckpointWriteError.exit_code, run.stderr[-3000:]
    assert not any("Traceback" in line for line in err), run.stderr[-3000:]
    root = ckpt.checkpoint_root(out)
    line = err[-1]
    assert line.startswith(f"ticgrpo train: error: cannot write checkpoint step-0002 in {root}: {reason} "), line
    assert "MB free" in line and "the last complete checkpoint is" in line and "step-0001" in line
    assert [p.name for p in root.iterdir()] == ["step-0001"]  # no partial checkpoint left
    ckpt.verify_checkpoint(root / "step-0001")
    return line


def test_disk_full_during_a_checkpoint_is_one_line_and_leaves_no_partial(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    # the run folder on a disk with room for its logs and one tiny checkpoint (~0.36 MB), not two
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=640k", "tmpfs", str(out)], capture_output=True,
                           text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here (needs root): {mount.stderr.strip()}")
    try:
        run = _run(_cli(out, "max_steps=3", "checkpoint.every_steps=1"))
        line = _assert_one_line_write_error(run, out, "no space left")
        needed = float(line.split("it needs about ")[1].split(" MB")[0])
        assert 0.3 < needed < 1.0, line
        assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2  # the logs are kept
    finally:
        subprocess.run(["umount", str(out)], check=True)


def test_file_size_limit_mid_write_removes_the_partial_checkpoint(tmp_path):
    out = tmp_path / "run"
    probe = ckpt.save_checkpoint(tmp_path / "probe", 1, *_trained(make_tiny_model(seed=0, tokenizer=TOKENIZER)), {})
    model_size, optimizer_size = ((probe / name).stat().st_size for name in (ckpt.MODEL_FILE, "optimizer.pt"))
    limit = (model_size + optimizer_size) // 2  # model.safetensors fits, optimizer.pt does not: a torn write
    assert model_size < limit < optimizer_size

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so that a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    first = _run(_cli(out, "max_steps=1", "checkpoint.every_steps=1"))
    assert first.returncode == 0, first.stderr[-2000:]
    run = _run(_cli(out, "max_steps=3", "checkpoint.every_steps=1", resume=True), preexec_fn=limit_file_size)
    _assert_one_line_write_error(run, out, "file too large")


def test_a_failed_final_save_is_one_line_and_leaves_no_partial_final_folder(tmp_path):
    out = tmp_path / "run"
    limit = 50_000  # the logs of one step fit; the tiny model's model.safetensors (~117 kB) does not

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so that a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    run = _run(_cli(out, "max_steps=1", "checkpoint.every_steps=0", "checkpoint.save_final=true"),
               preexec_fn=limit_file_size)
    err = run.stderr.strip().splitlines()
    assert run.returncode == ckpt.CheckpointWriteError.exit_code, run.stderr[-3000:]
    assert not any("Traceback" in line for line in err), run.stderr[-3000:]
    assert err[-1].startswith(f"ticgrpo train: error: cannot write the final model in {out / 'final'}: "
                              f"file too large"), err[-1]
    assert not (out / "final").exists() and not (out / ".final.tmp").exists()
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 1  # the logs are kept


# ---------------------------------------------------------------------- non-finite weights


def test_a_model_with_nan_weights_is_never_saved(tmp_path):
    model, optimizer, scheduler = _trained(make_tiny_model(seed=0, tokenizer=TOKENIZER))
    first = ckpt.save_checkpoint(tmp_path, 1, model, optimizer, scheduler, {})
    with torch.no_grad():
        model.model.layers[1].self_attn.v_proj.weight[2, 3] = float("inf")
        model.model.norm.weight[0] = float("nan")
    assert ckpt.nonfinite_weights(model) == 2
    with pytest.raises(ckpt.NonFiniteWeightsError) as info:
        ckpt.save_checkpoint(tmp_path, 2, model, optimizer, scheduler, {})
    message = str(info.value)
    assert "2 trainable weights are NaN or inf" in message and str(first) in message and "\n" not in message
    assert ckpt.list_checkpoints(tmp_path) == [first]
    assert [p.name for p in ckpt.checkpoint_root(tmp_path).iterdir()] == ["step-0001"]


def test_an_optimizer_step_that_makes_weights_inf_halts_the_run_before_saving(tmp_path):
    out = tmp_path / "run"
    # Every setting is finite, but AdamW's decay factor 1 - lr·weight_decay = -1e39 overflows float32
    # (3.4e38): a finite loss and gradient make inf weights, which nothing checked (they were saved)
    run = _run(_cli(out, "max_steps=3", "checkpoint.every_steps=1", "optim.lr=1e6", "optim.weight_decay=1e33"))
    err = run.stderr.strip().splitlines()
    assert run.returncode == 3, run.stderr[-3000:]
    assert not any("Traceback" in line for line in err), run.stderr[-3000:]
    assert err[-1].startswith("ticgrpo train: error: stopped at step 1: the optimizer step made "), err[-1]
    assert "trainable weights NaN or inf from a finite loss and gradient" in err[-1]
    assert err[-1].endswith("the last checkpoint with finite weights is none")
    assert ckpt.list_checkpoints(out) == [] and not (out / "final").exists()


# ---------------------------------------------------------------------- the learning-rate schedule


def _documented_lr(step: int, lr: float, warmup: int, schedule: str, floor: float, max_steps: int) -> float:
    """docs/training.md's schedule, written out: lr·(s+1)/(W+1) for s < W, then constant, or a
    cosine / linear decay from lr to floor·lr at max_steps."""
    if step < warmup:
        return lr * ((step + 1) / (warmup + 1))
    if schedule == "constant":
        return lr * 1.0
    progress = min((step - warmup) / max(max(max_steps, 1) - warmup, 1), 1.0)
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return lr * (floor + (1 - floor) * decay)


def _schedule_config(schedule: str, warmup: int, floor: float, max_steps: int) -> TrainConfig:
    cfg = TrainConfig()
    cfg.max_steps = max_steps
    cfg.optim.lr, cfg.optim.schedule, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio = 3e-4, schedule, warmup, floor
    return cfg


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
def test_lr_schedule_gives_the_documented_lr_at_every_step(schedule):
    for warmup, floor, max_steps in itertools.product((0, 1, 3, 12), (0.0, 0.1, 1.0), (1, 5, 12, 30)):
        cfg = _schedule_config(schedule, warmup, floor, max_steps)
        weight = torch.nn.Parameter(torch.zeros(2))
        optimizer = torch.optim.AdamW([weight], lr=cfg.optim.lr)
        scheduler = make_lr_scheduler(optimizer, cfg)
        for step in range(max_steps + 1):  # + the lr left after the last step
            expected = _documented_lr(step, 3e-4, warmup, schedule, floor, max_steps)
            assert scheduler.get_last_lr()[0] == expected, (warmup, floor, max_steps, step)
            assert optimizer.param_groups[0]["lr"] == expected
            optimizer.step()
            scheduler.step()


def test_lr_schedule_resumes_from_a_checkpoint_bit_identically(tmp_path):
    cfg = _schedule_config("cosine", 2, 0.1, 8)

    def fresh():
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
        return model, optimizer, make_lr_scheduler(optimizer, cfg)

    def step(model, optimizer, scheduler, i):
        lr = scheduler.get_last_lr()[0]
        model(torch.full((1, 3), float(i))).pow(2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        return lr

    straight = fresh()
    lrs = [step(*straight, i) for i in range(8)]
    first = fresh()
    for i in range(3):
        step(*first, i)
    path = ckpt.save_checkpoint(tmp_path, 3, first[0], first[1], first[2], {})
    resumed = fresh()
    ckpt.load_checkpoint(path, *resumed)
    assert [step(*resumed, i) for i in range(3, 8)] == lrs[3:]
    for name, value in straight[0].state_dict().items():
        assert torch.equal(value, resumed[0].state_dict()[name]), name


def test_a_checkpoint_with_the_old_schedule_position_resumes_at_the_right_lr(tmp_path):
    """Checkpoints written before make_lr_scheduler (hand-written lambda) held last_epoch = step;
    the schedule now counts step + 1. The trainer places the schedule by the step on resume, so
    such a run continues with the lr an uninterrupted run has."""
    from ticgrpo.train.trainer import Trainer

    overrides = ["optim.warmup_steps=3", "optim.schedule=cosine", "max_steps=4", "eval.at_start=false",
                 "eval.at_end=false", "eval.every_steps=0", "logging.plot=false", "logging.progress_bar=false",
                 "checkpoint.save_final=false", "checkpoint.every_steps=2"]
    config = ROOT / "configs" / "tiny.yaml"
    straight = Trainer(load_config(config, overrides, output_dir=str(tmp_path / "straight"))).train()
    first = Trainer(load_config(config, [*overrides, "max_steps=2"], output_dir=str(tmp_path / "resumed")))
    first.train()
    saved = tmp_path / "resumed" / "checkpoints" / "step-0002" / "scheduler.pt"
    state = torch.load(saved, weights_only=True)
    assert state["last_epoch"] == 3  # step + 1
    state["last_epoch"] = 2  # the old convention
    torch.save(state, saved)
    manifest_path = saved.parent / ckpt.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["scheduler.pt"] = {"size": saved.stat().st_size,
                                         "sha256": hashlib.sha256(saved.read_bytes()).hexdigest()}
    manifest_path.write_text(json.dumps(manifest))
    resumed = Trainer(load_config(config, overrides, output_dir=str(tmp_path / "resumed"))).train(resume=True)
    assert [m["lr"] for m in resumed.history] == [m["lr"] for m in straight.history][2:]
