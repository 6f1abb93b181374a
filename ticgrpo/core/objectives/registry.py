"""The `objectives` registry: one typed `ObjectiveSpec` per objective.

A spec holds the loss, its options class and every capability the trainer, the lab and the
TRL/verl adapters act on. Code outside this package reads these fields; it never compares an
objective's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.registry import Registry

ObjectiveFn = Callable[[PolicyBatch, Any, StepNormalizers], tuple[Tensor, dict[str, Tensor]]]
# (batch, options, norms) -> [B, T] weights w with ∂loss/∂ℓ = −w at ℓ = ℓ^old (β's KL term aside)
OnPolicyWeightsFn = Callable[[PolicyBatch, Any, StepNormalizers], Tensor]


def _never(options: Any) -> bool:
    return False


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    loss: ObjectiveFn  # (batch, options, norms) -> (loss, detached scalar metrics)
    options: type  # dataclass of the objective's options; its defaults are the method's
    default_advantage: str  # the advantage estimator the method is defined with
    uses_old_logprobs: bool  # reads ℓ^old (forms an importance ratio against the sampling policy)
    sequence_advantages: bool = False  # reads one advantage per sequence ([B], never [B, T])
    couples_group: bool = False  # a sequence's loss depends on the other completions of its group
    needs_token_ids: bool = False  # reads batch.token_ids
    needs_entropies: bool = False  # reads batch.entropies
    # reads batch.hidden_states (detached last-layer states at the completion positions, [B, T, H]):
    # the trainer's forward pass returns them only for such an objective
    needs_hidden_states: bool = False
    # reads batch.mixture_logprobs (a pool of batches from several policy versions: the trainer's
    # algorithm.reuse_window); without them each row's own ℓ^old is its behaviour
    reads_mixture_logprobs: bool = False
    # given the options: the gradient is taken once at θ_old and applied at every inner step
    frozen_gradient: Callable[[Any], bool] = _never
    # the on-policy gradient the loss claims: at ℓ = ℓ^old, ∂loss/∂ℓ_{i,t} = −w_{i,t}, i.e. the
    # loss's gradient is Σ w ∇ℓ (REINFORCE with these weights); the contract test checks it
    on_policy_weights: OnPolicyWeightsFn | None = None


OBJECTIVES: Registry[ObjectiveSpec] = Registry("objective")


def register_objective(
    name: str,
    *,
    options: type,
    default_advantage: str,
    uses_old_logprobs: bool,
    sequence_advantages: bool = False,
    couples_group: bool = False,
    needs_token_ids: bool = False,
    needs_entropies: bool = False,
    needs_hidden_states: bool = False,
    reads_mixture_logprobs: bool = False,
    frozen_gradient: Callable[[Any], bool] = _never,
    on_policy_weights: OnPolicyWeightsFn | None = None,
) -> Callable[[ObjectiveFn], ObjectiveFn]:
    """Decorator registering a loss function as objective `name` (see ObjectiveSpec)."""

    def decorator(loss: ObjectiveFn) -> ObjectiveFn:
        OBJECTIVES.add(ObjectiveSpec(
            name=name, loss=loss, options=options, default_advantage=default_advantage,
            uses_old_logprobs=uses_old_logprobs, sequence_advantages=sequence_advantages,
            couples_group=couples_group, needs_token_ids=needs_token_ids, needs_entropies=needs_entropies,
            frozen_gradient=frozen_gradient, on_policy_weights=on_policy_weights,
            reads_mixture_logprobs=reads_mixture_logprobs, needs_hidden_states=needs_hidden_states,
        ))
        return loss

    return decorator
