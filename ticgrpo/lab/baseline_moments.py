"""Exact moments of one group's policy-gradient estimate under each baseline.

With s(o) = ∇_θ log π_θ(o) (the trajectory's score), a group o_1..o_G ~ π_θ i.i.d. and advantages
A_i = r_i − b_i, one group's estimate is

    ĝ = (1/G) Σ_i s(o_i) A_i.

Baselines (`BASELINES`, typed registry data):

| name       | b_i                          | E ĝ            | exact moments by                       |
|------------|------------------------------|----------------|----------------------------------------|
| `none`     | 0                            | ∇J             | i.i.d. terms: Cov = Σ_0 / G            |
| `value`    | J(θ) (the oracle, exact)     | ∇J             | i.i.d. terms: Cov = Σ_J / G            |
| `rloo`     | mean of the other G − 1      | ∇J             | order-2 U-statistic (Hoeffding)        |
| `mean`     | mean of all G (GRPO's, self included) | (G−1)/G · ∇J | ĝ_mean = (G−1)/G · ĝ_rloo exactly |
| `mean_std` | mean, then ÷ (std + δ) (GRPO's `group_norm`) | no closed form | all groups enumerated, or Monte Carlo |

Σ_b = E[s sᵀ (r − b)²] − ∇J ∇Jᵀ is the covariance of one term s(o)(r(o) − b).

**Leave-one-out is a U-statistic.** ĝ_rloo = (1/(G(G−1))) Σ_{i≠j} s_i (r_i − r_j) is the
U-statistic of the symmetric kernel h(a, b) = ½ (s_a − s_b)(r_a − r_b), E h = E[s r] − E[s] E[r] = ∇J
(E s = 0), so it is unbiased. Its Hoeffding projection is h_1(a) = E_b h(a, b) = ½ (s_a (r_a − J) + ∇J),
so ζ_1 = Cov h_1 = Σ_J / 4: a quarter of the oracle's per-sample covariance. With ζ_2 = Cov h(X, Y),
the classical variance of an order-2 U-statistic, C(G, 2)⁻¹ (2 (G − 2) ζ_1 + ζ_2), is

    Cov ĝ_rloo = ((G − 2) Σ_J + 2 ζ_2) / (G (G − 1)),
    Cov ĝ_rloo − Cov ĝ_value = (2 ζ_2 − Σ_J) / (G (G − 1))   (⪰ 0, and O(1/G²)),

and E[h hᵀ] = ½ (Σ_a p_a d_a s_a s_aᵀ − Σ_{a,b} p_a p_b (r_a − r_b)² s_a s_bᵀ), d_a = Σ_b p_b (r_a − r_b)²,
is a double sum over the enumerated trajectories. **The including-self mean** gives
s_i (r_i − r̄) = ((G − 1)/G) s_i (r_i − r̄_{−i}) term by term, so ĝ_mean = ((G−1)/G) ĝ_rloo: its bias is
E ĝ_mean − ∇J = −(1/G) ∇J = −(1/G) E[∇log π(o) · r(o)] (a shrinkage along ∇J, not a change of direction),
and its covariance is ((G − 1)/G)² Cov ĝ_rloo.

**Enumeration of groups** (`enumerated_moments`, any baseline, the only exact route for `mean_std`):
ĝ depends on the group only through its multiset, so the sum runs over the C(N + G − 1, G) multisets
with multinomial weights G!/∏ c_o! ∏ p_o^{c_o}; the advantages are the package's own estimators
(`compute_advantages`). `sampled_moments` is the Monte Carlo counterpart, with standard errors.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ticgrpo.lab.estimators import FIXED, Problem, group_advantages, sample_groups


@dataclass(frozen=True)
class GroupMoments:
    """E ĝ [d] and Cov ĝ [d, d] of one group's estimate."""

    mean: Tensor
    cov: Tensor

    @property
    def trace_cov(self) -> float:
        return float(torch.trace(self.cov))


