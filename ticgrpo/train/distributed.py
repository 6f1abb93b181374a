"""Data parallelism across processes for `ticgrpo train` under `torchrun` or `accelerate launch`.

    accelerate launch --multi_gpu --num_processes 8 -m ticgrpo.cli train --config my.yaml
    torchrun --nproc_per_node 2 -m ticgrpo.cli train --config my.yaml        # CPU: gloo

Every process holds a full replica of the model and optimizer (DDP semantics). Each training
step, the P prompts of the global batch are split into equal contiguous shares, one per
process; every process samples and scores its share's groups, and then

  - advantages are computed on the gathered rewards of the whole batch (so batch-level
    advantages such as `batch_std` see every group), each process keeping its own rows;
  - the loss normalisers (token and sequence counts, L_max) are those of the whole batch;
  - gradients are summed across processes before clipping and the optimizer step.

With global normalisers a process's loss is its share of the global loss, so the summed
gradient is exactly the one-process gradient of the whole batch, and the replicas stay equal.
Gradients are all-reduced once per optimizer step (after the micro-batches), not overlapped
with the backward pass: the forward path (`ticgrpo.core.logprobs`) calls the decoder and a chunked
LM head directly, which a `DistributedDataParallel` wrapper would not see. Parameters are not
sharded: for FSDP / DeepSpeed ZeRO use the TRL plug-in (docs/scaling.md).

Only process 0 writes files (logs, checkpoints, plots); evaluation is split across processes
and its results combined, weighted by the number of examples.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from ticgrpo.core.batch import StepNormalizers
from ticgrpo.train.metrics import reduce_values


@dataclass
class Distributed:
    """This process's place in the job; `Distributed()` is the single-process no-op."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this object initialised the process group (and destroys it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device_type: str) -> Distributed:
        """Join the job described by RANK / WORLD_SIZE / LOCAL_RANK (torchrun, accelerate launch).

        Backend: NCCL on CUDA, gloo on CPU. A single process (no WORLD_SIZE, or 1) gets the no-op.
        """
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        local = int(os.environ.get("LOCAL_RANK", "0"))
        owns = False
        if not dist.is_initialized():
            if device_type == "cuda":
                torch.cuda.set_device(local)
            dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
            owns = True
        return cls(dist.get_rank(), dist.get_world_size(), local, owns)

    def close(self) -> None:
        """Leave the job cleanly: wait for every process, destroy the group, and free it now.

        A gloo group still alive at interpreter exit (e.g. held by a reference cycle) has
        running threads when C++ destructors run, and the process aborts ("terminate called
        without an active exception") after an otherwise successful run."""
        if self.owns_group:
            import gc

            import torch.distributed as dist

            if dist.is_initialized():
                dist.barrier()
                dist.destroy_process_group()
            self.owns_group = False
            gc.collect()

    # ------------------------------------------------------------------ splitting work

    def share(self, items: list) -> list:
        """This process's contiguous share of a list whose length the world size divides."""
        if len(items) % self.world_size:
            raise ValueError(f"{len(items)} items cannot be split evenly over {self.world_size} processes")
        n = len(items) // self.world_size
        return items[self.rank * n : (self.rank + 1) * n]

    def uneven_share(self, items: list) -> list:
        """Contiguous share of any list (sizes differ by at most one); for evaluation."""
        start = self.rank * len(items) // self.world_size
        end = (self.rank + 1) * len(items) // self.world_size
        return items[start:end]

    # ------------------------------------------------------------------ collectives

    def all_gather(self, obj: Any) -> list[Any]:
        """Every process's `obj`, in rank order (picklable objects; small ones)."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def sum_floats(self, values: list[float]) -> list[float]:
        if not self.enabled or not values:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        dist.all_reduce(t)
        return t.tolist()

    def max_float(self, value: float) -> float:
        if not self.enabled:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def any_true(self, flag: bool) -> bool:
        """Whether `flag` holds on at least one process (every process must call this)."""
        if not self.enabled:
            return flag
        return self.sum_floats([float(flag)])[0] > 0

    def sum_gradients(self, params: list[torch.Tensor]) -> None:
        """∑ over processes of every parameter's .grad, in place (missing grads count as 0)."""
        if not self.enabled:
            return
        import torch.distributed as dist

        # one flat buffer per dtype: a handful of collectives instead of one per tensor
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for p in params:
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            p.grad = grad
            by_dtype.setdefault(grad.dtype, []).append(grad)
        for grads in by_dtype.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

    def normalizers(self, mask: torch.Tensor, max_new_tokens: int | None) -> StepNormalizers:
        """`StepNormalizers.from_mask` over the union of every process's `mask`."""
        if not self.enabled:
            return StepNormalizers.from_mask(mask, max_new_tokens)
        m = mask.to(torch.float32)
        sequences, tokens = self.sum_floats([float((m.sum(dim=1) > 0).sum()), float(m.sum())])
        longest = max_new_tokens or int(self.max_float(float(m.sum(dim=1).max()) if m.numel() else 0.0))
        return StepNormalizers(max(sequences, 1.0), max(tokens, 1.0), max(longest, 1))

    def reduce_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """One dict for the whole job, each metric reduced over the processes as
        ticgrpo.train.metrics declares it. Keys missing on some process are reduced over those that have them."""
        if not self.enabled:
            return dict(metrics)
        everyone = self.all_gather(metrics)
        return {key: float(reduce_values(key, [m[key] for m in everyone if key in m])) for key in metrics}

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def _device(self) -> torch.device:
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


SINGLE_PROCESS = Distributed()


def join_training_job(device: torch.device, prompts_per_step: int) -> tuple[Distributed, torch.device]:
    """This process's place in the job and its device (cuda:LOCAL_RANK under a multi-GPU launch).
    Raises ConfigError (one line) for a sharding launch config or prompts that do not split evenly."""
    from ticgrpo.config import ConfigError

    sharding = [name for name in ("FSDP", "DEEPSPEED") if os.environ.get(f"ACCELERATE_USE_{name}") == "true"]
    if sharding:
        raise ConfigError(f"ticgrpo train is data-parallel (full replicas) and does not shard with "
                          f"{sharding[0].replace('DEEPSPEED', 'DeepSpeed')}: launch it with a DDP config "
                          f"(examples/accelerate/ddp_8gpu.yaml), or use the TRL plug-in for sharding "
                          f"(docs/scaling.md)")
    dist = Distributed.from_environment(device.type)  # torchrun / accelerate launch
    if not dist.enabled:
        return dist, device
    if prompts_per_step % dist.world_size:
        raise ConfigError(f"rollout.prompts_per_step={prompts_per_step} must be a multiple of the number of "
                          f"processes ({dist.world_size}): each process samples an equal share of the prompts")
    return dist, torch.device("cuda", dist.local_rank) if device.type == "cuda" else device
