"""Which log-probs play π_old in a training step, and the off-policy correction applied to the batch.

    metrics = prepare_old_logprobs(model, batch, rollout, settings, algorithm, step)

Sets `batch.old_logprobs` (when the objective reads them) and folds a correction's weights into
`batch.advantages`; returns the step's off-policy and mismatch metrics. The corrections
themselves are pure tensor functions (ticgrpo.core.mismatch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ticgrpo.rollout import RolloutBatch
from ticgrpo.train.step import StepSettings, TrainingBatch, fixed_logprobs

if TYPE_CHECKING:
    from ticgrpo.config import AlgorithmConfig


def prepare_old_logprobs(model: Any, batch: TrainingBatch, rollout: RolloutBatch, settings: StepSettings,
                         algorithm: AlgorithmConfig, step: int) -> dict[str, float]:
    """π_old of the update and the correction of the batch (see the module docstring)."""
    if settings.needs_old_logprobs:
        batch.old_logprobs = fixed_logprobs(model, batch, settings)
    behavior = rollout.behavior_logprobs
    if behavior is None:
        return {}
    from ticgrpo.core.mismatch import behavior_correction, mismatch_metrics

    old = batch.old_logprobs if batch.old_logprobs is not None else fixed_logprobs(model, batch, settings)
    behavior = behavior.to(old.device)
    if algorithm.behavior_correction is None:
        return mismatch_metrics(old, behavior, batch.completion_mask)
    correction = behavior_correction(old, behavior, batch.completion_mask, algorithm.behavior_correction,
                                     algorithm.behavior_correction_cap)
    batch.advantages = correction.apply(batch.advantages)
    return correction.metrics


__all__ = ["prepare_old_logprobs"]
