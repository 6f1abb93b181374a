"""`HFProducer`: asynchronous rollouts from a worker process with its own copy of the policy.

    producer = HFProducer(HFWorkerSpec.of_engine(engine, settings, device, threads), timeout_s=600)
    producer.start(model)                      # spawns the worker; returns once it has loaded its copy
    producer.submit(job); produced = producer.poll(1.0); producer.push_weights(model, version)

The worker (`ticgrpo.rollout.producers.hf_worker`, a `spawn` process that never imports vLLM)
samples jobs FIFO with `HFGenerateEngine` on its copy of the model, seeds and groups each job as
`GroupSampler` does, and computes `sampler_logprobs` teacher-forced under its weights with the
trainer's own `fixed_logprobs` (same temperature, chunking, micro-batches and autocast).

Weights travel through one shared-memory buffer of the trainable parameters, allocated once:
`push_weights` copies the trainer's parameters into it under a lock and bumps a shared version
counter; the worker copies the buffer into its model when it starts a job and the counter has
moved (so a push takes effect for the next job, and pushes made during one job collapse into the
last). A push costs one memcpy of the trainable weights on the trainer's side, never a pickle.

A dead worker is reported by `poll`/`push_weights` within `POLL_SLICE_S` of being asked; one that
stops answering is the caller's timeout (AsyncSource: rollout.producer_timeout_s); both raise
`ProducerFailed` with one line naming the producer.
"""

from __future__ import annotations

import copy
import multiprocessing as mp
import queue
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ticgrpo.rollout.producers.base import ProducedRollout, ProducerFailed, RolloutJob

if TYPE_CHECKING:
    from multiprocessing.context import SpawnProcess

    from ticgrpo.rollout.hf import HFGenerateEngine
    from ticgrpo.train.step import StepSettings

POLL_SLICE_S = 0.2  # how often a waiting call checks that the worker is alive
CLOSE_JOIN_S = 3.0  # how long close() waits for the worker to exit after SIGTERM (then SIGKILL)
STARTUP_TIMEOUT_S = 300.0  # importing torch/transformers and unpickling the model copy


@dataclass(frozen=True)
class HFWorkerSpec:
    """What the worker needs besides the model: the engine's options, the trainer's log-prob
    settings, where to run and how many CPU threads to use."""

    tokenizer: Any
    settings: StepSettings
    device: str
    threads: int
    batch_size: int | None = None
    max_prompt_length: int | None = None
    autocast_dtype: torch.dtype | None = None
    add_special_tokens: bool = False

    @staticmethod
    def of_engine(engine: HFGenerateEngine, settings: StepSettings, device: str, threads: int) -> HFWorkerSpec:
        """The spec that rebuilds `engine` (the trainer's HF engine) in the worker."""
        return HFWorkerSpec(engine.tokenizer, settings, device, threads, engine.batch_size, engine.max_prompt_length,
                            engine.autocast_dtype, engine.add_special_tokens)


