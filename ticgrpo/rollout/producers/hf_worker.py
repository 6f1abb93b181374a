"""The HF producer's worker process (started by ticgrpo.rollout.producers.hf.HFProducer, `spawn`).

Messages: the first job-queue item is an `Init` (the model copy, the shared weight buffer, the
spec); then RolloutJobs. Answers on the result queue: ("ready", pid), ("rollout", ProducedRollout)
per job in order, or ("failed", one line) once, after which the worker exits. It exits by itself
when the trainer process is gone (it is re-parented), so a killed trainer leaves no sampler behind.
"""

from __future__ import annotations

import os
import queue
import time
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from ticgrpo.rollout.base import RolloutBatch
from ticgrpo.rollout.producers.base import ProducedRollout, RolloutJob
from ticgrpo.rollout.producers.hf import HFWorkerSpec

PARENT_CHECK_S = 1.0  # how often an idle worker checks that the trainer is still there


@dataclass
class Init:
    model: Any  # the worker's own copy of the policy (version 0)
    weights: dict[str, torch.Tensor]  # the shared buffer push_weights writes
    spec: HFWorkerSpec


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:400]}" if text else type(exc).__name__


def main(jobs: Any, results: Any, lock: Any, version: Any) -> None:
    parent = os.getppid()
    try:
        worker = Worker(jobs.get(), lock, version)
        results.put(("ready", os.getpid()))
        while (job := next_job(jobs, parent)) is not None:
            results.put(("rollout", worker.produce(job)))
    except BaseException as exc:  # whatever it is goes back to the trainer as one line
        results.put(("failed", one_line(exc)))
        raise SystemExit(1) from None


def next_job(jobs: Any, parent: int) -> RolloutJob | None:
    """The next job, or None once the trainer process has gone."""
    while os.getppid() == parent:
        try:
            job: RolloutJob = jobs.get(timeout=PARENT_CHECK_S)
            return job
        except queue.Empty:
            continue
    return None


class Worker:
    def __init__(self, init: Init, lock: Any, version: Any) -> None:
        from ticgrpo.rollout.hf import HFGenerateEngine

        spec = init.spec
        torch.set_num_threads(spec.threads)
        self.spec, self.weights, self.lock, self.shared_version = spec, init.weights, lock, version
        self.model = init.model.to(spec.device)
        self.params = dict(self.model.named_parameters())
        self.version = 0  # the copy it was sent is version 0 (the buffer's counter starts there too)
        self.engine = HFGenerateEngine(self.model, spec.tokenizer, spec.batch_size, spec.max_prompt_length,
                                       spec.autocast_dtype, spec.add_special_tokens)

    def refresh_weights(self) -> int:
        """Copy the shared buffer into the model when a push has landed since the last job."""
        with self.lock:
            latest = int(self.shared_version.value)
            if latest != self.version:
                with torch.no_grad():
                    for name, tensor in self.weights.items():
                        self.params[name].copy_(tensor)
                self.version = latest
        return self.version

    def produce(self, job: RolloutJob) -> ProducedRollout:
        from ticgrpo.train.sampling import GroupSampler
        from ticgrpo.train.step import TrainingBatch, fixed_logprobs

        start = time.perf_counter()
        version = self.refresh_weights()
        groups = GroupSampler(self.engine, job.num_generations, job.params, job.seed, job.generation_batch_size)
        rollout = groups.sample(job.prompts, step=0, round_index=0, first_group=0)
        unweighted = TrainingBatch.from_rollout(rollout, torch.zeros(len(rollout)))
        rollout.sampler_logprobs = fixed_logprobs(self.model, unweighted, self.spec.settings)
        rollout.policy_version = torch.full((len(rollout),), version, dtype=torch.long)
        return ProducedRollout(job.index, version, on_cpu(rollout), time.perf_counter() - start)


def on_cpu(rollout: RolloutBatch) -> RolloutBatch:
    """The batch with every tensor on the CPU (what crosses the process boundary)."""
    moved = {f.name: getattr(rollout, f.name).cpu() for f in fields(rollout)
             if isinstance(getattr(rollout, f.name), torch.Tensor)}
    return replace(rollout, **moved)


__all__ = ["Init", "main"]
