"""Asynchronous rollouts with vLLM against a real `ticgrpo.rollout.vllm.server` subprocess (tiny
Llama, fp32): the weight versions the server reports, the producer thread (FIFO jobs, weight
pushes that do not wait for the job in flight, seeds), a dead or frozen server reported as
ProducerFailed, and `rollout.mode: async` training runs through it. No mocks.

Run: ``bash scripts/test_vllm.sh`` (``.venv-vllm``).
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from ticgrpo.core.logprobs import completion_logprobs
from ticgrpo.rollout import HFGenerateEngine, RolloutBatch, SamplingParams, VLLMEngine
from ticgrpo.rollout.producers import ProducedRollout, ProducerFailed, RolloutJob
from ticgrpo.rollout.producers.vllm import VLLMProducer
from ticgrpo.rollout.vllm import HTTPBackend

pytestmark = pytest.mark.vllm

PROMPTS = ["1+2=", "3+4=", "5+1=", "2+2="]
GREEDY = SamplingParams(max_new_tokens=8, greedy=True)
SAMPLED = SamplingParams(max_new_tokens=12, temperature=0.8)
LONG = SamplingParams(max_new_tokens=400, temperature=1.0)  # a generate that takes seconds on 2 cores


# ---------------------------------------------------------------- the server subprocess


class Served:
    def __init__(self, proc: subprocess.Popen, url: str, model_dir: Path, log: Path) -> None:
        self.proc, self.url, self.model_dir, self.log = proc, url, model_dir, log


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(folder: Path, tok: Any, factory: Any) -> Served:
    """A server on a tiny Llama (seed 1) saved under ``folder``; waits until /health answers."""
    model_dir = folder / "model"
    factory(tok, seed=1).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    port = _free_port()
    log = folder / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ticgrpo.rollout.vllm.server", "--model", str(model_dir), "--port", str(port),
             "--dtype", "float32", "--max-model-len", "512"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            HTTPBackend(url)
            return Served(proc, url, model_dir, log)
        except ConnectionError:
            assert time.time() < deadline, "the vLLM server did not come up"
            time.sleep(1.0)


def stop_server(served: Served) -> None:
    if served.proc.poll() is None:
        served.proc.send_signal(signal.SIGCONT)  # in case a test left it stopped
        served.proc.terminate()
        try:
            served.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            served.proc.kill()
            served.proc.wait()


@pytest.fixture(scope="module")
def served(tmp_path_factory: Any, tiny_tok: Any, tiny_factory: Any) -> Iterator[Served]:
    s = start_server(tmp_path_factory.mktemp("vllm-server"), tiny_tok, tiny_factory)
    yield s
    stop_server(s)


def server_engine(model: Any, tok: Any, url: str, **options: Any) -> VLLMEngine:
    return VLLMEngine(model, copy.deepcopy(tok), mode="server", server_url=url, **options)


def versions(batch: RolloutBatch) -> set[int]:
    assert batch.policy_version is not None and batch.policy_version.shape == (len(batch),)
    return set(batch.policy_version.tolist())


def trainer_logprobs(model: Any, batch: RolloutBatch, temperature: float) -> torch.Tensor:
    with torch.no_grad():
        lp, _ = completion_logprobs(model, batch.input_ids, batch.attention_mask, batch.completion_ids,
                                    batch.completion_mask, temperature=temperature)
    return lp.float()


def masked_rows(batch: RolloutBatch) -> list[list[int]]:
    lengths = batch.completion_lengths.tolist()
    return [row[: int(n)] for row, n in zip(batch.completion_ids.tolist(), lengths, strict=True)]


# ---------------------------------------------------------------- versions in the server


def test_server_reports_the_version_of_the_weights_that_sampled(served: Served, tiny_tok: Any,
                                                                 tiny_factory: Any) -> None:
    a, b = tiny_factory(tiny_tok, seed=1), tiny_factory(tiny_tok, seed=2)
    engine = server_engine(a, tiny_tok, served.url)
    client = engine.backend
    assert isinstance(client, HTTPBackend)
    engine.update_weights(a, version=0)
    assert client.health()["weight_version"] == 0
    assert versions(engine.generate(PROMPTS, 2, GREEDY)) == {0}

    engine.update_weights(b, version=5)  # the trainer's policy version
    assert client.health()["weight_version"] == 5
    after = engine.generate(PROMPTS, 2, GREEDY)
    assert versions(after) == {5}
    assert masked_rows(after) == masked_rows(HFGenerateEngine(b, tiny_tok).generate(PROMPTS, 2, GREEDY))
    engine.update_weights(b)  # no version: one more (the synchronous loop's updates)
    assert client.health()["weight_version"] == 6

    # A generate that started before an update finishes on the old weights and says so; the
    # update waits for it (the server serialises them), and the next generate has the new version.
    done: dict[str, Any] = {}

    def long_generate() -> None:
        done["batch"] = engine.generate(PROMPTS, 32, LONG, seed=1)

    thread = threading.Thread(target=long_generate)
    thread.start()
    time.sleep(1.0)
    assert client.health(timeout=2.0)["weight_version"] == 6  # /health answers during a generate
    assert thread.is_alive(), "the long generate finished too soon to test the ordering"
    engine.update_weights(a, version=7)
    thread.join()
    assert versions(done["batch"]) == {6}
    assert versions(engine.generate(PROMPTS, 1, GREEDY)) == {7}

    with pytest.raises(RuntimeError, match=r"400.*version must be a non-negative integer"):
        client.call("/update_weights", {"path": "/nonexistent", "version": -1})
    with pytest.raises(RuntimeError, match=r"400.*seed"):
        client.call("/generate", {"prompts": [[1]], "n": 1, "max_tokens": 1, "greedy": False, "temperature": 1.0,
                                  "top_p": 1.0, "top_k": 0, "stop_token_ids": [], "seed": "x"})


def test_seeded_requests_do_not_depend_on_the_batch(served: Served, tiny_tok: Any, tiny_factory: Any) -> None:
    engine = server_engine(tiny_factory(tiny_tok, seed=1), tiny_tok, served.url)
    g = 4
    whole = engine.generate(PROMPTS, g, SAMPLED, seed=11)
    assert engine.generate(PROMPTS, g, SAMPLED, seed=11).completions == whole.completions
    assert engine.generate(PROMPTS, g, SAMPLED, seed=12).completions != whole.completions
    # prompt k's samples are seeded by seed + k·G + j: its own request with seed + k·G gives the same
    last = engine.generate(PROMPTS[3:], g, SAMPLED, seed=11 + 3 * g)
    assert last.completions == whole.completions[3 * g :]


# ---------------------------------------------------------------- the producer


def wait_for(producer: VLLMProducer, timeout: float = 120.0) -> ProducedRollout:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        produced = producer.poll(1.0)
        if produced is not None:
            return produced
    raise AssertionError(f"no rollout from {producer.name} in {timeout} s")


def job(index: int, params: SamplingParams, g: int = 2, seed: int = 0, batch: int | None = None) -> RolloutJob:
    return RolloutJob(index=index, prompts=PROMPTS, num_generations=g, params=params, seed=seed,
                      generation_batch_size=batch)


def test_producer_samples_jobs_in_order_and_follows_pushed_weights(served: Served, tiny_tok: Any,
                                                                     tiny_factory: Any) -> None:
    a, b, c = (tiny_factory(tiny_tok, seed=s) for s in (1, 2, 3))
    producer = VLLMProducer(server_engine(a, tiny_tok, served.url))
    assert producer.name == f"vLLM producer ({served.url})"
    producer.start(b)  # the server booted from a's weights; start loads b's as version 0
    try:
        for i in range(3):
            producer.submit(job(i, SAMPLED, seed=100 + i))
        first = [wait_for(producer) for _ in range(3)]
        assert [p.index for p in first] == [0, 1, 2] and all(p.version == 0 for p in first)
        rollout = first[0].rollout
        assert rollout.behavior_logprobs is not None and versions(rollout) == {0}
        assert rollout.group_ids.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
        mask = rollout.completion_mask.bool()
        assert (trainer_logprobs(b, rollout, 0.8) - rollout.behavior_logprobs)[mask].abs().max() < 1e-3

        # the same job split into one request per prompt (generation_batch_size = G): same samples
        producer.submit(job(3, SAMPLED, seed=100, batch=2))
        assert wait_for(producer).rollout.completions == rollout.completions

        # a push while a long job runs returns at once; that job keeps the old version, the next
        # one samples with the pushed weights
        producer.submit(job(4, LONG, g=16))
        time.sleep(1.0)
        start = time.monotonic()
        producer.push_weights(c, version=3)
        push_seconds = time.monotonic() - start
        producer.submit(job(5, GREEDY))
        long_job, after = wait_for(producer), wait_for(producer)
        print(f"\n[vllm producer] push_weights returned in {push_seconds:.3f} s during a job of "
              f"{long_job.seconds:.1f} s")
        assert push_seconds < long_job.seconds / 2
        assert (long_job.index, long_job.version) == (4, 0) and (after.index, after.version) == (5, 3)
        assert masked_rows(after.rollout) == masked_rows(HFGenerateEngine(c, tiny_tok).generate(PROMPTS, 2, GREEDY))

        # pushes that pile up before a job starts: only the newest is loaded
        producer.push_weights(a, version=4)
        producer.push_weights(b, version=5)
        producer.submit(job(6, GREEDY))
        newest = wait_for(producer)
        assert newest.version == 5
        assert masked_rows(newest.rollout) == masked_rows(HFGenerateEngine(b, tiny_tok).generate(PROMPTS, 2, GREEDY))
    finally:
        producer.close()
    assert not [f for f in os.listdir("/dev/shm") if f.startswith("ticgrpo-weights-")]


def test_a_dead_or_frozen_server_is_reported_in_bounded_time(tmp_path: Path, tiny_tok: Any,
                                                             tiny_factory: Any) -> None:
    own = start_server(tmp_path, tiny_tok, tiny_factory)
    model = tiny_factory(tiny_tok, seed=1)
    try:
        # frozen (SIGSTOP): /health stops answering while the trainer waits
        producer = VLLMProducer(server_engine(model, tiny_tok, own.url), health_every_s=1.0, health_timeout_s=2.0)
        producer.start(model)
        own.proc.send_signal(signal.SIGSTOP)
        start = time.monotonic()
        with pytest.raises(ProducerFailed, match=rf"vLLM producer \({own.url}\) stopped answering its health check"):
            while time.monotonic() - start < 60:
                producer.poll(1.0)
        frozen_seconds = time.monotonic() - start
        own.proc.send_signal(signal.SIGCONT)
        with pytest.raises(ProducerFailed):  # it stays failed
            producer.submit(job(0, GREEDY))
        producer.start(model, version=4)  # started again: a fresh thread and queues
        producer.submit(job(1, GREEDY))
        again = wait_for(producer)
        assert (again.index, again.version) == (1, 4)
        producer.close()

        # killed (SIGKILL) during a job
        producer = VLLMProducer(server_engine(model, tiny_tok, own.url), health_every_s=1.0, health_timeout_s=2.0)
        producer.start(model)
        producer.submit(job(0, LONG, g=16))
        time.sleep(1.0)
        own.proc.kill()
        start = time.monotonic()
        with pytest.raises(ProducerFailed, match=rf"vLLM producer \({own.url}\)"):
            while time.monotonic() - start < 60:
                producer.poll(1.0)
        killed_seconds = time.monotonic() - start
        producer.close()
        print(f"\n[vllm producer] frozen server reported in {frozen_seconds:.1f} s, killed in {killed_seconds:.1f} s")
        assert frozen_seconds < 10 and killed_seconds < 10
    finally:
        stop_server(own)


# ---------------------------------------------------------------- training runs


def digit_count(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """A reward that differs within a group even for a random model: digits in the completion."""
    return [float(sum(ch.isdigit() for ch in c)) for c in completions]


def async_config(tmp_path: Path, served: Served, **rollout: Any) -> dict[str, Any]:
    return {
        "output_dir": str(tmp_path / "run"),
        "seed": 0,
        "max_steps": 4,
        "device": "cpu",
        "threads": 1,
        "model": {"name": str(served.model_dir), "chat_template": False},
        "data": {"train": {"task": "arithmetic", "level": 1, "split": "train", "num_train": 32, "num_eval": 4},
                 "eval": {"task": "arithmetic", "level": 1, "split": "eval", "num_eval": 4}},
        "rollout": {"engine": "vllm", "mode": "async", "max_staleness": 1, "queue_size": 2,
                    "prompts_per_step": 2, "num_generations": 4, "max_new_tokens": 8,
                    "vllm": {"mode": "server", "server_url": served.url}, **rollout},
        "algorithm": {"objective": "tic_grpo", "num_iterations": 1,
                      "rewards": [{"name": "answer_format", "weight": 1.0}]},
        "optim": {"lr": 1e-2},
        "eval": {"every_steps": 0, "at_start": False, "at_end": False},
        "logging": {"progress_bar": False, "plot": False},
        "checkpoint": {"every_steps": 0, "save_final": False},
    }


def records(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("correction", ["none", "token_tis"])
def test_async_training_with_the_vllm_producer(tmp_path: Path, served: Served, correction: str) -> None:
    from ticgrpo.train import Trainer

    cfg = async_config(tmp_path, served)
    cfg["algorithm"]["offpolicy_correction"] = correction
    result = Trainer(cfg, reward_fns=[(digit_count, 1.0)]).train()
    assert result.steps == 4
    logged = records(tmp_path)
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    for r in logged:
        assert math.isfinite(r["loss"]) and r["num_sequences"] == 8
        assert 0 <= r["staleness_mean"] <= r["staleness_max"] <= 1  # rollout.max_staleness
        assert r["queue_depth"] <= 2
        assert r["stale_dropped"] % 8 == 0  # whole jobs older than max_staleness are dropped (timing decides)
        assert 0 < r["offpolicy/ess"] <= 1 + 1e-9 and math.isfinite(r["offpolicy/weight_mean"])
        if r["staleness_max"] == 0:
            # fresh rows: vLLM's behaviour log-probs are compared with the trainer's under the same
            # weights; fp32 on both sides, so they agree to rounding
            assert 0 <= r["mismatch/kl_k3"] < 1e-6 and r["mismatch/abs_diff_max"] < 1e-3
    assert logged[0]["staleness_max"] == 0  # the first batch is sampled by the initial weights
    assert any(r["staleness_max"] == 1 for r in logged), "no stale batch: the run did not overlap"
    print(f"\n[async vllm, {correction}] staleness_max per step", [r["staleness_max"] for r in logged],
          "dropped", [r["stale_dropped"] for r in logged],
          "offpolicy/ess", [round(r["offpolicy/ess"], 4) for r in logged])


def test_evaluation_of_an_async_run_samples_from_the_current_weights(tmp_path: Path, served: Served) -> None:
    """The held-out evaluation goes through the producer's server, which holds the weights of the
    last push (older with weight_sync_every 2, and never the final step's): the trainer pushes
    θ_t, tagged t, before it evaluates, so the server holds the final version afterwards and its
    greedy completions are those of the trained weights."""
    from ticgrpo.train import Trainer

    cfg = async_config(tmp_path, served, weight_sync_every=2, max_staleness=2)
    cfg["eval"] = {"every_steps": 0, "at_start": False, "at_end": True}
    trainer = Trainer(cfg, reward_fns=[(digit_count, 1.0)])
    result = trainer.train()
    assert result.steps == 4 and result.evals and result.evals[-1]["step"] == 4
    client = HTTPBackend(served.url)
    assert client.health()["weight_version"] == 4
    engine = server_engine(trainer.model, trainer.tokenizer, served.url)
    prompts = [trainer.format_prompt(row) for row in trainer.eval_rows]
    hf = HFGenerateEngine(trainer.model, trainer.tokenizer).generate(prompts, 1, GREEDY)
    assert engine.generate(prompts, 1, GREEDY).completions == hf.completions


def test_resumed_async_run_reloads_the_server_with_the_resumed_version(tmp_path: Path, served: Served) -> None:
    from ticgrpo.train import Trainer

    cfg = async_config(tmp_path, served)
    cfg["checkpoint"] = {"every_steps": 1, "keep_last": 0, "save_final": False}
    first = Trainer({**cfg, "max_steps": 2}, reward_fns=[(digit_count, 1.0)]).train()
    assert first.steps == 2
    # the server now holds version 2; a resumed run's producer reloads it with the checkpoint's weights
    resumed = Trainer(cfg, reward_fns=[(digit_count, 1.0)]).train(resume=True)
    assert resumed.steps == 4
    logged = records(tmp_path)
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    assert logged[2]["staleness_max"] == 0  # step 3's batch was sampled by the resumed weights (version 2)
    assert all(r["staleness_max"] <= 1 and math.isfinite(r["loss"]) for r in logged)


def test_killing_the_server_stops_training_with_producer_failed(tmp_path: Path, tiny_tok: Any,
                                                                tiny_factory: Any) -> None:
    from ticgrpo.train import Trainer

    (tmp_path / "own").mkdir()
    own = start_server(tmp_path / "own", tiny_tok, tiny_factory)
    calls: list[float] = []

    def kills_the_server_at_step_two(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        """The rewards run in the trainer process: the second batch's scoring kills the server."""
        calls.append(time.monotonic())
        if len(calls) == 2:
            own.proc.kill()
            own.proc.wait()
        return digit_count(prompts, completions)

    cfg = async_config(tmp_path, own, max_new_tokens=64)
    cfg["max_steps"] = 50
    cfg["checkpoint"] = {"every_steps": 1, "save_final": False}
    try:
        trainer = Trainer(cfg, reward_fns=[(kills_the_server_at_step_two, 1.0)])
        with pytest.raises(ProducerFailed, match=rf"vLLM producer \({own.url}\)"):
            trainer.train()
        failed_after = time.monotonic() - calls[1]
    finally:
        stop_server(own)
    print(f"\n[async vllm] server killed: ProducerFailed {failed_after:.1f} s later")
    assert failed_after < 30
    # the checkpoint of the last finished step is intact
    from ticgrpo.train.checkpoint import latest_checkpoint, read_model_state, verify_checkpoint

    last = latest_checkpoint(tmp_path / "run")
    assert last is not None
    verify_checkpoint(last)
    assert read_model_state(last)


# ---------------------------------------------------------------- what a push costs (SmolLM2)


def test_weight_push_cost_on_smollm2(tmp_path: Path, smol: tuple[str, Any, Any],
                                     arithmetic_prompts: list[str]) -> None:
    """The bundled SmolLM2-135M served in bf16, the trainer's fp32 copy pushed through the producer:
    the rows after the push are sampled by the pushed weights; prints what the push costs."""
    from ticgrpo.rollout.vllm.weights import trainer_weights, weights_file

    path, model, tok = smol
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "server.log", "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ticgrpo.rollout.vllm.server", "--model", path, "--port", str(port),
             "--dtype", "bfloat16", "--max-model-len", "1024"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
        )
    served = Served(proc, url, Path(path), tmp_path / "server.log")
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.model.norm.weight.mul_(1.3)  # sharper next-token distributions everywhere
    try:
        deadline = time.time() + 300
        while True:
            assert proc.poll() is None, served.log.read_text()[-3000:]
            try:
                producer = VLLMProducer(server_engine(model, tok, url))
                break
            except ConnectionError:
                assert time.time() < deadline, "the vLLM server did not come up"
                time.sleep(1.0)
        start = time.monotonic()
        producer.start(model)
        start_seconds = time.monotonic() - start
        params = SamplingParams(max_new_tokens=32, temperature=1.0)
        prompts = arithmetic_prompts[:8]
        producer.submit(RolloutJob(0, prompts, 2, params, seed=5))
        before = wait_for(producer)
        start = time.monotonic()
        producer.push_weights(changed, version=1)
        push_seconds = time.monotonic() - start
        producer.submit(RolloutJob(1, prompts, 2, params, seed=5))
        after = wait_for(producer)
        with weights_file(trainer_weights(changed)) as file:
            start = time.monotonic()
            assert producer.client.load_weights_file(file, 1) == 1
            load_seconds = time.monotonic() - start
        producer.close()
    finally:
        stop_server(served)
    assert (before.version, after.version) == (0, 1)
    assert after.rollout.behavior_logprobs is not None
    mask = after.rollout.completion_mask.bool()
    to_changed = (trainer_logprobs(changed, after.rollout, 1.0) - after.rollout.behavior_logprobs)[mask].abs().mean()
    to_original = (trainer_logprobs(model, after.rollout, 1.0) - after.rollout.behavior_logprobs)[mask].abs().mean()
    size_mb = sum(t.numel() * t.element_size() for _, t in trainer_weights(model)) / 2**20
    print(f"\n[smollm2 push] {size_mb:.0f} MiB fp32; start (write + load) {start_seconds:.2f} s; push_weights on the "
          f"trainer's thread {push_seconds:.2f} s; the server's load of a written file {load_seconds:.2f} s; "
          f"jobs of 16 rows {before.seconds:.2f} s / {after.seconds:.2f} s; mean |Δ log p| after the push: "
          f"to the pushed model {to_changed:.4f}, to the old {to_original:.4f}")
    assert to_changed < 0.1 and to_original > 3 * to_changed
