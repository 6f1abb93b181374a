"""Sampling strategies: how one training step gets its P prompt groups of G scored completions.

    strategy = PlainSampling(groups=GroupSampler(engine, ...), scorer=..., format_prompt=..., dist=...,
                             prompts_per_step=P, drafts=None)
    collected = strategy.collect(stream, step)     # Collected(batch, times, metrics, errors)

    PlainSampling      one round: P prompts from the stream, G completions each, scored
    DynamicSampling    DAPO: keep only groups whose rewards differ, resampling up to max_rounds
                       rounds (then what was kept, or the last round, is used)

Either can put iGRPO drafts first (`drafts`, ticgrpo.train.drafts): the G completions are
then refinements of each prompt's best draft. With several processes each samples its share
of the P prompts; every process takes the same prompts from its stream each round, so the
streams stay in step even when the processes need different numbers of rounds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

from ticgrpo.rewards.scoring import RewardFailure, Scored, ScoredRollout, Scorer, concat_scored
from ticgrpo.rollout import RolloutBatch, SamplingParams, concat_rollouts
from ticgrpo.train.distributed import Distributed
from ticgrpo.train.drafts import DraftRefiner
from ticgrpo.train.prompts import PromptStream, sampling_seed

if TYPE_CHECKING:
    from ticgrpo.config import TrainConfig

logger = logging.getLogger(__name__)


class SamplingEngine(Protocol):
    """What a strategy needs of an engine (`ticgrpo.rollout.RolloutEngine` with its tokenizer's pad id)."""

    pad_token_id: int

    def generate(self, prompts: list[str], num_samples: int, params: SamplingParams) -> RolloutBatch: ...

    def generate_for(self, rows: list[dict], prompts: list[str], num_samples: int,
                     params: SamplingParams) -> RolloutBatch: ...


class NonFiniteProbabilities(RuntimeError):
    """Sampling met NaN/inf token probabilities: the weights are finite but diverged."""


@dataclass(frozen=True)
class GroupSampler:
    """G completions per prompt, one engine call per `generation_batch_size` sequences, each under
    a seed fixed by (seed, step, round, index of its first group in the global batch): when that
    size is a multiple of G dividing every process's share, the samples are the same for any
    number of processes (and on resume)."""

    engine: SamplingEngine
    num_generations: int
    params: SamplingParams
    seed: int
    generation_batch_size: int | None = None

    def sample(self, prompts: list[str], step: int, round_index: int, first_group: int,
               rows: list[dict] | None = None) -> RolloutBatch:
        """G samples of each prompt text; `rows`: the dataset rows they were made from (what an
        episode's environment resets from; None: rows holding only the prompt texts)."""
        g = self.num_generations
        rows = rows if rows is not None else [{"prompt": p} for p in prompts]
        per_call = max(1, (self.generation_batch_size or len(prompts) * g) // g)
        parts = []
        for start in range(0, len(prompts), per_call):
            torch.manual_seed(sampling_seed(self.seed, step, round_index, first_group + start))
            try:
                parts.append(self.engine.generate_for(rows[start : start + per_call], prompts[start : start + per_call],
                                                      g, self.params))
            except RuntimeError as exc:
                if "probability tensor" not in str(exc):  # torch.multinomial on NaN/inf probabilities
                    raise
                raise NonFiniteProbabilities(str(exc)) from None
        batch = concat_rollouts(parts, self.engine.pad_token_id)
        batch.group_ids = torch.arange(len(prompts), device=batch.group_ids.device).repeat_interleave(g)
        return batch


@dataclass
class Collected:
    """One step's scored groups and what collecting them took."""

    batch: ScoredRollout
    times: dict[str, float]  # rollout, reward (seconds)
    metrics: dict[str, float]  # sampling_rounds, groups_kept, groups_generated (dynamic), draft_* (iGRPO)
    errors: list[RewardFailure] = field(default_factory=list)  # the step's reward failures (zeroed or skipped)


@dataclass(frozen=True)
class PlainSampling:
    groups: GroupSampler
    scorer: Scorer
    format_prompt: Callable[[dict], str]
    dist: Distributed
    prompts_per_step: int
    drafts: DraftRefiner | None = None

    @property
    def share(self) -> int:
        """Prompt groups this process samples."""
        return self.prompts_per_step // self.dist.world_size

    def collect(self, stream: PromptStream, step: int) -> Collected:
        """This process's share of P groups for training step `step` (0-based)."""
        rows = self.dist.share(stream.take(self.prompts_per_step))
        times = {"rollout": 0.0, "reward": 0.0}
        draft_metrics: dict[str, float] = {}
        scored = self.round(rows, step, 0, times, draft_metrics)
        return Collected(scored.batch, times, draft_metrics, list(scored.errors))

    def round(self, rows: list[dict], step: int, round_index: int, times: dict[str, float],
              draft_metrics: dict[str, float]) -> Scored:
        """Drafts (iGRPO), sampling and scoring of one round; adds its times and draft metrics
        (summed over rounds) into the given dicts."""
        if self.drafts is not None:  # iGRPO: the group update runs on refinements of the best draft
            refined = self.drafts.refine(rows)
            rows = refined.rows
            for key, value in refined.metrics.items():
                draft_metrics[key] = draft_metrics.get(key, 0.0) + value
            _warn(step, "iGRPO drafts: ", refined.errors, "scored them 0")
        t0 = time.perf_counter()
        g = self.groups.num_generations
        rollout = self.groups.sample([self.format_prompt(r) for r in rows], step, round_index,
                                     first_group=self.dist.rank * self.share, rows=rows)
        t1 = time.perf_counter()
        scored = self.scorer.score(rollout, rows, g)
        _warn(step, "", scored.errors, scored.action)
        times["rollout"] += t1 - t0
        times["reward"] += time.perf_counter() - t1
        return scored


@dataclass(frozen=True)
class DynamicSampling(PlainSampling):
    max_rounds: int = 3

    def collect(self, stream: PromptStream, step: int) -> Collected:
        p = self.share
        times = {"rollout": 0.0, "reward": 0.0}
        draft_metrics: dict[str, float] = {}
        kept: list[ScoredRollout] = []
        errors: list[RewardFailure] = []
        have, generated, used = 0, 0, 0
        last: ScoredRollout | None = None
        for round_index in range(self.max_rounds):
            rows = self.dist.share(stream.take(self.prompts_per_step))  # the same stream everywhere
            if have >= p:  # this process has its groups; the others resample (every stream advances)
                if not self.dist.any_true(False):
                    break
                continue
            used += 1
            scored = self.round(rows, step, round_index, times, draft_metrics)
            errors += scored.errors
            last = scored.batch
            generated += p
            rewards = last.group_rewards()
            mixed = [k for k in range(len(rewards)) if not bool((rewards[k] == rewards[k, 0]).all())][: p - have]
            if mixed:
                kept.append(last.select_groups(mixed))
                have += len(mixed)
            if not self.dist.any_true(have < p):  # every process has its groups
                break
        assert last is not None  # the first round always samples
        batch = concat_scored(kept, self.groups.engine.pad_token_id) if kept else last
        drafts = {k: v if k.startswith("time_") else v / used for k, v in draft_metrics.items()}
        metrics = {"sampling_rounds": float(used), "groups_kept": float(have), "groups_generated": float(generated),
                   **drafts}
        return Collected(batch, times, metrics, errors)


def sampling_strategy(config: TrainConfig, engine: SamplingEngine, scorer: Scorer,
                      format_prompt: Callable[[dict], str], dist: Distributed) -> PlainSampling:
    """The strategy the config asks for: dynamic sampling or plain, with iGRPO drafts or without."""
    r, a = config.rollout, config.algorithm
    params = SamplingParams(r.max_new_tokens, r.temperature, r.top_p, r.top_k)
    groups = GroupSampler(engine, r.num_generations, params, config.seed, r.generation_batch_size)
    drafts = None if a.igrpo is None else DraftRefiner.from_options(
        a.igrpo, engine=engine, format_prompt=format_prompt, sampling=params, scorer=scorer)
    if a.dynamic_sampling:
        return DynamicSampling(groups, scorer, format_prompt, dist, r.prompts_per_step, drafts,
                               a.dynamic_sampling_max_rounds)
    return PlainSampling(groups, scorer, format_prompt, dist, r.prompts_per_step, drafts)


def _warn(step: int, where: str, errors: tuple[RewardFailure, ...], action: str) -> None:
    if errors:
        logger.warning("step %d: %s%d reward error(s), %s; first: %s", step + 1, where, len(errors), action,
                       errors[0].message)


__all__ = [
    "Collected", "DynamicSampling", "GroupSampler", "NonFiniteProbabilities", "PlainSampling", "sampling_strategy",
]
