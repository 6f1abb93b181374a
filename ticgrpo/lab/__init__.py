"""The lab: exact policy gradients on small enumerable autoregressive policies.

Every trajectory of a small policy (vocabulary with EOS, max length L) is enumerated, so
J(θ) = Σ_o π_θ(o) r(o) and ∇J(θ) are exact, and the expectation of each objective's gradient
estimator — the package's `compute_loss` called unchanged — is exact (fixed baseline) or Monte
Carlo with standard errors (group-normalised advantages). `ticgrpo lab bias` measures what each
estimator estimates as θ leaves θ_old; `ticgrpo lab converge` trains with sampled groups and
tracks exact J; `ticgrpo lab factorial` crosses ratio × clip × aggregation × advantage
(`ticgrpo.lab.factorial`); `ticgrpo lab lag` measures each estimator's exact bias and noise with
samples k policy versions stale along its own training path, and at fixed per-token divergence
as the length grows (`ticgrpo.lab.lag`). The algorithms are the names of `ticgrpo.config.algorithms.ALGORITHMS` (and
objectives with their defaults) that the lab can run (`ticgrpo.lab.variants`). See docs/lab.md.
"""

from ticgrpo.lab.enumerate import EOS, TrajectorySpace, enumerate_trajectories, num_trajectories
from ticgrpo.lab.estimators import (
    FIXED,
    ExactMoments,
    MonteCarloEstimate,
    Problem,
    compare,
    exact_gradient,
    exact_moments,
    exact_objective,
    expected_gradient_exact,
    group_advantages,
    group_gradients,
    kl_divergence,
    monte_carlo_gradient,
    sample_groups,
)
from ticgrpo.lab.policies import NeuralPolicy, Policy, TabularPolicy, make_policy
from ticgrpo.lab.rewards import REWARDS, make_rewards
from ticgrpo.lab.variants import VARIANTS, Variant, get_variant

__all__ = [
    "EOS",
    "FIXED",
    "REWARDS",
    "VARIANTS",
    "ExactMoments",
    "MonteCarloEstimate",
    "NeuralPolicy",
    "Policy",
    "Problem",
    "TabularPolicy",
    "TrajectorySpace",
    "Variant",
    "compare",
    "enumerate_trajectories",
    "exact_gradient",
    "exact_moments",
    "exact_objective",
    "expected_gradient_exact",
    "get_variant",
    "group_advantages",
    "group_gradients",
    "kl_divergence",
    "make_policy",
    "make_rewards",
    "monte_carlo_gradient",
    "num_trajectories",
    "sample_groups",
]
