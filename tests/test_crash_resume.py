"""Crash safety: `ticgrpo train` SIGKILLed at many points (including during a checkpoint write)
and resumed ends bit-identical to an uninterrupted run; torn checkpoints and logs are never used.

The kills come from the test hook TICGRPO_TEST_CRASH_AT=<point>[:<n>] (ticgrpo.train.checkpoint.
crash_point): the training process SIGKILLs itself at the n-th arrival at <point>.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from crash_env import crash_env

from ticgrpo.train import checkpoint as ckpt
from ticgrpo.train.logging import RunLogger

ROOT = Path(__file__).resolve().parents[1]
MAX_STEPS = 3
OVERRIDES = [
    f"max_steps={MAX_STEPS}", "checkpoint.every_steps=1", "checkpoint.keep_last=2", "checkpoint.save_final=false",
    "eval.at_start=false", "eval.at_end=false", "eval.every_steps=0", "data.eval=null",
    "logging.progress_bar=false", "logging.plot=false", "rollout.max_new_tokens=8",
]

# (crash point, n-th arrival) in the order the chain of runs hits them; each run resumes the last.
CHAIN = [
    ("after_rollout", 2),  # step 2's rollout done, nothing saved since step 1
    ("mid_backward", 2),  # inside step 2's optimisation, after a backward pass
    ("checkpoint_mid_write", 1),  # step 2 trained; its checkpoint half written (model.pt only)
    ("after_optimizer_step", 2),  # step 2 saved; step 3's optimizer steps done, not saved
    ("checkpoint_before_rename", 1),  # step 3's checkpoint complete in the temp folder, not renamed
    ("checkpoint_after_rename", 1),  # step 3's checkpoint renamed, killed before pruning
]


def _cmd(out: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "ticgrpo.cli", "train", "--config", str(ROOT / "configs" / "tiny.yaml"),
           "--output-dir", str(out)]
    for item in OVERRIDES:
        cmd += ["--set", item]
    return [*cmd, "--resume"] if resume else cmd


def _final_state(out: Path) -> tuple[dict, dict]:
    last = out / "checkpoints" / f"step-{MAX_STEPS:04d}"
    ckpt.verify_checkpoint(last)
    return ckpt.read_model_state(last), ckpt.read_optimizer_state(last)


def test_kill9_at_many_points_then_resume_is_bit_identical(tmp_path):
    reference = subprocess.Popen(_cmd(tmp_path / "ref", False), env=crash_env(), cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    out = tmp_path / "crashy"
    for i, (point, nth) in enumerate(CHAIN):
        run = subprocess.run(_cmd(out, resume=i > 0), env=crash_env(f"{point}:{nth}"), cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == -signal.SIGKILL, (point, run.returncode, run.stderr[-2000:])
    root = out / "checkpoints"
    assert (root / "step-0003" / ckpt.MANIFEST).is_file()
    # A checkpoint corrupted after the fact (same size, different bytes) is detected and skipped.
    victim = root / "step-0003" / "optimizer.pt"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with open(out / "metrics.jsonl", "a") as f:  # a torn last log line, as from a kill mid-write
        f.write('{"step": 9, "loss": 0.')
    final = subprocess.run(_cmd(out, resume=True), env=crash_env(), cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]
    warnings = [line for line in final.stderr.splitlines() if "skipping corrupt checkpoint" in line]
    assert len(warnings) == 1 and "step-0003" in warnings[0] and "sha256" in warnings[0]
    assert reference.wait(timeout=300) == 0, (reference.stderr.read() if reference.stderr else "")[-2000:]
    ref_model, ref_opt = _final_state(tmp_path / "ref")
    model, opt = _final_state(out)
    assert ref_model.keys() == model.keys()
    for name, value in ref_model.items():
        assert torch.equal(value, model[name]), name
    for key, state in ref_opt["state"].items():
        for name, value in state.items():
            assert torch.equal(value, opt["state"][key][name]), (key, name)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, MAX_STEPS + 1))
    assert not list(root.glob(".step-*.tmp-*"))  # the next save sweeps up interrupted temp folders


def _tiny_state():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return model, optimizer, scheduler


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest"])
def test_corrupt_latest_checkpoint_falls_back_with_a_warning(tmp_path, caplog, damage):
    model, optimizer, scheduler = _tiny_state()
    ckpt.save_checkpoint(tmp_path, 1, model, optimizer, scheduler, {"stream": {}})
    with torch.no_grad():
        model.weight.add_(1.0)
    second = ckpt.save_checkpoint(tmp_path, 2, model, optimizer, scheduler, {"stream": {}})
    target = second / ckpt.MODEL_FILE
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-10])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[100] ^= 1
        target.write_bytes(bytes(data))
    elif damage == "delete":
        target.unlink()
    else:
        (second / ckpt.MANIFEST).write_text('{"step": 2, "files": {')
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load_checkpoint(second, *_tiny_state())
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == "step-0001"
    err = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(err) == 1 and err[0].startswith("skipping corrupt checkpoint") and "step-0002" in err[0]
    fresh = _tiny_state()
    ckpt.load_checkpoint(latest, *fresh)
    assert not torch.equal(fresh[0].weight, model.weight)  # the older weights came back


def test_temp_folders_are_never_checkpoints(tmp_path):
    model, optimizer, scheduler = _tiny_state()
    ckpt.save_checkpoint(tmp_path, 1, model, optimizer, scheduler, {})
    torn = ckpt.checkpoint_root(tmp_path) / ".step-0002.tmp-abc"
    torn.mkdir()
    (torn / "model.pt").write_bytes(b"partial")
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-0001"]
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == "step-0001"


def test_torn_last_jsonl_line_is_dropped_on_resume(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 2.0}\n{"step": 3, "lo')
    (tmp_path / "samples.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n')
    logger = RunLogger(tmp_path, 5, 2, progress_bar=False)
    logger.truncate_after(2)
    logger.log_step(3, {"loss": 3.0})
    logger.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3] and lines[-1]["loss"] == 3.0
    assert [json.loads(x)["step"] for x in (tmp_path / "samples.jsonl").read_text().splitlines()] == [1, 2]


# ---------------------------------------------------------------------- the end of a run, and its logs

END_STEPS = 3
END_OVERRIDES = [
    f"max_steps={END_STEPS}", "checkpoint.every_steps=1", "checkpoint.keep_last=2", "checkpoint.save_final=true",
    "eval.at_start=true", "eval.at_end=true", "eval.every_steps=2", "eval.num_examples=2", "eval.ks=[]",
    "logging.progress_bar=false", "logging.plot=false", "rollout.max_new_tokens=6",
]
# Every crash point, in the order a chain of runs reaches them; run i+1 resumes what run i left.
# With eval every 2 steps, a checkpoint every step and the final save, the chain kills inside
# steps, inside each stage of a checkpoint (the final step's too), after the last evaluation,
# inside the final save and just before the run is recorded as finished.
END_CHAIN = [
    ("after_optimizer_step", 2),  # step 2 trained, not logged: the log holds step 1 and eval 0
    ("after_rollout", 1),  # resumed at 1: step 2's rollout done
    ("mid_backward", 1),  # resumed at 1: inside step 2's optimisation
    ("checkpoint_mid_write", 1),  # step 2 and eval 2 logged, step 2's checkpoint half written
    ("checkpoint_before_rename", 2),  # step 2 saved; step 3's checkpoint complete, not renamed
    ("checkpoint_after_rename", 1),  # step 3's checkpoint renamed, killed before pruning
    ("after_final_eval", 1),  # the last evaluation logged, nothing saved after it
    ("final_save_mid", 1),  # final/ half written (weights, no tokenizer)
    ("before_finished", 1),  # final/ written, finished.json not yet
]


def _end_cmd(out: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "ticgrpo.cli", "train", "--config", str(ROOT / "configs" / "tiny.yaml"),
           "--output-dir", str(out)]
    for item in END_OVERRIDES:
        cmd += ["--set", item]
    return [*cmd, "--resume"] if resume else cmd


def _wall_clock(key: str) -> bool:
    """Metrics that time the run (seconds, tokens per second): the only fields allowed to differ."""
    return key.startswith("time_") or key.endswith("_tokens_per_s")


def _log_records(path: Path) -> list[str]:
    """Each line of a jsonl log, re-serialised without its wall-clock fields (key order kept)."""
    if not path.is_file():
        return []
    return [json.dumps({k: v for k, v in json.loads(line).items() if not _wall_clock(k)})
            for line in path.read_text().splitlines()]


def _tree_state(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file's mtime and bytes, except the lock file (which holds the pid of the last run)."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".ticgrpo.lock"}


def test_every_crash_point_is_in_a_kill_and_resume_chain():
    import re

    names = set()
    for source in (ROOT / "ticgrpo").rglob("*.py"):
        names |= set(re.findall(r"crash_point\(\"(\w+)\"\)", source.read_text()))
    assert names, "no crash points found"
    assert names <= {point for point, _ in CHAIN + END_CHAIN}, names - {point for point, _ in CHAIN + END_CHAIN}


def test_kill9_at_every_point_then_resume_leaves_logs_equal_to_an_uninterrupted_run(tmp_path):
    reference = tmp_path / "ref"
    ref_run = subprocess.Popen(_end_cmd(reference, False), env=crash_env(), cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    logs = ("metrics.jsonl", "eval.jsonl", "samples.jsonl")
    out = tmp_path / "crashy"
    left = []  # the logs each killed run left
    for i, (point, nth) in enumerate(END_CHAIN):
        run = subprocess.run(_end_cmd(out, resume=i > 0), env=crash_env(f"{point}:{nth}"), cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == -signal.SIGKILL, (point, run.returncode, run.stderr[-2000:])
        left.append((point, {name: _log_records(out / name) for name in logs}))
    assert ref_run.wait(timeout=300) == 0, (ref_run.stderr.read() if ref_run.stderr else "")[-2000:]
    expected = {name: _log_records(reference / name) for name in logs}
    assert [json.loads(x)["step"] for x in expected["eval.jsonl"]] == [0, 2, END_STEPS]
    for point, records in left:  # whatever a killed run left is the start of the uninterrupted run's log
        for name, got in records.items():
            assert got == expected[name][: len(got)], (point, name)
    final = subprocess.run(_end_cmd(out, resume=True), env=crash_env(), cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]
    assert f"resuming {out} from step {END_STEPS}" in final.stdout
    for name in logs:
        assert _log_records(out / name) == expected[name], name
    # each evaluation's own folder (summary and completions) too, byte for byte
    evals = sorted(str(p.relative_to(reference)) for p in (reference / "evals").rglob("*") if p.is_file())
    assert evals == [f"evals/step-{s:04d}/{f}" for s in (0, 2, END_STEPS) for f in ("eval.json", "samples.jsonl")]
    assert sorted(str(p.relative_to(out)) for p in (out / "evals").rglob("*") if p.is_file()) == evals
    for name in evals:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    for name in sorted(p.name for p in (reference / "final").iterdir()):
        assert (out / "final" / name).read_bytes() == (reference / "final" / name).read_bytes(), name
    done, ref_done = (json.loads((d / "finished.json").read_text()) for d in (out, reference))
    assert {**done, "final_dir": None} == {**ref_done, "final_dir": None}
    # Resuming the finished run says so and changes nothing in the folder.
    before = _tree_state(out)
    again = subprocess.run(_end_cmd(out, resume=True), env=crash_env(), cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.strip() == f"{out}: the run already finished at step {END_STEPS}; nothing to do " \
                                   f"(raise max_steps to train further)"
    assert _tree_state(out) == before