def trainable_weights(model: Any) -> dict[str, torch.Tensor]:
    """The parameters an optimizer step changes (frozen ones stay as the worker's copy has them)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"was killed by {signal.Signals(-exitcode).name}"
    return f"exited with code {exitcode}"


class HFProducer:
    """The Producer protocol (ticgrpo.rollout.producers.base) over one HF worker process."""

    def __init__(self, spec: HFWorkerSpec, timeout_s: float = 600.0) -> None:
        self.spec, self.timeout_s = spec, timeout_s
        self.name = "HF rollout producer (not started)"
        self._ctx = mp.get_context("spawn")  # never fork a process that holds torch threads (or CUDA)
        self._process: SpawnProcess | None = None
        self._weights: dict[str, torch.Tensor] = {}
        self._lock: Any = None
        self._version: Any = None
        self._jobs: Any = None
        self._results: Any = None

    def _open_channels(self) -> None:
        """Fresh queues, lock and version counter: each start gets its own (close() closes them)."""
        self._lock = self._ctx.Lock()
        self._version = self._ctx.Value("q", 0, lock=False)  # guarded by _lock
        self._jobs = self._ctx.Queue()
        self._results = self._ctx.Queue()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self, model: Any) -> None:
        """Spawn the worker with a copy of `model` (version 0) and wait until it has loaded it."""
        from ticgrpo.rollout.producers import hf_worker

        self.close()  # a restart replaces the worker it had
        self._open_channels()
        trainable = trainable_weights(model).items()
        self._weights = {n: p.detach().to("cpu", copy=True).share_memory_() for n, p in trainable}
        self._process = self._ctx.Process(target=hf_worker.main, name="ticgrpo-hf-producer", daemon=True,
                                          args=(self._jobs, self._results, self._lock, self._version))
        self._process.start()
        self.name = f"HF rollout producer (pid {self._process.pid})"
        replica = copy.deepcopy(model).to("cpu")  # the worker's own copy; its tensors move to shared memory
        self._jobs.put(hf_worker.Init(replica, self._weights, self.spec))
        del replica
        message = self._receive(STARTUP_TIMEOUT_S)
        if message is None:
            raise ProducerFailed(f"{self.name} did not start within {STARTUP_TIMEOUT_S:g} s")
        if message[0] != "ready":
            raise ProducerFailed(f"{self.name} sent {message[0]!r} before it was ready")

    def submit(self, job: RolloutJob) -> None:
        self._check_alive()
        self._jobs.put(job)

    def poll(self, timeout: float) -> ProducedRollout | None:
        """The next finished job (FIFO), or None after `timeout` seconds; ProducerFailed when the
        worker raised or died."""
        message = self._receive(timeout)
        if message is None:
            return None
        kind, payload = message
        if kind != "rollout":
            raise ProducerFailed(f"{self.name} sent {kind!r} where a rollout was expected")
        produced: ProducedRollout = payload
        return produced

    def push_weights(self, model: Any, version: int) -> None:
        """Copy the trainable weights into the shared buffer; the worker's next job uses them."""
        self._check_alive()
        deadline = time.monotonic() + self.timeout_s
        while not self._lock.acquire(timeout=POLL_SLICE_S):  # the worker holds it while it copies out
            self._check_alive()
            if time.monotonic() > deadline:
                raise ProducerFailed(f"{self.name} held the weight buffer for over {self.timeout_s:g} s "
                                     f"(rollout.producer_timeout_s)")
        try:
            with torch.no_grad():
                for name, param in trainable_weights(model).items():
                    self._weights[name].copy_(param.detach())
            self._version.value = version
        finally:
            self._lock.release()

    def close(self) -> None:
        """Stop the worker, whatever state it is in (busy, hung, stopped): SIGTERM, then SIGKILL."""
        process, self._process = self._process, None
        if process is not None:
            if process.is_alive():
                process.terminate()
                process.join(CLOSE_JOIN_S)
            if process.is_alive():
                process.kill()  # also ends a SIGSTOPped process
                process.join(CLOSE_JOIN_S)
            self.name = f"{self.name.partition(' (')[0]} (pid {process.pid}, closed)"
        for q in (self._jobs, self._results):
            if q is not None:
                q.cancel_join_thread()  # never block interpreter exit on a pipe nobody reads
                q.close()
        self._jobs = self._results = None

    def _receive(self, timeout: float) -> tuple[str, Any] | None:
        """The worker's next message, checking every POLL_SLICE_S that it is alive."""
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            try:
                message = self._results.get(timeout=min(POLL_SLICE_S, max(deadline - time.monotonic(), 0.0)))
            except queue.Empty:
                self._check_alive()
                if time.monotonic() >= deadline:
                    return None
                continue
            if message[0] == "failed":
                raise ProducerFailed(f"{self.name} failed: {message[1]}")
            return message

    def _check_alive(self) -> None:
        if self._process is None:
            raise ProducerFailed(f"{self.name}: start() was not called, or close() was")
        if not self._process.is_alive():
            raise ProducerFailed(f"{self.name} {describe_exit(self._process.exitcode)}")


__all__ = ["HFProducer", "HFWorkerSpec", "trainable_weights"]
