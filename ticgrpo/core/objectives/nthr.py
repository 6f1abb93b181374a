"""`nthr`: Negative Token Hidden Reward — GRPO with the penalty of some negative-response tokens
down-weighted (Deng, Ren, Li, Sutherland, Li, Thrampoulidis, "On the Effect of Negative Gradient
in Group Relative Deep Reinforcement Optimization", arXiv 2505.18830).

The paper's observation (Lazy Likelihood Displacement): penalising every token of an incorrect
response with the same strength also lowers the likelihood of the group's correct responses,
through tokens whose representation they share. NTHR uses the correct responses of the group as
anchors and scales down the penalty of the negative tokens that most influence them.

Reconstruction: the paper's exact influence score was not available to us. What is implemented:

    h_{i,t}  = the last-layer hidden state at the position that produced token o_{i,t}
               (batch.hidden_states, detached: the weights are stop-gradient)
    C_g      = {j in group g : A_j > 0}        (the group's correct responses)
    s_{i,t}  = max_{j ∈ C_g, t' real} cos(h_{i,t}, h_{j,t'})       for A_i < 0
    w_{i,t}  = λ if A_i < 0, C_g ≠ ∅ and s_{i,t} ≥ τ, else 1
    A'_{i,t} = w_{i,t} A_i

and `grpo`'s loss (token ratio, PPO clipping, `aggregation`) on A'. For a linear LM head the
change one token's gradient step makes to another's log-likelihood is ⟨h, h'⟩·⟨e_y − π, e_y' − π'⟩;
the second factor needs full next-token distributions, which a PolicyBatch does not hold, so
influence here is the hidden-state factor alone, as a cosine. [choice] τ = 0.9, λ = 0.5: the
paper's values were not available to us. [choice] "Correct" is A_j > 0 (the objective sees advantages, not rewards);
tokens of responses with A ≥ 0 and of groups without a correct response are never reweighted.
[choice] Without `group_ids` the whole batch is one group. Its loss couples a group's
completions: micro-batches must hold whole groups (the trainer keeps them whole).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass as pydantic_dataclass
from torch import Tensor

from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.objectives._common import masked_fraction, token_reinforce_weights
from ticgrpo.core.objectives.grpo import GRPOConfig, grpo_loss
from ticgrpo.core.objectives.registry import register_objective
from ticgrpo.core.options import OPTIONS_CONFIG

CosineThreshold = Annotated[float, Field(ge=-1, le=1)]
PenaltyScale = Annotated[float, Field(ge=0, le=1)]  # a down-weighting: 1 is plain GRPO, 0 drops the penalty

# rows of the [negative tokens, correct tokens] similarity matrix built at once (bounds memory)
_SIMILARITY_ROWS = 1024


@pydantic_dataclass(config=OPTIONS_CONFIG)
class NTHRConfig(GRPOConfig):
    similarity_threshold: CosineThreshold = 0.9  # τ
    penalty_scale: PenaltyScale = 0.5  # λ


def _max_similarity(negative: Tensor, correct: Tensor) -> Tensor:
    """[n] max over the rows of `correct` [c, H] of the cosine similarity with each row of `negative` [n, H]."""
    correct = torch.nn.functional.normalize(correct, dim=1)
    parts = [torch.nn.functional.normalize(block, dim=1) @ correct.T
             for block in negative.split(_SIMILARITY_ROWS)]
    return torch.cat(parts).amax(dim=1)


@dataclasses.dataclass(frozen=True)
class TokenInfluence:
    similarity: Tensor  # [B, T] s_{i,t} on the tokens of negative responses whose group has a correct one, else 0
    scored: Tensor  # [B, T] bool: those tokens
    downweighted: Tensor  # [B, T] bool: scored and s ≥ τ
    weights: Tensor  # [B, T] w_{i,t}


def token_influence(batch: PolicyBatch, config: NTHRConfig) -> TokenInfluence:
    """The NTHR weights of `batch` (see the module docstring), computed within each group."""
    if batch.hidden_states is None:
        raise ValueError("nthr needs hidden_states in the batch ([B, T, H], the policy's last-layer states)")
    advantages = batch.sequence_advantages()
    dtype = torch.promote_types(batch.hidden_states.dtype, torch.float32)
    hidden = batch.hidden_states.detach().to(dtype)
    real = batch.mask.bool()
    groups = torch.zeros_like(advantages, dtype=torch.long) if batch.group_ids is None else batch.group_ids
    similarity = torch.zeros(real.shape, dtype=dtype, device=hidden.device)
    scored = torch.zeros_like(real)
    for group in torch.unique(groups):
        in_group = groups == group
        correct = real & (in_group & (advantages > 0))[:, None]
        negative = real & (in_group & (advantages < 0))[:, None]
        if correct.any() and negative.any():
            similarity[negative] = _max_similarity(hidden[negative], hidden[correct])
            scored |= negative
    downweighted = scored & (similarity >= config.similarity_threshold)
    # in the log-probs' dtype from the start: λ rounded to float32 would not be λ in a float64 batch
    weights = torch.ones(real.shape, dtype=batch.current_logprobs().dtype, device=hidden.device)
    weights = weights.masked_fill(downweighted, config.penalty_scale)
    return TokenInfluence(similarity, scored, downweighted, weights)


def _reweighted(batch: PolicyBatch, influence: TokenInfluence) -> PolicyBatch:
    return dataclasses.replace(batch, advantages=influence.weights * batch.token_advantages())


def _on_policy_weights(batch: PolicyBatch, config: NTHRConfig, norms: StepNormalizers) -> Tensor:
    """GRPO's on-policy weights with A' = w·A: the weights are constants of the loss."""
    return token_reinforce_weights(_reweighted(batch, token_influence(batch, config)), config, norms)


@register_objective(
    "nthr", options=NTHRConfig, default_advantage="group_norm", uses_old_logprobs=True, sequence_advantages=True,
    couples_group=True, needs_hidden_states=True, on_policy_weights=_on_policy_weights,
)
def nthr_loss(batch: PolicyBatch, config: NTHRConfig, norms: StepNormalizers) -> tuple[Tensor, dict[str, Tensor]]:
    influence = token_influence(batch, config)
    loss, metrics = grpo_loss(_reweighted(batch, influence), config, norms)
    scored = influence.scored
    metrics["nthr_downweighted_frac"] = masked_fraction(influence.downweighted, batch.mask)
    # mean s over the scored tokens (0 when no token was scored)
    metrics["nthr_similarity_mean"] = ((influence.similarity * scored).sum()
                                       / scored.sum().clamp(min=1)).to(torch.float32)
    return loss, metrics
