"""Background rollout producers for rollout.mode: async (see ticgrpo.rollout.producers.base)."""

from ticgrpo.rollout.producers.base import ProducedRollout, Producer, ProducerFailed, RolloutJob

__all__ = ["ProducedRollout", "Producer", "ProducerFailed", "RolloutJob"]
