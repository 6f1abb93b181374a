"""rollout.mode: async — a producer samples ahead of the trainer into a bounded queue.

    source = async_source(config, sampling, engine, model, settings)   # via train.sources.batch_source
    collected = source.next_batch(stream, step)   # the oldest finished job not older than max_staleness
    source.after_update(model, step + 1)          # pushes the weights every rollout.weight_sync_every steps

`AsyncSource` keeps up to rollout.queue_size jobs submitted to the producer
(ticgrpo.rollout.producers: the HF worker process, or a vLLM server) and takes their rollouts in
submission order. Each job is the next rollout.prompts_per_step rows of the stream, formatted
with the run's prompt formatter and seeded by its index (`sampling_seed(seed, job, 0, 0)`); the
producer tags the rows with the policy version of the weights that sampled them. The rewards
are computed here, in the trainer process (a reward may be any user function). A rollout whose
staleness (step − version) exceeds rollout.max_staleness is dropped (counted in `stale_dropped`)
and a replacement job is submitted.

What a resume needs is two integers in the checkpoint (`state`): the policy version of the
weights and the index of the next job; the stream position saved is the one after the last
consumed batch's rows (`stream_state`), so a resumed run submits again the jobs that were
queued, from the same rows with the same seeds, to a fresh producer holding the resumed weights.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import torch

from ticgrpo.config import ConfigError
from ticgrpo.rollout.base import RolloutBatch, RolloutEngine, SamplingParams
from ticgrpo.rollout.producers.base import ProducedRollout, Producer, ProducerFailed, RolloutJob
from ticgrpo.train.prompts import PromptStream, sampling_seed
from ticgrpo.train.sampling import Collected, PlainSampling
from ticgrpo.train.setup import auto_cpu_threads

if TYPE_CHECKING:
    from ticgrpo.config import TrainConfig
    from ticgrpo.train.step import StepSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AsyncOptions:
    """The rollout.* keys an AsyncSource reads."""

    seed: int
    params: SamplingParams
    num_generations: int
    generation_batch_size: int | None
    queue_size: int
    max_staleness: int | None
    weight_sync_every: int
    timeout_s: float

    @staticmethod
    def from_config(config: TrainConfig) -> AsyncOptions:
        r = config.rollout
        return AsyncOptions(config.seed, SamplingParams(r.max_new_tokens, r.temperature, r.top_p, r.top_k),
                            r.num_generations, r.generation_batch_size, r.queue_size, r.max_staleness,
                            r.weight_sync_every, r.producer_timeout_s)


@dataclass(frozen=True)
class PendingJob:
    job: RolloutJob
    rows: list[dict]  # the dataset rows of its prompts (the rewards read them)
    stream_after: dict[str, Any]  # the stream's position once its rows were taken


class AsyncSource:
    """The BatchSource protocol (ticgrpo.train.sources) over a Producer."""

    def __init__(self, producer: Producer, sampling: PlainSampling, model: Any, options: AsyncOptions) -> None:
        self.producer, self.sampling, self.model, self.options = producer, sampling, model, options
        self.version = 0  # the policy version of the trainer's weights (after_update / load_state)
        self.next_job = 0  # index of the next job to submit
        self.pending: deque[PendingJob] = deque()  # submitted, not yet consumed, in submission order
        self.finished: deque[ProducedRollout] = deque()  # received from the producer, not yet consumed
        self.consumed_stream: dict[str, Any] | None = None  # the stream after the last consumed job's rows
        self.started = False
        self.push_seconds = 0.0  # the last weight push (reported with the next batch)

    @property
    def in_flight(self) -> int:
        """Jobs submitted and not yet consumed: never more than rollout.queue_size."""
        return len(self.pending)

    def next_batch(self, stream: PromptStream, step: int) -> Collected:
        self._start(stream)
        self._fill(stream)
        self._collect_finished()
        depth = len(self.finished)
        dropped, waited = 0, 0.0
        while True:
            produced, seconds = self._next_finished()
            waited += seconds
            entry = self.pending.popleft()
            if produced.index != entry.job.index:
                raise ProducerFailed(f"{self.producer.name} returned job {produced.index} where job "
                                     f"{entry.job.index} was next (jobs are taken in submission order)")
            limit = self.options.max_staleness
            if limit is None or step - produced.version <= limit:
                break
            dropped += len(produced.rollout)
            self._fill(stream)  # a replacement for the dropped job
        self.consumed_stream = entry.stream_after
        self._fill(stream)  # the producer samples the next jobs while the trainer optimises
        return self._score(produced, entry, step, {"queue_depth": float(depth), "stale_dropped": float(dropped)},
                           waited)

    def after_update(self, model: Any, version: int) -> None:
        self.version = version
        if self.started and version % self.options.weight_sync_every == 0:
            start = time.perf_counter()
            self.producer.push_weights(model, version)
            self.push_seconds = time.perf_counter() - start

    def prepare_eval(self, model: Any, version: int) -> None:
        """The trainer's engine may be the producer's (a vLLM server holding the weights of the
        last push, which may be older): give it the current weights, tagged with their version, so
        that the evaluation scores θ_t and later jobs report the version they really used."""
        engine = self.sampling.groups.engine
        if isinstance(engine, RolloutEngine):
            engine.update_weights(model, version=version)

    def stream_state(self, stream: PromptStream) -> dict[str, Any]:
        """The position after the last consumed batch's rows: the rows of queued jobs are taken
        again by a resumed run."""
        return dict(self.consumed_stream) if self.consumed_stream is not None else stream.state()

    def state(self) -> dict[str, Any]:
        consumed = self.next_job - len(self.pending)
        return {"policy_version": self.version, "next_job": consumed}

    def load_state(self, state: dict[str, Any], model: Any) -> None:
        """A resumed run: the weights are those of version `policy_version`; the queued jobs are
        forgotten (a fresh producer samples them again, lazily, at the first next_batch)."""
        self.close()
        self.model = model
        self.version = int(state.get("policy_version", 0))
        self.next_job = int(state.get("next_job", 0))
        self.pending.clear()
        self.finished.clear()
        self.consumed_stream = None

    def close(self) -> None:
        if self.started:
            self.started = False
            self.producer.close()

    # ------------------------------------------------------------------ the queue

    def _start(self, stream: PromptStream) -> None:
        if self.started:
            return
        self.producer.start(self.model)
        self.started = True
        if self.version:  # a resumed run: the producer's copy must be the resumed weights
            self.producer.push_weights(self.model, self.version)
        if self.consumed_stream is None:
            self.consumed_stream = stream.state()

    def _fill(self, stream: PromptStream) -> None:
        """Submit jobs until rollout.queue_size are in flight."""
        o = self.options
        while len(self.pending) < o.queue_size:
            rows = stream.take(self.sampling.prompts_per_step)
            job = RolloutJob(self.next_job, [self.sampling.format_prompt(r) for r in rows], o.num_generations,
                             o.params, sampling_seed(o.seed, self.next_job, 0, 0), o.generation_batch_size)
            self.producer.submit(job)
            self.pending.append(PendingJob(job, rows, stream.state()))
            self.next_job += 1

    def _collect_finished(self) -> None:
        """Take what the producer has finished without waiting."""
        while (produced := self.producer.poll(0.0)) is not None:
            self.finished.append(produced)

    def _next_finished(self) -> tuple[ProducedRollout, float]:
        """The oldest finished rollout and the seconds waited for it; ProducerFailed after
        rollout.producer_timeout_s without one (a dead producer is reported by poll at once)."""
        if self.finished:
            return self.finished.popleft(), 0.0
        start = time.perf_counter()
        deadline = time.monotonic() + self.options.timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            produced = self.producer.poll(remaining)
            if produced is not None:
                return produced, time.perf_counter() - start
        raise ProducerFailed(f"{self.producer.name} produced no rollout in {self.options.timeout_s:g} s "
                             f"(rollout.producer_timeout_s); it is hung or far too slow")

    def _score(self, produced: ProducedRollout, entry: PendingJob, step: int, metrics: dict[str, float],
               waited: float) -> Collected:
        start = time.perf_counter()
        rollout = to_device(produced.rollout, next(self.model.parameters()).device)
        scored = self.sampling.scorer.score(rollout, entry.rows, self.options.num_generations)
        if scored.errors:
            logger.warning("step %d: %d reward error(s), %s; first: %s", step + 1, len(scored.errors),
                           scored.action, scored.errors[0].message)
        # rollout: the producer's seconds sampling this batch (so rollout_tokens_per_s is its sampling
        # speed); rollout_wait: what the trainer waited for it (0 when the producer was ahead)
        times = {"rollout": produced.seconds, "rollout_wait": waited, "reward": time.perf_counter() - start,
                 "weight_push": self.push_seconds}
        self.push_seconds = 0.0
        return Collected(scored.batch, times, metrics, list(scored.errors))


def to_device(rollout: RolloutBatch, device: torch.device) -> RolloutBatch:
    moved = {f.name: getattr(rollout, f.name).to(device) for f in fields(rollout)
             if isinstance(getattr(rollout, f.name), torch.Tensor)}
    return replace(rollout, **moved)


def split_cpu_threads(config: TrainConfig) -> int:
    """The producer's CPU threads: the cores the trainer leaves (threads: n takes n of them; auto
    splits them in half, and the trainer is set to its half here), at least one."""
    cores = auto_cpu_threads()
    if config.threads != "auto":
        return max(cores - int(config.threads), 1)
    producer = max(cores // 2, 1)
    torch.set_num_threads(max(cores - producer, 1))  # the trainer's share (it had taken every core)
    return producer


def async_source(config: TrainConfig, sampling: PlainSampling, engine: Any, model: Any,
                 settings: StepSettings) -> AsyncSource:
    """The AsyncSource of a run: the HF producer (a worker process with its own copy of the model)
    for rollout.engine: hf, the vLLM server's producer for rollout.engine: vllm."""
    if sampling.dist.world_size > 1:
        raise ConfigError("rollout.mode: async runs in one process (one producer per trainer); launch a single "
                         "process or use rollout.mode: sync")
    return AsyncSource(rollout_producer(config, engine, model, settings), sampling, model,
                       AsyncOptions.from_config(config))


def rollout_producer(config: TrainConfig, engine: Any, model: Any, settings: StepSettings) -> Producer:
    if config.rollout.engine == "vllm":
        from ticgrpo.rollout.producers.vllm import vllm_producer  # type: ignore[import-not-found,unused-ignore]

        producer: Producer = vllm_producer(config, engine)
        return producer
    from ticgrpo.rollout.producers.hf import HFProducer, HFWorkerSpec

    device = next(model.parameters()).device
    threads = split_cpu_threads(config) if device.type == "cpu" else 1
    return HFProducer(HFWorkerSpec.of_engine(engine, settings, str(device), threads), config.rollout.producer_timeout_s)


__all__ = ["AsyncOptions", "AsyncSource", "async_source", "rollout_producer", "split_cpu_threads"]