@dataclass(frozen=True)
class ScoreTable:
    """Everything the exact formulas need at one θ: probabilities p [N], rewards r [N], scores S [N, d]
    (row o = ∇ log π_θ(o)), J = Σ p r and ∇J = Sᵀ (p ⊙ r)."""

    probabilities: Tensor
    rewards: Tensor
    scores: Tensor

    @property
    def value(self) -> float:
        return float(self.probabilities @ self.rewards)

    @property
    def gradient(self) -> Tensor:
        return self.scores.T @ (self.probabilities * self.rewards)

    def fisher(self) -> Tensor:
        """F = E[s sᵀ] = Sᵀ diag(p) S, the exact Fisher information of the trajectory distribution."""
        return self.scores.T @ (self.probabilities[:, None] * self.scores)

    def term_covariance(self, baseline: float) -> Tensor:
        """Σ_b = Cov[s(o) (r(o) − b)] for a constant b (one i.i.d. term of the estimate)."""
        weights = self.probabilities * (self.rewards - baseline).pow(2)
        grad = self.gradient
        return self.scores.T @ (weights[:, None] * self.scores) - torch.outer(grad, grad)

    def pair_kernel_covariance(self) -> Tensor:
        """ζ_2 = Cov h(X, Y) of the leave-one-out kernel h(a, b) = ½ (s_a − s_b)(r_a − r_b) (module doc)."""
        p, s = self.probabilities, self.scores
        gap = (self.rewards[:, None] - self.rewards[None, :]).pow(2)  # (r_a − r_b)²
        spread = gap @ p  # d_a = Σ_b p_b (r_a − r_b)²
        second = 0.5 * (s.T @ ((p * spread)[:, None] * s) - s.T @ ((p[:, None] * gap * p[None, :]) @ s))
        grad = self.gradient
        return second - torch.outer(grad, grad)


def score_table(problem: Problem, theta: Tensor) -> ScoreTable:
    """p, r and the exact scores ∇ log π_θ(o) of every trajectory (one Jacobian, float64)."""
    th = theta.detach().clone()
    scores = torch.func.jacrev(problem.sequence_logprobs)(th)
    with torch.no_grad():
        probabilities = problem.probabilities(th)
    return ScoreTable(probabilities, problem.rewards, scores.detach())


def _independent(table: ScoreTable, baseline: float, group_size: int) -> GroupMoments:
    return GroupMoments(table.gradient, table.term_covariance(baseline) / group_size)


def _no_baseline(table: ScoreTable, group_size: int) -> GroupMoments:
    return _independent(table, 0.0, group_size)


def _value_baseline(table: ScoreTable, group_size: int) -> GroupMoments:
    return _independent(table, table.value, group_size)


def _leave_one_out(table: ScoreTable, group_size: int) -> GroupMoments:
    g = group_size
    cov = ((g - 2) * table.term_covariance(table.value) + 2 * table.pair_kernel_covariance()) / (g * (g - 1))
    return GroupMoments(table.gradient, cov)


def _group_mean(table: ScoreTable, group_size: int) -> GroupMoments:
    shrink = (group_size - 1) / group_size  # ĝ_mean = shrink · ĝ_rloo, group by group
    rloo = _leave_one_out(table, group_size)
    return GroupMoments(shrink * rloo.mean, shrink**2 * rloo.cov)


@dataclass(frozen=True)
class Baseline:
    """A baseline of the study: the advantage it is (`FIXED` r − b, or a package advantage), whether
    b is the exact value J(θ), whether its estimate is unbiased for ∇J, and its closed-form moments
    (None: enumerate the groups or sample them)."""

    name: str
    advantage: str
    uses_value: bool
    unbiased: bool
    closed_form: Callable[[ScoreTable, int], GroupMoments] | None
    description: str


BASELINES: dict[str, Baseline] = {
    b.name: b
    for b in (
        Baseline("none", FIXED, False, True, _no_baseline, "no baseline, A = r"),
        Baseline("mean", "mean_only", False, False, _group_mean, "group mean including the sample (GRPO's)"),
        Baseline("rloo", "rloo", False, True, _leave_one_out, "leave-one-out mean of the other G − 1 (RLOO)"),
        Baseline("value", FIXED, True, True, _value_baseline, "exact value b = J(θ) (the oracle)"),
        Baseline("mean_std", "group_norm", False, False, None, "group mean, then ÷ (std + δ) (GRPO's group_norm)"),
    )
}


def baseline_names() -> tuple[str, ...]:
    return tuple(BASELINES)


