"""The producer interface of asynchronous rollouts (rollout.mode: async).

A producer samples rollout jobs in the background, with its own copy of the policy weights,
while the trainer optimises; the trainer's AsyncSource (ticgrpo.train.async_source) submits
jobs, takes finished rollouts in submission order, pushes new weights every
rollout.weight_sync_every steps and drops rollouts older than rollout.max_staleness.

    producer.start(model)                      # own weight copy = version 0
    producer.submit(RolloutJob(index=0, ...))  # non-blocking
    produced = producer.poll(timeout=1.0)      # ProducedRollout | None; raises ProducerFailed
    producer.push_weights(model, version=3)    # takes effect for jobs it starts afterwards
    producer.close()

Two producers: the HF engine in a worker process (ticgrpo.rollout.producers.hf) and a vLLM
server (ticgrpo.rollout.producers.vllm).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ticgrpo.rollout.base import RolloutBatch, SamplingParams


class ProducerFailed(RuntimeError):
    """The producer died, hung past rollout.producer_timeout_s or raised; the message is one line
    naming the producer (e.g. "HF rollout producer (pid 1234)") and what happened. The trainer stops
    (its checkpoints intact); `ticgrpo train` prints the line and exits with 5."""

    exit_code = 5  # 2: bad input, 3: the run halted itself, 4: a checkpoint write failed


@dataclass(frozen=True)
class RolloutJob:
    index: int  # the job's number in submission order (0, 1, ...): seeds it
    prompts: list[str]  # formatted prompt texts, one per group
    num_generations: int  # G
    params: SamplingParams
    seed: int  # the job's sampling seed (the HF producer seeds each generate call from it, as GroupSampler does)
    generation_batch_size: int | None = None  # sequences per generate() call, as rollout.generation_batch_size


@dataclass
class ProducedRollout:
    index: int  # the job's index
    version: int  # the policy version whose weights sampled every row of the job
    rollout: RolloutBatch  # policy_version filled; sampler_logprobs (HF) or behavior_logprobs (vLLM)
    seconds: float  # time the producer spent sampling the job


class Producer(Protocol):
    name: str  # for errors: "HF rollout producer (pid 1234)", "vLLM producer (http://...)"

    def start(self, model: Any) -> None: ...

    def submit(self, job: RolloutJob) -> None: ...

    def poll(self, timeout: float) -> ProducedRollout | None: ...

    def push_weights(self, model: Any, version: int) -> None: ...

    def close(self) -> None: ...


__all__ = ["ProducedRollout", "Producer", "ProducerFailed", "RolloutJob"]
