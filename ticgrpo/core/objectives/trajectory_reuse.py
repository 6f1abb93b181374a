"""`trajectory_reuse`: trajectories of the last ω policy versions, multiple-importance weighted.

A pool of ω batches, batch j of n_j trajectories sampled by θ_j (N = Σ_j n_j), is one sample of
the mixture q(o) = Σ_j (n_j/N) P_θj(o|q). Each trajectory gets the balance-heuristic weight

    log w_i = Σ_t m_{i,t} ℓ_{i,t} − log q(o_i),   log q(o_i) = `batch.mixture_logprobs`[i]
            = logsumexp_j (log(n_j/N) + Σ_t m_{i,t} ℓ^{θ_j}_{i,t})  (computed by the trainer / the lab),

w_i = P_θ(o_i|q)/q(o_i), and the surrogate is `tic_grpo`'s with that weight: optional upper-only
clip c_i = min(w_i, 1+ε_high) [optional lower clip, dual clip `ratio_cap`],
surrogate_i = min(w_i A_i, c_i A_i) [/ |o_i| with `length_normalize`],
L_i = −surrogate_i + β (1/|o_i|) Σ_t m KL_{i,t};  loss = (1/N_seq) Σ_i L_i.

Unclipped (the default), E_pool[(1/N) Σ_i ∇(w_i A_i)] = ∇J(θ) exactly for a fixed baseline
(A = r − b), whatever the window: Σ_j (n_j/N) E_θj[w ∇log P_θ · A] = Σ_o q(o) (P_θ/q) ∇log P_θ A.
Without `mixture_logprobs` (a window of one) log q = Σ_t m ℓ^old and the loss is `tic_grpo`'s
with the same options, exactly (tests/test_trajectory_reuse.py).

Reconstruction: Montenegro, Mansutti, Mussi, Papini, Metelli, "Reusing Trajectories in Policy
Gradients Enables Fast Convergence" (RT-PG, arXiv 2506.06178) weights the pooled trajectories with
a *power-mean-corrected* multiple importance weight; its exact correction was not available to us.
This is the plain balance heuristic (the uncorrected multiple importance weight) with tic_grpo's
optional clips in place of the power-mean correction; the clip and its ε are our choice, off by
default. The default advantage `group_norm` is our choice too (the paper is not about LLM groups).

The log-weight is clamped at `max_log_ratio` before exp on every branch that no clip bounds,
exactly as in tic_grpo (`clamped_log_ratio_frac` counts it). A balance-heuristic weight at θ = θ_j
is at most N/n_j, so the clamp binds only when θ moves far from every policy of the window.
"""

from __future__ import annotations

import math

import torch
from pydantic.dataclasses import dataclass as pydantic_dataclass
from torch import Tensor

from ticgrpo.core.aggregation import masked_sum
from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.objectives._common import NonNegative, clipped_surrogate, sequence_reinforce_weights
from ticgrpo.core.objectives.registry import register_objective
from ticgrpo.core.objectives.tic_grpo import TICGRPOConfig, trajectory_weight_loss
from ticgrpo.core.options import OPTIONS_CONFIG


@pydantic_dataclass(config=OPTIONS_CONFIG)
class TrajectoryReuseConfig(TICGRPOConfig):
    # [choice] the multiple importance weight is unclipped by default (the unbiased estimator);
    # a number gives tic_grpo's upper-only clip min(w, 1+ε_high)
    epsilon_high: NonNegative | None = None


def reuse_log_weights(batch: PolicyBatch) -> Tensor:
    """[B] log w_i = log P_θ(o_i|q) − log q(o_i), differentiable in ℓ. Without a mixture (a window of
    one) it is tic_grpo's Σ_t m (ℓ − ℓ^old), summed in the same order: the same numbers to the bit."""
    mask = batch.float_mask
    if batch.mixture_logprobs is None:
        return masked_sum(batch.current_logprobs() - batch.behaviour_logprobs(), mask, dim=1)
    mixture = batch.mixture_logprobs.detach().to(batch.current_logprobs().dtype)
    return masked_sum(batch.current_logprobs(), mask, dim=1) - mixture


def _on_policy_weights(batch: PolicyBatch, options: TrajectoryReuseConfig, norms: StepNormalizers) -> Tensor:
    """At ℓ = ℓ^old the weight w_i = P_old(o_i)/q(o_i) is a constant (1 without a mixture): the gradient
    is sequence REINFORCE scaled by w_i, and 0 on a row whose clip, dual clip or clamp binds."""
    log_w = reuse_log_weights(batch).detach()
    advantages = batch.sequence_advantages()
    surrogate = clipped_surrogate(log_w, advantages, options.epsilon_low, options.epsilon_high,
                                  options.ratio_cap, options.max_log_ratio)
    capped = (advantages < 0) & (log_w > math.log(options.ratio_cap)) if options.ratio_cap else torch.zeros_like(
        surrogate.clamped)
    bound = surrogate.clipped_low | surrogate.clipped_high | surrogate.clamped | capped
    scale = torch.where(bound, torch.zeros_like(log_w), log_w.exp())
    return scale[:, None] * sequence_reinforce_weights(batch, norms, token_mean=options.length_normalize)


@register_objective(
    "trajectory_reuse", options=TrajectoryReuseConfig, default_advantage="group_norm", uses_old_logprobs=True,
    sequence_advantages=True, reads_mixture_logprobs=True, on_policy_weights=_on_policy_weights,
)
def trajectory_reuse_loss(
    batch: PolicyBatch, config: TrajectoryReuseConfig, norms: StepNormalizers
) -> tuple[Tensor, dict[str, Tensor]]:
    return trajectory_weight_loss(batch, config, norms, reuse_log_weights(batch))