def get_baseline(name: str) -> Baseline:
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose from: {', '.join(BASELINES)}")
    return BASELINES[name]


def sampled_advantages(problem: Problem, baseline: Baseline, idx: Tensor, value: float) -> Tensor:
    """Advantages [M, G] of the groups idx [M, G] under `baseline` (the package's estimators)."""
    return group_advantages(problem, idx, baseline.advantage, baseline=value if baseline.uses_value else 0.0)


def group_estimates(table: ScoreTable, advantages: Tensor, idx: Tensor) -> Tensor:
    """ĝ [M, d] of each group: (1/G) Σ_i A_i s(o_i)."""
    return torch.einsum("mg,mgd->md", advantages, table.scores[idx]) / idx.shape[1]


def num_groups(num_trajectories: int, group_size: int) -> int:
    """C(N + G − 1, G): how many multisets of G trajectories there are."""
    return math.comb(num_trajectories + group_size - 1, group_size)


def enumerated_moments(
    problem: Problem, table: ScoreTable, baseline: Baseline, group_size: int, chunk: int = 50_000
) -> GroupMoments:
    """E ĝ and Cov ĝ exactly, summed over every multiset of `group_size` trajectories (module doc)."""
    n, d = table.probabilities.numel(), table.scores.shape[1]
    log_p = table.probabilities.clamp_min(1e-300).log()
    first, second = torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64)
    multisets = itertools.combinations_with_replacement(range(n), group_size)
    while batch := list(itertools.islice(multisets, chunk)):
        idx = torch.tensor(batch, dtype=torch.long)
        counts = torch.zeros(idx.shape[0], n, dtype=torch.float64).scatter_add_(
            1, idx, torch.ones_like(idx, dtype=torch.float64)
        )
        log_weight = math.lgamma(group_size + 1) - torch.lgamma(counts + 1).sum(1) + counts @ log_p
        estimates = group_estimates(table, sampled_advantages(problem, baseline, idx, table.value), idx)
        weight = log_weight.exp()
        first += weight @ estimates
        second += estimates.T @ (weight[:, None] * estimates)
    return GroupMoments(first, second - torch.outer(first, first))


@dataclass(frozen=True)
class SampledMoments:
    """Monte Carlo mean and tr Cov of one group's ĝ, with the standard error of each."""

    mean: Tensor
    mean_standard_error: Tensor
    trace_cov: float
    trace_cov_standard_error: float


def sampled_moments(
    problem: Problem,
    table: ScoreTable,
    theta: Tensor,
    baseline: Baseline,
    group_size: int,
    groups: int,
    seed: int,
    chunk: int = 2048,
) -> SampledMoments:
    """`groups` groups from π_θ: the sample mean of ĝ and the unbiased tr Cov, with standard errors
    (tr Cov's from the spread of the per-group squared deviations)."""
    idx = sample_groups(problem, theta, groups, group_size, torch.Generator().manual_seed(seed))
    advantages = sampled_advantages(problem, baseline, idx, table.value)
    # in chunks of groups: [M, G, d] scores at once would not fit for large G and d
    estimates = torch.cat([group_estimates(table, a, i) for a, i in zip(advantages.split(chunk), idx.split(chunk),
                                                                           strict=True)])  # fmt: skip
    mean = estimates.mean(0)
    squared = (estimates - mean).pow(2).sum(1) * groups / (groups - 1)
    return SampledMoments(
        mean=mean,
        mean_standard_error=estimates.std(0) / math.sqrt(groups),
        trace_cov=float(squared.mean()),
        trace_cov_standard_error=float(squared.std() / math.sqrt(groups)),
    )


def exact_moments(problem: Problem, table: ScoreTable, baseline: Baseline, group_size: int) -> GroupMoments:
    """Closed form where the baseline has one, else the enumeration of all groups."""
    if baseline.closed_form is not None:
        return baseline.closed_form(table, group_size)
    return enumerated_moments(problem, table, baseline, group_size)


__all__ = [
    "BASELINES",
    "Baseline",
    "GroupMoments",
    "SampledMoments",
    "ScoreTable",
    "baseline_names",
    "enumerated_moments",
    "exact_moments",
    "get_baseline",
    "group_estimates",
    "num_groups",
    "sampled_advantages",
    "sampled_moments",
    "score_table",
]
