"""Exact J, exact ∇J, and the expectation of each objective's gradient estimator.

Problem: a `TrajectorySpace` (all N trajectories), a policy θ ↦ [P, V] log-prob table, and a
reward r(o) ∈ [0, 1] per trajectory.

    J(θ) = Σ_o π_θ(o) r(o),   π_θ(o) = exp Σ_t ℓ_θ(o, t);   ∇J by autograd through the sum.

The estimator of objective `name` on a group o_1..o_G ~ π_old with advantages A_i is

    ĝ(θ) = −∇_θ compute_loss(name, PolicyBatch(ℓ_θ(o_i), ℓ_old(o_i), mask, A_i), config, norms),

with the package's objective called unchanged. Its expectation E_{groups ~ π_old}[ĝ(θ)]:

* Exact, when the advantage is a FIXED baseline A(o) = r(o) − b. Every aggregation used here
  except `token-mean` is a sum over sequences divided by N_seq = G, so E[ĝ] = −E_{o~π_old}[∇L(o)]
  with L(o) the per-sequence loss. We put ALL N trajectories in one batch, with N_seq = N, and
  scale the *gradient* (not the value) of row o by w_o = N·π_old(o):

      ℓ̃_o = sg(ℓ_o) + w_o (ℓ_o − sg(ℓ_o))     (same value; ∇ℓ̃_o = w_o ∇ℓ_o)

  so ratios, clipping branches and advantages are evaluated exactly as in a real batch, and
  −∇ loss = −(1/N) Σ_o N π_old(o) ∇L(o) = E[ĝ]. For `token-mean` (loss Σ_{i,t} x/N_tok with N_tok
  the group's token count, a ratio of random sums) there is no finite-G closed form; the exact
  path then uses N_tok = N·E_old|o|, i.e. the G → ∞ limit E[Σ_t ∇x]/E|o| (Monte Carlo gives the
  finite-G value).
* Monte Carlo, for group-normalised advantages: M groups of G from π_old, one ĝ per group, all
  groups vectorised: one backward through the loss gives c = ∂loss/∂ℓ ([M·G, L]) for every
  group at once (the loss is a sum of per-group losses with N_seq = G), c is scattered onto the
  [M, P, V] table coordinates and pulled back to θ with one batched VJP.

An objective whose spec declares a frozen gradient for its options (no_is `frozen`) has its
estimator evaluated at θ_old whatever θ is: that is what the trainer applies at every inner step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ticgrpo.core.advantages import compute_advantages
from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.objectives import OBJECTIVES, compute_loss
from ticgrpo.lab.enumerate import TrajectorySpace
from ticgrpo.lab.policies import Policy
from ticgrpo.lab.variants import Variant

FIXED = "fixed"  # the lab's fixed-baseline advantage A(o) = r(o) − b


@dataclass
class Problem:
    """An enumerable RL problem: all trajectories, a policy and a reward per trajectory."""

    space: TrajectorySpace
    policy: Policy
    rewards: Tensor  # [N] float64

    @property
    def lengths(self) -> Tensor:
        return self.space.lengths.to(torch.float64)

    def token_logprobs(self, theta: Tensor, rows: Tensor | None = None) -> Tensor:
        """ℓ_θ [N, L] (or [len(rows), L]), 0 at padding."""
        return self.space.token_logprobs(self.policy.log_prob_table(theta), rows)

    def sequence_logprobs(self, theta: Tensor) -> Tensor:
        """log π_θ(o) for every trajectory: [N]."""
        return self.token_logprobs(theta).sum(dim=1)

    def probabilities(self, theta: Tensor) -> Tensor:
        return self.sequence_logprobs(theta).exp()


def exact_objective(problem: Problem, theta: Tensor) -> Tensor:
    """J(θ) = Σ_o π_θ(o) r(o) (differentiable in θ)."""
    return (problem.probabilities(theta) * problem.rewards).sum()


def exact_gradient(problem: Problem, theta: Tensor) -> tuple[float, Tensor]:
    """(J(θ), ∇J(θ)) by autograd through the enumerated sum, float64."""
    th = theta.detach().clone().requires_grad_(True)
    value = exact_objective(problem, th)
    (grad,) = torch.autograd.grad(value, th)
    return float(value.detach()), grad


def kl_divergence(problem: Problem, theta_p: Tensor, theta_q: Tensor) -> float:
    """KL(π_p ‖ π_q) = Σ_o π_p(o) (log π_p(o) − log π_q(o)), exact over trajectories."""
    with torch.no_grad():
        lp, lq = problem.sequence_logprobs(theta_p), problem.sequence_logprobs(theta_q)
        return float((lp.exp() * (lp - lq)).sum())


def _aggregation(config: Any) -> str | None:
    return getattr(config, "aggregation", None)


def _gradient_weighted(x: Tensor, weights: Tensor) -> Tensor:
    """Same value as x, gradient of row i scaled by weights[i]: sg(x) + w (x − sg(x))."""
    detached = x.detach()
    return detached + weights[:, None] * (x - detached)


def expected_gradient_exact(
    problem: Problem, variant: Variant, theta: Tensor, theta_old: Tensor, baseline: float
) -> Tensor:
    """E_{o~π_old}[ĝ(θ)] with the fixed-baseline advantage A(o) = r(o) − b, exactly (see module doc)."""
    if OBJECTIVES.spec(variant.objective).couples_group:
        raise ValueError(f"{variant.name!r} couples the completions of a group: its E[ĝ] has no exact path here "
                         f"(one batch of every trajectory is not a group); use the Monte Carlo estimate")
    config = variant.config()
    space = problem.space
    n = space.num_trajectories
    eval_at = theta_old if variant.is_frozen() else theta
    th = eval_at.detach().clone().requires_grad_(True)
    with torch.no_grad():
        old = problem.token_logprobs(theta_old)
        p_old = old.sum(dim=1).exp()
        mean_len = float((p_old * problem.lengths).sum())
    logprobs = _gradient_weighted(problem.token_logprobs(th), n * p_old)
    batch = PolicyBatch(
        logprobs=logprobs,
        mask=space.mask,
        advantages=problem.rewards - baseline,
        old_logprobs=old,
        token_ids=space.tokens,
    )
    norms = StepNormalizers(num_sequences=float(n), num_tokens=n * mean_len, max_new_tokens=space.max_len)
    loss, _ = compute_loss(variant.objective, batch, config, norms)
    (grad,) = torch.autograd.grad(loss, th)
    return -grad


def sample_groups(
    problem: Problem, theta_old: Tensor, num_groups: int, group_size: int, generator: torch.Generator
) -> Tensor:
    """Trajectory indices [M, G] drawn i.i.d. from π_old (exact sampling over the enumeration)."""
    with torch.no_grad():
        p_old = problem.probabilities(theta_old)
    idx = torch.multinomial(p_old, num_groups * group_size, replacement=True, generator=generator)
    return idx.view(num_groups, group_size)


def group_advantages(
    problem: Problem,
    idx: Tensor,
    advantage: str,
    baseline: float | None = None,
    options: dict[str, Any] | None = None,
) -> Tensor:
    """Advantages [M, G] of the sampled groups: the package's estimator `advantage` (with its
    `options`), or `fixed` r − b."""
    rewards = problem.rewards[idx]
    if advantage == FIXED:
        if baseline is None:
            raise ValueError("the fixed-baseline advantage needs a baseline b")
        return rewards - baseline
    return compute_advantages(advantage, rewards, problem.lengths[idx], **(options or {})).advantages


PREFIX_FEATURE_WIDTH = 16  # width of the lab's stand-in hidden states (prefix_features)


def prefix_features(space: TrajectorySpace, rows: Tensor) -> Tensor:
    """[len(rows), L, H] stand-in last-layer hidden states for objectives that read them (nthr): a
    fixed random embedding (seed 0, H = 16) of the prefix at each position, the state that produces
    the token there; 0 at padding. Positions with the same prefix share a state (cosine 1); distinct
    prefixes are near-orthogonal, so the similarity an objective reads is "this prefix also occurs in
    that trajectory"."""
    embedding = torch.randn(space.num_prefixes, PREFIX_FEATURE_WIDTH, generator=torch.Generator().manual_seed(0),
                            dtype=torch.float64)
    features = embedding[space.flat_index[rows] // space.vocab_size]
    return torch.where(space.mask[rows].bool()[..., None], features, torch.zeros((), dtype=torch.float64))


def group_gradients(
    problem: Problem,
    variant: Variant,
    theta: Tensor,
    theta_old: Tensor,
    idx: Tensor,
    advantages: Tensor,
    chunk: int = 512,
    mixture_logprobs: Tensor | None = None,
) -> Tensor:
    """ĝ(θ) for each of M groups at once: [M, D] (see module doc; chunks of `chunk` groups).

    `mixture_logprobs` [N]: log q(o) of every trajectory under a pool of policy versions, passed to
    the objectives that read it (`trajectory_reuse`); θ_old then only supplies ℓ^old."""
    config = variant.config()
    space = problem.space
    eval_at = theta_old if variant.is_frozen() else theta
    th = eval_at.detach().clone().requires_grad_(True)
    table = problem.policy.log_prob_table(th)  # [P, V], graph to θ
    with torch.no_grad():
        current_all = space.token_logprobs(table.detach())
        old_all = problem.token_logprobs(theta_old)
    out = []
    for start in range(0, idx.shape[0], chunk):
        rows_2d = idx[start : start + chunk]
        m, g = rows_2d.shape
        rows = rows_2d.reshape(-1)
        mask = space.mask[rows]
        leaf = current_all[rows].clone().requires_grad_(True)
        hidden = prefix_features(space, rows) if OBJECTIVES.spec(variant.objective).needs_hidden_states else None
        batch = PolicyBatch(
            logprobs=leaf,
            mask=mask,
            advantages=advantages[start : start + chunk].reshape(-1).to(torch.float64),
            old_logprobs=old_all[rows],
            token_ids=space.tokens[rows],
            group_ids=torch.arange(m).repeat_interleave(g),
            mixture_logprobs=None if mixture_logprobs is None else mixture_logprobs[rows],
            hidden_states=hidden,
        )
        # One group's normalisers (N_seq = G); the summed loss is Σ_groups loss_group.
        norms = StepNormalizers(num_sequences=float(g), num_tokens=1.0, max_new_tokens=space.max_len)
        loss, _ = compute_loss(variant.objective, batch, config, norms)
        (coef,) = torch.autograd.grad(loss, leaf)  # [m·g, L]
        if _aggregation(config) == "token-mean":  # per-group N_tok: rescale each group's rows
            group_tokens = mask.view(m, g, -1).sum(dim=(1, 2)).to(torch.float64)
            coef = coef / group_tokens.repeat_interleave(g)[:, None]
        cot = torch.zeros(m, space.num_prefixes * space.vocab_size, dtype=torch.float64)
        cot.scatter_add_(1, space.flat_index[rows].view(m, -1), (coef * mask).view(m, -1))
        (grads,) = torch.autograd.grad(
            table, th, grad_outputs=cot.view(m, *table.shape), is_grads_batched=True, retain_graph=True
        )
        out.append(-grads)
    return torch.cat(out)


@dataclass(frozen=True)
class MonteCarloEstimate:
    """Mean of ĝ over M groups, its per-coordinate standard error, and tr Cov(ĝ) per group."""

    mean: Tensor
    stderr: Tensor
    trace_cov: float
    num_groups: int
    projection_mean: Tensor | None = None  # [R] mean of ĝ·u_r over groups
    projection_stderr: Tensor | None = None  # [R] its standard error


def monte_carlo_gradient(
    problem: Problem,
    variant: Variant,
    theta: Tensor,
    theta_old: Tensor,
    num_groups: int,
    group_size: int,
    advantage: str,
    generator: torch.Generator,
    baseline: float | None = None,
    directions: Tensor | None = None,
    advantage_options: dict[str, Any] | None = None,
) -> MonteCarloEstimate:
    """E[ĝ(θ)] estimated from `num_groups` groups of `group_size` samples of π_old.

    `directions` [R, D]: also the mean and standard error of the projections ĝ·u_r. Per-coordinate
    z-scores mislead for rarely visited coordinates (a skewed, mostly-zero distribution whose
    rare large values a finite sample may miss); projections mix many coordinates.
    """
    idx = sample_groups(problem, theta_old, num_groups, group_size, generator)
    adv = group_advantages(problem, idx, advantage, baseline, advantage_options)
    grads = group_gradients(problem, variant, theta, theta_old, idx, adv)
    var = grads.var(dim=0, unbiased=True)
    proj = None if directions is None else grads @ directions.T  # [M, R]
    return MonteCarloEstimate(
        mean=grads.mean(dim=0),
        stderr=(var / num_groups).sqrt(),
        trace_cov=float(var.sum()),
        num_groups=num_groups,
        projection_mean=None if proj is None else proj.mean(dim=0),
        projection_stderr=None if proj is None else proj.std(dim=0, unbiased=True) / num_groups**0.5,
    )


@dataclass(frozen=True)
class ExactMoments:
    """E[ĝ] and tr Cov(ĝ) of ONE group's estimate (G samples from π_old), both exact."""

    mean: Tensor
    trace_cov: float


def check_exact_moments(variant: Variant) -> None:
    """ValueError (one line) when `exact_moments` cannot give the variant's moments: `token-mean`
    divides by the group's random token count, so its ĝ is not a mean of per-sequence gradients."""
    if _aggregation(variant.config()) == "token-mean":
        raise ValueError(f"{variant.name!r} aggregates token-mean, whose per-group moments the exact path cannot give")


def exact_moments(
    problem: Problem, variant: Variant, theta: Tensor, theta_old: Tensor, baseline: float, group_size: int
) -> ExactMoments:
    """Mean and per-group tr Cov of ĝ(θ) with the fixed-baseline advantage, by enumeration.

    With a fixed baseline a group's ĝ is the mean of G i.i.d. per-sequence gradients g(o), so
    E ĝ = Σ_o π_old(o) g(o) and tr Cov(ĝ) = (Σ_o π_old(o)‖g(o)‖² − ‖E ĝ‖²)/G. g(o) for every o is
    `group_gradients` on N groups of one trajectory (`check_exact_moments` says which variants).
    """
    check_exact_moments(variant)
    n = problem.space.num_trajectories
    with torch.no_grad():
        p_old = problem.probabilities(theta_old)
    rows = torch.arange(n).view(n, 1)
    per_sequence = group_gradients(problem, variant, theta, theta_old, rows, (problem.rewards - baseline).view(n, 1))
    mean = p_old @ per_sequence
    second = float(p_old @ per_sequence.pow(2).sum(dim=1))
    return ExactMoments(mean=mean, trace_cov=max(second - float(mean @ mean), 0.0) / group_size)


def compare(estimate: Tensor, reference: Tensor) -> dict[str, float]:
    """‖e − g‖/‖g‖, cos(e, g) and ‖e‖/‖g‖."""
    ref_norm = float(reference.norm())
    est_norm = float(estimate.norm())
    cos = float(estimate @ reference) / max(ref_norm * est_norm, 1e-300)
    return {
        "rel_err": float((estimate - reference).norm()) / max(ref_norm, 1e-300),
        "cos": cos,
        "norm_ratio": est_norm / max(ref_norm, 1e-300),
    }
