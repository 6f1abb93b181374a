"""The vLLM producer of asynchronous rollouts: a `ticgrpo.rollout.vllm.server` process samples,
a background thread of the trainer process feeds it.

    producer = vllm_producer(config, engine)   # engine: the trainer's VLLMEngine(mode="server")
    producer.start(model)                      # the server gets the trainer's weights as version 0
    producer.submit(job); producer.poll(1.0)   # FIFO; ProducedRollout with behavior_logprobs
    producer.push_weights(model, version=3)    # the jobs the thread starts afterwards use them

The server is its own process (its own GPU, or CPU cores); the thread only sends HTTP requests
and waits, so the trainer's thread is never blocked by sampling. The weights travel as the
server mode always sends them (a safetensors file under /dev/shm read by the server): the
trainer's thread writes the file in `push_weights` (a snapshot of the weights at that call,
as the next optimizer step changes them in place) and the producer thread posts it before
the next job it starts; pushes that pile up while a job runs are replaced by the newest.

Every row's version is the one the server reports for the generate that sampled it (the server
serialises generates and weight loads), so a job that started before a push reports the old
version. Failures: a generate that does not answer within rollout.producer_timeout_s, a server
that dies (connection refused or reset) or stops answering its /health check (checked every
few seconds while the trainer waits) all become ProducerFailed naming the server.
"""

from __future__ import annotations

import contextlib
import copy
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ticgrpo.rollout.base import concat_rollouts
from ticgrpo.rollout.producers.base import ProducedRollout, ProducerFailed, RolloutJob
from ticgrpo.rollout.vllm.client import HTTPBackend
from ticgrpo.rollout.vllm.engine import VLLMEngine
from ticgrpo.rollout.vllm.weights import trainer_weights, weights_file

if TYPE_CHECKING:
    from ticgrpo.config import TrainConfig

HEALTH_EVERY_S = 2.0  # while the trainer waits for a rollout, how often the server's /health is asked
HEALTH_TIMEOUT_S = 5.0  # /health answers at once even during a generate (it takes no lock)
JOIN_TIMEOUT_S = 10.0  # close(): how long to wait for the thread (it is a daemon thread either way)
JOB_SEED_RANGE = 2**32  # a job's 63-bit seed is reduced to this, leaving room for the per-sample offsets


@dataclass
class PendingWeights:
    """A weights file written by `push_weights`, waiting for the producer thread to post it."""

    path: str
    version: int
    cleanup: contextlib.ExitStack  # removes the file

    def discard(self) -> None:
        self.cleanup.close()


@dataclass(frozen=True)
class Failure:
    """What the producer thread puts on the results queue when it stops on an error."""

    message: str


