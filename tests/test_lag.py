"""rollout.lag: k — the batch of step t is sampled by exactly θ_{t−k} (ticgrpo.train.sources.LaggedSource).

Tiny in-process Llama models (ticgrpo.testing), the real HF engine, real checkpoints and a real
`ticgrpo train` subprocess killed with SIGKILL and resumed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from crash_env import crash_env

from ticgrpo.cli import main
from ticgrpo.config import ConfigError, load_config
from ticgrpo.rollout import HFGenerateEngine
from ticgrpo.testing import make_tiny_model, make_tiny_tokenizer
from ticgrpo.train import Trainer
from ticgrpo.train import checkpoint as ckpt
from ticgrpo.train.prompts import PromptStream
from ticgrpo.train.sampling import GroupSampler
from ticgrpo.train.sources import LaggedSource, SynchronousSource, collected_from_state
from ticgrpo.train.step import TrainingBatch, fixed_logprobs

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = make_tiny_tokenizer()
ROWS = [{"prompt": f"What is {i} + {j}?", "answer": str(i + j)} for i in range(10) for j in range(10)]


def variety(prompts, completions, **kwargs):
    """Reward: distinct characters per character of the completion (differs within every group of a
    random tiny model's completions, so every step moves the weights)."""
    return [len(set(c)) / max(len(c), 1) for c in completions]


def config(tmp_path: Path, **sections) -> dict:
    cfg: dict = {
        "output_dir": str(tmp_path / "run"), "max_steps": 5, "seed": 0,
        "model": {"name": "in-process", "chat_template": False},
        "rollout": {"prompts_per_step": 2, "num_generations": 4, "max_new_tokens": 6},
        "algorithm": {"num_iterations": 2, "num_minibatches": 2},
        "optim": {"lr": 3e-2},
        "eval": {"every_steps": 0, "at_start": False, "at_end": False},
        "logging": {"progress_bar": False, "plot": False},
        "checkpoint": {"every_steps": 0, "save_final": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return cfg


def model(double: bool = False):
    m = make_tiny_model(seed=0, tokenizer=TOKENIZER)
    return m.double() if double else m


def trainer(tmp_path: Path, double: bool = False, **sections) -> Trainer:
    return Trainer(load_config(config(tmp_path, **sections)), model=model(double), tokenizer=make_tiny_tokenizer(),
                   train_rows=ROWS, eval_rows=ROWS[:4], reward_fns=[(variety, 1.0)])


def timeless(record: dict) -> dict:
    """A log record without its wall-clock fields (seconds, tokens per second)."""
    return {k: v for k, v in record.items() if not (k.startswith("time_") or k.endswith("_tokens_per_s"))}


def test_lagged_source_at_lag_0_is_the_classic_loop(tmp_path):
    """The queue path itself at k = 0 (sample step t, pop it, recompute its log-probs) trains bit for
    bit like SynchronousSource."""
    sync = trainer(tmp_path / "sync")
    assert isinstance(sync.source, SynchronousSource)
    sync.train()
    queued = trainer(tmp_path / "queued")
    queued.source = LaggedSource(queued.source.sampling, queued.engine, queued.model, queued.settings, lag=0)
    queued.train()
    for (name, a), b in zip(sync.model.state_dict().items(), queued.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert [timeless(m) for m in sync.history] == [timeless(m) for m in queued.history]
    assert all(m["staleness_mean"] == 0.0 and m["staleness/hist_0"] == 8.0 for m in queued.history)
    assert all(m["grad_norm"] > 0 for m in queued.history)  # the weights moved every step


def test_batch_of_step_t_is_sampled_by_the_weights_of_step_t_minus_k(tmp_path):
    """lag 2, float64: every step's queued batch (read back from the checkpoints) carries the version
    max(0, t−2), the prompts of step t, the completions θ_{t−2} samples under step t's seed, and
    sampler_logprobs equal to θ_{t−2}'s log-probs recomputed from the checkpoint of step t−2."""
    k, steps = 2, 6
    run = trainer(tmp_path, double=True, max_steps=steps, rollout={"lag": k},
                  checkpoint={"every_steps": 1, "keep_last": 0})
    assert isinstance(run.source, LaggedSource)
    run.train()
    assert all(m["grad_norm"] > 0 for m in run.history)  # every version's weights differ
    assert [m["staleness_mean"] for m in run.history] == [float(min(t, k)) for t in range(steps)]
    assert [m["staleness_max"] for m in run.history] == [float(min(t, k)) for t in range(steps)]
    assert all(m[f"staleness/hist_{min(t, k)}"] == 8.0 and m["stale_dropped"] == 0.0
               for t, m in enumerate(run.history))
    out = Path(run.config.output_dir)
    batches = {}  # step → its batch, from the queue saved in the checkpoints
    for saved in range(1, steps + 1):
        state = torch.load(out / "checkpoints" / f"step-{saved:04d}" / ckpt.SOURCE_FILE, weights_only=True)
        (queue,) = state  # one process
        assert [entry["step"] for entry in queue["pending"]] == list(range(saved, saved + k))
        assert queue["version"] == saved and queue["next_step"] == saved + k
        for entry in queue["pending"]:
            batches[entry["step"]] = collected_from_state(entry, torch.device("cpu"))
    stream = PromptStream(ROWS, 0, True)
    expected_rows = {t: stream.take(2) for t in range(steps + k)}
    sampler = run.source.sampling.groups
    for t, collected in sorted(batches.items()):
        version = max(0, t - k)
        weights = model(double=True)
        if version:
            weights.load_state_dict(ckpt.read_model_state(out / "checkpoints" / f"step-{version:04d}"))
        rollout = collected.batch.rollout
        assert rollout.policy_version is not None and rollout.sampler_logprobs is not None
        assert rollout.policy_version.tolist() == [version] * len(rollout), t
        assert collected.batch.rows == expected_rows[t], t
        again = GroupSampler(HFGenerateEngine(weights, run.tokenizer), sampler.num_generations, sampler.params,
                             sampler.seed).sample(
            [r["prompt"] for r in collected.batch.rows], t, 0, first_group=0)
        assert torch.equal(again.completion_ids, rollout.completion_ids), t
        batch = TrainingBatch.from_rollout(rollout, torch.zeros(len(rollout)))
        recomputed = fixed_logprobs(weights, batch, run.settings)
        assert recomputed.dtype == rollout.sampler_logprobs.dtype
        assert torch.equal(recomputed, rollout.sampler_logprobs), t
    assert sorted(batches) == list(range(1, steps + k))  # batch 0 never waits past step 0


# ---------------------------------------------------------------------- kill -9 and --resume

LAG_STEPS = 5
LAG_OVERRIDES = [
    f"max_steps={LAG_STEPS}", "rollout.lag=2", "checkpoint.every_steps=1", "checkpoint.keep_last=2",
    "checkpoint.save_final=false", "eval.at_start=false", "eval.at_end=false", "eval.every_steps=0",
    "data.eval=null", "logging.progress_bar=false", "logging.plot=false", "rollout.max_new_tokens=8",
]
# (crash point, n-th arrival) for a chain of runs, each resuming the last
LAG_CHAIN = [
    ("after_rollout", 3),  # step 3's queue pop done, step 2 saved: the queue on disk holds steps 2, 3
    ("checkpoint_before_rename", 2),  # resumed at 2: step 4's checkpoint complete, not renamed
]


# A reward that varies within a group on a random tiny model (configs/tiny.yaml's math rewards are all 0
# there, so its weights would never move and "bit-identical weights" would say nothing).
REWARD_MODULE = '''
def variety(prompts, completions, **kwargs):
    return [len(set(c)) / max(len(c), 1) for c in completions]
'''


def _lag_config(folder: Path) -> Path:
    """configs/tiny.yaml with the `variety` reward, from a module beside the config."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lag_rewards.py").write_text(REWARD_MODULE)
    text = (ROOT / "configs" / "tiny.yaml").read_text()
    text = text.replace("""  rewards:
    - {name: math_correctness, weight: 1.0}
    - {name: answer_format, weight: 0.5}""", """  rewards:
    - {name: "lag_rewards:variety", weight: 1.0}""")
    assert "lag_rewards:variety" in text
    (folder / "lag.yaml").write_text(text)
    return folder / "lag.yaml"


def _lag_cmd(out: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "ticgrpo.cli", "train", "--config", str(_lag_config(out.parent / "config")),
           "--output-dir", str(out)]
    for item in LAG_OVERRIDES:
        cmd += ["--set", item]
    return [*cmd, "--resume"] if resume else cmd


def _records(out: Path) -> list[dict]:
    return [timeless(json.loads(line)) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_kill9_during_a_lagged_run_then_resume_is_bit_identical(tmp_path):
    reference = subprocess.Popen(_lag_cmd(tmp_path / "ref", False), env=crash_env(), cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    out = tmp_path / "crashy"
    for i, (point, nth) in enumerate(LAG_CHAIN):
        run = subprocess.run(_lag_cmd(out, resume=i > 0), env=crash_env(f"{point}:{nth}"), cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == -signal.SIGKILL, (point, run.returncode, run.stderr[-2000:])
    assert (out / "checkpoints" / "step-0003" / ckpt.SOURCE_FILE).is_file()
    final = subprocess.run(_lag_cmd(out, resume=True), env=crash_env(), cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]
    assert reference.wait(timeout=300) == 0, (reference.stderr.read() if reference.stderr else "")[-2000:]
    last = f"step-{LAG_STEPS:04d}"
    ref_model = ckpt.read_model_state(tmp_path / "ref" / "checkpoints" / last)
    resumed = ckpt.read_model_state(out / "checkpoints" / last)
    assert ref_model.keys() == resumed.keys()
    for name, value in ref_model.items():
        assert torch.equal(value, resumed[name]), name
    ref_records, records = _records(tmp_path / "ref"), _records(out)
    assert [r["step"] for r in records] == list(range(1, LAG_STEPS + 1))
    assert records == ref_records
    assert [r["staleness_mean"] for r in records] == [0.0, 1.0, 2.0, 2.0, 2.0]
    assert all(r["grad_norm"] > 0 for r in records)  # the weights moved every step


# ---------------------------------------------------------------------- the config


def test_lag_validates_and_a_max_staleness_below_it_is_one_line(capsys):
    assert main(["train", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--set", "rollout.lag=4",
                 "--dry-run"]) == 0
    capsys.readouterr()
    assert main(["train", "--config", str(ROOT / "configs" / "tiny.yaml"), "--set", "rollout.max_staleness=1",
                 "--set", "rollout.lag=2", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rollout.max_staleness=1 is below rollout.lag=2" in err, err
    with pytest.raises(ConfigError, match=r"rollout\.max_staleness >= 2"):
        load_config(ROOT / "configs" / "tiny.yaml", ["rollout.lag=2", "rollout.max_staleness=1"])


# ---------------------------------------------------------------------- curves.png


def test_curves_get_a_staleness_panel_only_for_stale_runs(tmp_path):
    """A third panel (staleness, ESS) appears for a lagged or corrected run, not for the on-policy
    loop, whose staleness is always 0."""
    from matplotlib.image import imread

    from ticgrpo.reports.plots import has_offpolicy_metrics, plot_curves

    def width(records: list[dict], name: str) -> int:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        return imread(plot_curves(folder)).shape[1]

    base = [{"step": t + 1, "reward_mean": 0.1 * t, "reward_std": 0.05} for t in range(6)]
    on_policy = [{**r, "staleness_mean": 0.0, "staleness_max": 0.0} for r in base]
    lagged = [{**r, "staleness_mean": float(min(t, 2)), "staleness_max": float(min(t, 2))} for t, r in enumerate(base)]
    weighted = [{**r, "offpolicy/ess": 0.9} for r in on_policy]
    assert [has_offpolicy_metrics(m) for m in (on_policy, lagged, weighted)] == [False, True, True]
    assert width(on_policy, "sync") == 1100  # figsize 11 in at 100 dpi: two panels
    assert width(lagged, "lagged") == width(weighted, "weighted") == 1650  # three panels


# ---------------------------------------------------------------------- two processes


@pytest.mark.slow
def test_two_process_lagged_run_resumes_each_process_queue(tmp_path):
    """Each process queues its own share of the lagged batches; a checkpoint holds every process's
    queue and a resume with the same processes ends where an uninterrupted run does. A resume with
    another number of processes is a one-line refusal (exit 2) that writes nothing."""
    from test_distributed import ACCELERATE, free_port
    from test_distributed import config as two_process_config

    def launch(cfg: dict, name: str, processes: int, resume: bool = False) -> subprocess.CompletedProcess:
        path = tmp_path / f"{name}.yaml"
        path.write_text(json.dumps({**cfg, "output_dir": str(tmp_path / name)}))  # JSON is YAML
        train = ["-m", "ticgrpo.cli", "train", "--config", str(path), *(["--resume"] if resume else [])]
        cmd = [sys.executable, *train] if processes == 1 else [
            ACCELERATE, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), *train]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)

    cfg = two_process_config(tmp_path)
    cfg["rollout"] = {**cfg["rollout"], "lag": 2}
    cfg["eval"] = {**cfg["eval"], "at_start": False, "at_end": False}
    cfg["checkpoint"] = {"every_steps": 1, "keep_last": 0, "save_final": False}
    cfg["max_steps"] = 4
    full = launch(cfg, "full", 2)
    assert full.returncode == 0, full.stderr[-3000:]
    part = launch({**cfg, "max_steps": 2}, "part", 2)
    assert part.returncode == 0, part.stderr[-3000:]
    queues = torch.load(tmp_path / "part" / "checkpoints" / "step-0002" / ckpt.SOURCE_FILE, weights_only=True)
    assert len(queues) == 2 and all([e["step"] for e in q["pending"]] == [2, 3] for q in queues)
    assert queues[0]["pending"][0]["rows"] != queues[1]["pending"][0]["rows"]  # each process its own groups
    logged = (tmp_path / "part" / "metrics.jsonl").read_bytes()
    refused = launch(cfg, "part", 1, resume=True)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr[-3000:]
    assert "holds the queued batches of 2 process(es)" in refused.stderr
    assert (tmp_path / "part" / "metrics.jsonl").read_bytes() == logged
    resumed = launch(cfg, "part", 2, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = ckpt.read_model_state(tmp_path / "full" / "checkpoints" / "step-0004")
    b = ckpt.read_model_state(tmp_path / "part" / "checkpoints" / "step-0004")
    for name, value in a.items():
        assert torch.equal(value, b[name]), name
    assert _records(tmp_path / "part") == _records(tmp_path / "full")
    assert [r["staleness_mean"] for r in _records(tmp_path / "part")] == [0.0, 1.0, 2.0, 2.0]
