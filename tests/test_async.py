"""rollout.mode: async with the HF producer (ticgrpo.train.async_source, ticgrpo.rollout.producers.hf).

Real worker processes (spawn) sampling tiny in-process models, the real trainer; nothing mocked.
A producer is killed (SIGKILL) or frozen (SIGSTOP) by a reward function, i.e. from inside the
trainer process, the way an OOM killer or a stuck process would do it to a real run.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from ticgrpo.cli import main as cli_main
from ticgrpo.config import ConfigError, load_config
from ticgrpo.core.objectives import make_objective_config
from ticgrpo.rollout import HFGenerateEngine, SamplingParams
from ticgrpo.rollout.producers import ProducerFailed, RolloutJob
from ticgrpo.rollout.producers.hf import HFProducer, HFWorkerSpec
from ticgrpo.testing import make_tiny_model, make_tiny_tokenizer
from ticgrpo.train import Trainer
from ticgrpo.train import checkpoint as ckpt
from ticgrpo.train.prompts import PromptStream
from ticgrpo.train.setup import make_lr_scheduler
from ticgrpo.train.step import StepSettings, TrainingBatch, fixed_logprobs

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = make_tiny_tokenizer()
ROWS = [{"prompt": f"What is {i} + {j}?", "answer": str(i + j)} for i in range(10) for j in range(10)]
P, G = 2, 4


def sevens(prompts, completions, **kwargs):
    return [c.count("7") / max(len(c), 1) for c in completions]


def config(tmp_path: Path, **rollout: Any) -> dict:
    return {
        "output_dir": str(tmp_path / "run"), "max_steps": 4, "seed": 0, "threads": 1,
        "model": {"name": "in-process", "chat_template": False},
        "rollout": {"prompts_per_step": P, "num_generations": G, "max_new_tokens": 6, "mode": "async", **rollout},
        "algorithm": {"objective": "tic_grpo", "num_iterations": 2},
        "optim": {"lr": 1e-2},
        "eval": {"every_steps": 0, "at_start": False, "at_end": False},
        "logging": {"progress_bar": False, "plot": False},
        "checkpoint": {"every_steps": 0, "save_final": False},
    }


def make_trainer(cfg: dict, reward=sevens) -> Trainer:
    return Trainer(load_config(cfg), model=make_tiny_model(seed=0, tokenizer=TOKENIZER), tokenizer=TOKENIZER,
                   train_rows=ROWS, eval_rows=ROWS[:4], reward_fns=[(reward, 1.0)])


def metrics_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def producer_processes() -> list[multiprocessing.Process]:
    return [p for p in multiprocessing.active_children() if p.name == "ticgrpo-hf-producer"]


# ---------------------------------------------------------------------- the producer itself


def test_producer_samples_with_the_weights_it_was_sent_and_tags_their_version():
    """sampler_logprobs are the trainer's own fixed_logprobs under the weights of the version the
    rows are tagged with: version 0 at start, the pushed weights after push_weights."""
    model = make_tiny_model(seed=0, tokenizer=TOKENIZER)
    settings = StepSettings("tic_grpo", make_objective_config("tic_grpo"), max_new_tokens=6)
    producer = HFProducer(HFWorkerSpec.of_engine(HFGenerateEngine(model, TOKENIZER), settings, "cpu", 1), 30.0)
    params = SamplingParams(max_new_tokens=6)
    try:
        producer.start(model)
        initial = {n: t.clone() for n, t in model.state_dict().items()}
        producer.submit(RolloutJob(0, ["What is 1 + 2?", "What is 3 + 4?"], G, params, seed=11))
        first = producer.poll(30.0)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        producer.push_weights(model, 7)
        producer.submit(RolloutJob(1, ["What is 5 + 6?"], G, params, seed=12))
        second = producer.poll(30.0)
    finally:
        producer.close()
    assert first is not None and second is not None
    assert (first.index, first.version, second.index, second.version) == (0, 0, 1, 7)
    assert first.rollout.policy_version.tolist() == [0] * 2 * G
    assert second.rollout.policy_version.tolist() == [7] * G
    assert first.rollout.group_ids.tolist() == [0] * G + [1] * G
    for produced, weights in ((second, None), (first, initial)):
        if weights is not None:
            model.load_state_dict(weights)
        batch = TrainingBatch.from_rollout(produced.rollout, torch.zeros(len(produced.rollout)))
        expected = fixed_logprobs(model, batch, settings)
        torch.testing.assert_close(produced.rollout.sampler_logprobs, expected, atol=1e-5, rtol=1e-5)
    assert not producer_processes()


def test_a_worker_exception_comes_back_as_one_line_naming_the_producer_which_restarts():
    model = make_tiny_model(seed=0, tokenizer=TOKENIZER)
    settings = StepSettings("tic_grpo", make_objective_config("tic_grpo"), max_new_tokens=6)
    producer = HFProducer(HFWorkerSpec.of_engine(HFGenerateEngine(model, TOKENIZER), settings, "cpu", 1), 30.0)
    try:
        producer.start(model)
        pid = producer.pid
        producer.submit(RolloutJob(0, [], G, SamplingParams(max_new_tokens=6), seed=0))  # no prompts: it raises
        with pytest.raises(ProducerFailed) as failed:
            producer.poll(30.0)
        producer.start(model)  # a restart replaces the failed worker with a fresh one
        assert producer.pid != pid
        producer.submit(RolloutJob(1, ["What is 1 + 2?"], G, SamplingParams(max_new_tokens=6), seed=0))
        again = producer.poll(30.0)
    finally:
        producer.close()
    message = str(failed.value)
    assert message.startswith(f"HF rollout producer (pid {pid}) failed: ") and "\n" not in message
    assert failed.value.exit_code == 5
    assert again is not None and again.index == 1 and len(again.rollout) == G
    assert not producer_processes()


# ---------------------------------------------------------------------- training runs


def test_async_run_trains_to_max_steps_with_finite_metrics(tmp_path):
    result = make_trainer(config(tmp_path, queue_size=2)).train()
    assert result.steps == 4
    metrics = metrics_of(Path(result.output_dir))
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    for m in metrics:
        assert all(math.isfinite(v) for v in m.values() if isinstance(v, float)), m
        assert 0 <= m["staleness_max"] <= 2 and 0 <= m["queue_depth"] <= 2
        assert m["stale_dropped"] == 0 and m["time_rollout"] > 0 and m["num_sequences"] == P * G
    assert metrics[0]["staleness_max"] == 0  # the first job is sampled by the initial weights at step 0
    assert any(m["staleness_max"] > 0 for m in metrics)  # later ones run ahead of the trainer
    assert not producer_processes()  # the trainer closed its producer


def test_the_queue_never_holds_more_than_queue_size_jobs(tmp_path):
    trainer = make_trainer(config(tmp_path, queue_size=3))
    try:
        for _ in range(4):
            metrics = trainer.train_step()
            assert trainer.source.in_flight == 3  # refilled to the bound, never past it
            assert 0 <= metrics["queue_depth"] <= 3 and metrics["staleness_max"] <= 3
    finally:
        trainer.source.close()
    assert not producer_processes()


@pytest.mark.parametrize("max_staleness", [0, 1])
def test_staleness_never_exceeds_max_staleness_and_drops_are_counted(tmp_path, max_staleness):
    """queue_size 3 makes the producer run up to 3 versions ahead; rollout.max_staleness K drops
    what is older (whole jobs: P·G rows each) and the trainer never sees staleness above K."""
    result = make_trainer(config(tmp_path, queue_size=3, max_staleness=max_staleness)).train()
    metrics = metrics_of(Path(result.output_dir))
    assert len(metrics) == 4
    assert max(m["staleness_max"] for m in metrics) <= max_staleness
    dropped = [m["stale_dropped"] for m in metrics]
    assert sum(dropped) > 0 and all(d % (P * G) == 0 for d in dropped), dropped


def stop_producer_at_third_call(prompts, completions, **kwargs):
    """A reward that freezes the producer (SIGSTOP: alive, answering nothing) at its third call."""
    stop_producer_at_third_call.calls = getattr(stop_producer_at_third_call, "calls", 0) + 1
    if stop_producer_at_third_call.calls == 3:
        for process in producer_processes():
            os.kill(process.pid, signal.SIGSTOP)
        stop_producer_at_third_call.stopped_at = time.monotonic()
    return sevens(prompts, completions)


def test_a_hung_producer_stops_the_run_after_producer_timeout_s(tmp_path):
    trainer = make_trainer(config(tmp_path, queue_size=1, producer_timeout_s=2), reward=stop_producer_at_third_call)
    # SIGSTOP can land while the producer holds the shared weight buffer: the trainer's next push then
    # times out on the buffer instead of on the queue; both are the same bounded, named failure.
    hung = r"HF rollout producer \(pid \d+\) (produced no rollout in 2 s|held the weight buffer for over 2 s)"
    with pytest.raises(ProducerFailed, match=hung) as failed:
        trainer.train()
    waited = time.monotonic() - stop_producer_at_third_call.stopped_at
    assert 2 <= waited < 2 + 8, waited  # the timeout, plus the step in progress and stopping the process
    assert "\n" not in str(failed.value)
    assert not producer_processes()  # close() killed the stopped process


KILLER = '''
import json, multiprocessing, os, signal, time

def reward(prompts, completions, **kwargs):
    reward.calls = getattr(reward, "calls", 0) + 1
    if reward.calls == 4:  # step 4: after the checkpoints of steps 1-3
        for p in multiprocessing.active_children():
            if p.name == "ticgrpo-hf-producer":
                os.kill(p.pid, signal.SIGKILL)
        with open(os.path.join(os.path.dirname(__file__), "killed.json"), "w") as f:
            json.dump({"at": time.time()}, f)
    return [0.0] * len(completions)
'''


def test_a_killed_producer_stops_the_cli_in_one_line_with_the_checkpoints_intact(tmp_path):
    (tmp_path / "killer.py").write_text(KILLER)
    cfg = config(tmp_path, queue_size=1, producer_timeout_s=60)
    cfg["model"]["name"] = "tiny-test"
    cfg["data"] = {"train": {"task": "arithmetic", "level": 2, "split": "train", "num_train": 50}, "eval": None}
    cfg["algorithm"]["rewards"] = [{"name": "killer:reward", "weight": 1.0}]
    cfg["max_steps"], cfg["checkpoint"] = 8, {"every_steps": 1, "keep_last": 0, "save_final": False}
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run([sys.executable, "-m", "ticgrpo.cli", "train", "--config", str(path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=180)
    ended = time.time()
    killed_at = json.loads((tmp_path / "killed.json").read_text())["at"]
    assert run.returncode == 5, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("ticgrpo train: error:")]
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert "HF rollout producer (pid" in lines[0] and "SIGKILL" in lines[0], lines[0]
    # detected at the next weight push or poll (the message says SIGKILL, not the 60 s timeout); the
    # margin is for the interpreter's exit on a loaded 2-core machine
    assert ended - killed_at < 15.0
    # step 4's batch was in the trainer's hands before the kill: whether step 4 trains and saves
    # before the failure is seen depends on when the kernel has reaped the worker (the push right
    # after step 4 may still find it alive); never a step that needed the dead producer's batch
    last = ckpt.latest_checkpoint(tmp_path / "run")
    assert last is not None and last.name in ("step-0003", "step-0004")
    logged = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, int(last.name.removeprefix("step-")) + 1))
    loaded = load_config(str(path))
    model = make_tiny_model(seed=loaded.seed, tokenizer=make_tiny_tokenizer())
    optimizer = torch.optim.AdamW(model.parameters())
    state = ckpt.load_checkpoint(last, model, optimizer, make_lr_scheduler(optimizer, loaded))
    assert int(state["step"]) == int(last.name.removeprefix("step-"))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_resume_restarts_the_producer_and_finishes(tmp_path):
    cfg = config(tmp_path, queue_size=2)
    cfg["checkpoint"] = {"every_steps": 1, "keep_last": 0, "save_final": False}
    cfg["logging"]["samples_per_step"] = P * G
    first = make_trainer({**cfg, "max_steps": 2}).train()
    assert first.steps == 2 and not producer_processes()
    resumed = make_trainer(cfg).train(resume=True)
    assert resumed.steps == 4 and not producer_processes()
    metrics = metrics_of(Path(resumed.output_dir))
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert metrics[2]["staleness_max"] == 0  # the fresh producer holds the resumed weights (version 2)
    assert metrics[3]["staleness_max"] <= 2 and all(math.isfinite(m["loss"]) for m in metrics)
    # the resumed run restarts the stream after the last consumed batch: step s trains on the
    # prompts of job s − 1, the stream's (s − 1)-th batch of P rows, as an uninterrupted run does
    stream = PromptStream(ROWS, 0)
    expected = {step: {r["prompt"] for r in stream.take(P)} for step in range(1, 5)}
    lines = (Path(resumed.output_dir) / "samples.jsonl").read_text().splitlines()
    seen: dict[int, set[str]] = {}
    for sample in map(json.loads, lines):
        seen.setdefault(sample["step"], set()).add(sample["prompt"])
    assert seen == expected


# ---------------------------------------------------------------------- config errors


@pytest.mark.parametrize(("overrides", "names"), [
    ({"rollout": {"mode": "async", "lag": 1}}, "rollout.lag"),
    ({"rollout": {"mode": "async"}, "algorithm": {"dynamic_sampling": True}}, "algorithm.dynamic_sampling"),
    ({"rollout": {"mode": "async", "engine": "vllm"}}, "rollout.vllm.mode: server"),
    ({"rollout": {"mode": "async", "engine": "vllm", "vllm": {"mode": "colocate"}}}, "rollout.vllm.mode: server"),
    ({"rollout": {"mode": "async", "weight_sync_every": 3, "max_staleness": 1}}, "rollout.weight_sync_every"),
])
def test_async_config_errors_name_the_key(overrides, names):
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")) as error:
        load_config(overrides)
    assert "\n" not in str(error.value)


def test_async_config_error_is_one_line_and_exit_2_on_the_command_line(capsys):
    code = cli_main(["train", "--config", str(ROOT / "configs" / "tiny.yaml"), "--set", "rollout.mode=async",
                     "--set", "rollout.lag=2", "--dry-run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "rollout.lag" in err[0]


def test_async_with_the_vllm_server_mode_passes_the_config_checks():
    cfg = load_config({"rollout": {"mode": "async", "engine": "vllm", "vllm": {"mode": "server",
                                                                              "server_url": "http://127.0.0.1:1"}}})
    assert cfg.rollout.mode == "async"