class VLLMProducer:
    """Samples RolloutJobs FIFO on a running vLLM server, from a background thread (see the module
    docstring). ``engine`` is this producer's own server-mode VLLMEngine (own tokenizer: the
    thread tokenises while the trainer may use its tokenizer)."""

    def __init__(self, engine: VLLMEngine, *, health_every_s: float = HEALTH_EVERY_S,
                 health_timeout_s: float = HEALTH_TIMEOUT_S, join_timeout_s: float = JOIN_TIMEOUT_S) -> None:
        if not isinstance(engine.backend, HTTPBackend):
            raise ValueError("the vLLM producer needs a server-mode VLLMEngine (rollout.vllm.mode: server)")
        self.engine = engine
        self.client: HTTPBackend = engine.backend
        self.name = f"vLLM producer ({self.client.url})"
        self.health_every_s = health_every_s
        self.health_timeout_s = health_timeout_s
        self.join_timeout_s = join_timeout_s
        self.jobs: queue.Queue[RolloutJob] = queue.Queue()
        self.results: queue.Queue[ProducedRollout | Failure] = queue.Queue()
        self.weights: queue.Queue[PendingWeights] = queue.Queue()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.failure: str | None = None  # set by the trainer's thread once it has seen a failure
        self.last_health = 0.0

    # ------------------------------------------------------------------ the trainer's side

    def start(self, model: Any, version: int = 0) -> None:
        """Load ``model``'s weights into the server as ``version`` (a server that served another run
        holds other weights) and start the thread. Starting again (a resumed source, or after a
        failure) first closes the previous thread and starts from empty queues."""
        if self.thread is not None:
            self.close()
        self.jobs, self.results, self.weights = queue.Queue(), queue.Queue(), queue.Queue()
        self.stop = threading.Event()
        self.thread, self.failure = None, None
        try:
            with weights_file(trainer_weights(model), self.client.weights_dir) as path:
                self.client.load_weights_file(path, version)
        except (ConnectionError, RuntimeError) as exc:
            raise ProducerFailed(f"{self.name} could not load the initial weights: {exc}") from None
        self.last_health = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="vllm-producer", daemon=True)
        self.thread.start()

    def submit(self, job: RolloutJob) -> None:
        self._check_running()
        self.jobs.put(job)

    def poll(self, timeout: float) -> ProducedRollout | None:
        """The next finished job in submission order, or None after ``timeout`` seconds; raises
        ProducerFailed when the thread stopped on an error or the server stopped answering."""
        self._check_running()
        deadline = time.monotonic() + timeout
        while True:
            wait = min(deadline - time.monotonic(), self.health_every_s)
            try:
                item = self.results.get(timeout=max(wait, 0.0))
            except queue.Empty:
                item = None
            if isinstance(item, Failure):
                self.failure = item.message
                raise ProducerFailed(item.message)
            if item is not None:
                return item
            self._check_health()
            if time.monotonic() >= deadline:
                return None

    def push_weights(self, model: Any, version: int) -> None:
        """Snapshot ``model``'s weights (a file) for the thread to load as ``version`` before the next
        job it starts; returns without waiting for the job in flight."""
        self._check_running()
        cleanup = contextlib.ExitStack()
        try:
            path = cleanup.enter_context(weights_file(trainer_weights(model), self.client.weights_dir))
        except BaseException:
            cleanup.close()
            raise
        self.weights.put(PendingWeights(path, int(version), cleanup))

    def close(self) -> None:
        """Stop the thread (waiting at most join_timeout_s for a generate in flight) and remove the
        weight files not yet posted. The server keeps running: it is not this producer's."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(self.join_timeout_s)
        for pending in _drain(self.weights):
            pending.discard()
        self.engine.close()

    # ------------------------------------------------------------------ checks

    def _check_running(self) -> None:
        if self.failure is not None:
            raise ProducerFailed(self.failure)
        if self.thread is None:
            raise RuntimeError(f"{self.name} is not started (call start(model) first)")
        if self.stop.is_set():
            raise RuntimeError(f"{self.name} is closed")

    def _check_health(self) -> None:
        if time.monotonic() - self.last_health < self.health_every_s:
            return
        try:
            self.client.health(timeout=self.health_timeout_s)
        except (ConnectionError, RuntimeError) as exc:
            self.failure = f"{self.name} stopped answering its health check within {self.health_timeout_s:g} s: {exc}"
            raise ProducerFailed(self.failure) from None
        self.last_health = time.monotonic()

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                self._load_pending_weights()
                try:
                    job = self.jobs.get(timeout=0.2)
                except queue.Empty:
                    continue
                self._load_pending_weights()  # a push that came while the thread waited for the job
                self.results.put(self._sample(job))
        except Exception as exc:
            self.results.put(Failure(f"{self.name}: {' '.join(f'{type(exc).__name__}: {exc}'.split())}"))

    def _load_pending_weights(self) -> None:
        newest = None
        for pending in _drain(self.weights):
            if newest is not None:
                newest.discard()  # superseded before the server needed it
            newest = pending
        if newest is None:
            return
        try:
            self.client.load_weights_file(newest.path, newest.version)
        finally:
            newest.discard()

    def _sample(self, job: RolloutJob) -> ProducedRollout:
        """The job's G completions per prompt, `generation_batch_size` sequences per request (as
        GroupSampler splits them), each request seeded from the job's seed and its first group, so
        the samples do not depend on the split."""
        started = time.perf_counter()
        g = job.num_generations
        per_call = max(1, (job.generation_batch_size or len(job.prompts) * g) // g)
        # prompt k's j-th sample is seeded by base + k·G + j whatever the split into requests
        base = job.seed % JOB_SEED_RANGE
        parts = [self.engine.generate(job.prompts[first : first + per_call], g, job.params, seed=base + first * g)
                 for first in range(0, len(job.prompts), per_call)]
        rollout = concat_rollouts(parts, self.engine.pad_token_id)
        if rollout.policy_version is None or not len(rollout):
            raise RuntimeError(f"job {job.index} gave no rows with a weight version")
        rollout.group_ids = torch.arange(len(job.prompts)).repeat_interleave(g)
        # one version per job unless another client pushed weights between its requests; then the
        # oldest counts (the job's largest staleness)
        version = int(rollout.policy_version.min())
        return ProducedRollout(job.index, version, rollout, time.perf_counter() - started)


def _drain(items: queue.Queue[PendingWeights]) -> list[PendingWeights]:
    out = []
    while True:
        try:
            out.append(items.get_nowait())
        except queue.Empty:
            return out


def vllm_producer(config: TrainConfig, engine: Any) -> VLLMProducer:
    """The producer of rollout.mode: async with rollout.engine: vllm: its own client of the server
    the trainer's ``engine`` (a server-mode VLLMEngine) talks to, whose generate requests wait at
    most rollout.producer_timeout_s, with its own copy of the tokenizer."""
    if not isinstance(engine, VLLMEngine) or not isinstance(engine.backend, HTTPBackend):
        raise ValueError("rollout.mode: async with rollout.engine: vllm needs rollout.vllm.mode: server "
                         "(a running `python -m ticgrpo.rollout.vllm.server`, docs/vllm.md)")
    client = engine.backend
    own = VLLMEngine(engine.model, copy.deepcopy(engine.tokenizer), max_prompt_length=engine.max_prompt_length,
                     mode="server", server_url=client.url, timeout=float(config.rollout.producer_timeout_s),
                     weights_dir=client.weights_dir)
    return VLLMProducer(own)


__all__ = ["VLLMProducer", "vllm_producer"]
