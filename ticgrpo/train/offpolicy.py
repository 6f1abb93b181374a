"""Which log-probs play π_old in a training step, and the off-policy correction applied to the batch.

    metrics = prepare_old_logprobs(model, batch, rollout, settings, algorithm, step)

At step t a row sampled by policy version v has staleness s = t − v. Three log-prob tensors
may exist for its tokens:

    π_sampler  the trainer's log-probs under the weights that sampled the row:
               `rollout.sampler_logprobs` when the source recorded them; else, when every
               row is fresh (s = 0), a recompute under the current weights; else the
               engine's `rollout.behavior_logprobs` (async vLLM: its numbers are all there is)
    μ          the sampling distribution: `rollout.behavior_logprobs` when the engine reports
               them, else π_sampler
    π_prox     a recompute under the current weights θ_t

`algorithm.offpolicy_correction: none` (bypass) sets π_old := π_sampler, so the objective's own
ratio (token ratio for grpo, trajectory ratio for tic_grpo) corrects the staleness; at lag 0 this
is the classic loop exactly (π_old is recomputed only when the policy moves within the batch).
Any other correction (decoupled) sets π_old := π_prox and folds detached weights from π_prox/μ
into `batch.advantages` (ticgrpo.core.corrections).

Engine mismatch (`mismatch/*`) compares μ with the trainer's log-probs under the same weights:
logged whenever the engine reports μ and those trainer numbers exist (π_sampler recorded, or
every row fresh).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ticgrpo.core.corrections import (
    CORRECTIONS,
    CorrectionInputs,
    bypass_metrics,
    correct_advantages,
    mismatch_metrics,
)
from ticgrpo.core.objectives import OBJECTIVES
from ticgrpo.rollout import RolloutBatch
from ticgrpo.train.step import StepSettings, TrainingBatch, fixed_logprobs

if TYPE_CHECKING:
    from ticgrpo.config import AlgorithmConfig


def row_staleness(rollout: RolloutBatch, step: int) -> Tensor:
    """[B] long: step − the policy version of each row (0 for rows without a version)."""
    if rollout.policy_version is None:
        return torch.zeros(len(rollout), dtype=torch.long)
    return step - rollout.policy_version.long().cpu()


@dataclass
class StepLogprobs:
    """The log-prob tensors of one step's batch (module docstring); the recompute under the
    current weights runs at most once, and only when a rule needs it."""

    model: Any
    batch: TrainingBatch
    settings: StepSettings
    rollout: RolloutBatch
    fresh: bool  # every row was sampled by the current weights
    _current: Tensor | None = field(default=None, repr=False)

    def on_device(self, logprobs: Tensor) -> Tensor:
        return logprobs.to(self.batch.completion_mask.device)

    def current(self) -> Tensor:
        """π_prox: a recompute under the current weights θ_t."""
        if self._current is None:
            self._current = fixed_logprobs(self.model, self.batch, self.settings)
        return self._current

    @property
    def sampler_recorded(self) -> bool:
        return self.rollout.sampler_logprobs is not None

    def trainer_at_sampling_weights(self) -> Tensor | None:
        """The trainer's log-probs under the weights that sampled each row, where they exist."""
        if self.rollout.sampler_logprobs is not None:
            return self.on_device(self.rollout.sampler_logprobs)
        return self.current() if self.fresh else None

    def sampler(self) -> Tensor:
        """π_sampler."""
        trainer = self.trainer_at_sampling_weights()
        if trainer is not None:
            return trainer
        if self.rollout.behavior_logprobs is None:
            raise RuntimeError(
                "a stale batch carries neither sampler_logprobs nor behavior_logprobs: its batch source must record "
                "the log-probs of the weights that sampled it (ticgrpo.train.sources)"
            )
        return self.on_device(self.rollout.behavior_logprobs)

    def behavior(self) -> Tensor:
        """μ: the engine's log-probs when it reports them, else π_sampler."""
        if self.rollout.behavior_logprobs is not None:
            return self.on_device(self.rollout.behavior_logprobs)
        return self.sampler()


def prepare_old_logprobs(model: Any, batch: TrainingBatch, rollout: RolloutBatch, settings: StepSettings,
                         algorithm: AlgorithmConfig, step: int) -> dict[str, float]:
    """π_old of the update and the correction of the batch (see the module docstring)."""
    staleness = row_staleness(rollout, step)
    logprobs = StepLogprobs(model, batch, settings, rollout, fresh=not bool((staleness > 0).any()))
    choice = algorithm.offpolicy_correction
    decoupled = CORRECTIONS.spec(choice.name).decoupled
    metrics = _decoupled(logprobs, choice.name, choice.options, staleness) if decoupled else _bypass(logprobs)
    return {**metrics, **_mismatch(logprobs)}


def _bypass(logprobs: StepLogprobs) -> dict[str, float]:
    """π_old := π_sampler. With fresh rows and no recorded sampler log-probs, π_old is needed
    only when the policy moves within the batch (`needs_old_logprobs`): otherwise the ratio is 1."""
    batch, settings = logprobs.batch, logprobs.settings
    uses_old = OBJECTIVES.spec(settings.objective).uses_old_logprobs
    off_policy = not logprobs.fresh or logprobs.sampler_recorded
    if settings.needs_old_logprobs or (uses_old and off_policy):
        batch.old_logprobs = logprobs.sampler()
    if not logprobs.fresh or logprobs.rollout.behavior_logprobs is not None:
        return bypass_metrics()
    return {}  # fresh rows sampled by the trainer's own weights: the classic loop logs what it always has


def _decoupled(logprobs: StepLogprobs, name: str, options: Any, staleness: Tensor) -> dict[str, float]:
    """π_old := π_prox; the weights from π_prox/μ scale the advantages."""
    batch, settings = logprobs.batch, logprobs.settings
    prox = logprobs.current()
    if settings.needs_old_logprobs:
        batch.old_logprobs = prox  # otherwise the first inner step's ℓ is π_prox exactly: the ratio is 1
    device = batch.completion_mask.device
    inputs = CorrectionInputs(prox, logprobs.behavior(), batch.completion_mask,
                              batch.advantages.to(device), staleness.to(device))
    sequence_advantages = OBJECTIVES.spec(settings.objective).sequence_advantages
    correction = correct_advantages(name, inputs, options, sequence_advantages)
    batch.advantages = correction.advantages
    return correction.metrics


def _mismatch(logprobs: StepLogprobs) -> dict[str, float]:
    behavior = logprobs.rollout.behavior_logprobs
    if behavior is None:
        return {}
    trainer = logprobs.trainer_at_sampling_weights()
    if trainer is None:
        return {}
    return mismatch_metrics(trainer, logprobs.on_device(behavior), logprobs.batch.completion_mask)


__all__ = ["StepLogprobs", "prepare_old_logprobs", "row_staleness"]
