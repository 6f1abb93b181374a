"""What each estimator estimates, as θ moves away from θ_old.

Path of θ: θ_0 = θ_old (a random init), θ_k = after k inner steps of `grpo`'s own update
(default config, Adam at `lr`) on ONE rollout batch of `rollout_groups` groups of G drawn from
π_old — exactly the iterates of GRPO's inner loop. At each θ_k and for each variant:

* `fixed (exact)`: E[ĝ(θ_k)] with the fixed-baseline advantage r(o) − J(θ_old), by enumeration;
* `fixed (MC)`:    the same expectation by Monte Carlo (checks the exact value; gives tr Cov);
* `<adv> (MC)`:    the variant's own advantage (group_norm / length_corrected), Monte Carlo.

Measured: rel_err_current = ‖E ĝ − ∇J(θ_k)‖/‖∇J(θ_k)‖, rel_err_old = ‖E ĝ − ∇J(θ_old)‖/‖∇J(θ_old)‖,
the cosines with both, ‖E ĝ‖/‖∇J(θ_k)‖, tr Cov(ĝ) per group, and for MC the noise floor
√(Σ_d SE_d²)/‖∇J‖ (the relative error pure sampling noise would produce), against
KL(π_old ‖ π_θk) and ‖θ_k − θ_old‖.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from ticgrpo.core.objectives import OBJECTIVES
from ticgrpo.lab.converge import inner_loop, make_optimizer
from ticgrpo.lab.enumerate import enumerate_trajectories
from ticgrpo.lab.estimators import (
    FIXED,
    Problem,
    compare,
    exact_gradient,
    expected_gradient_exact,
    group_advantages,
    kl_divergence,
    monte_carlo_gradient,
    sample_groups,
)
from ticgrpo.lab.options import ProblemConfig, check_options, option
from ticgrpo.lab.policies import make_policy
from ticgrpo.lab.rewards import make_rewards
from ticgrpo.lab.variants import Variant, expand_objectives, get_variant

DEFAULT_OBJECTIVES = (
    "grpo",
    "grpo_noclip",
    "grpo_tokensum",
    "no_is",
    "no_is_tokensum",
    "tic_ratio_only",
    "tic_ratio_lenadv",
    "tic_grpo",
)


@dataclass
class BiasConfig(ProblemConfig):
    steps: tuple[int, ...] = option((0, 1, 2, 4, 8, 16), "inner steps k", minimum=0)
    objectives: tuple[str, ...] = option(
        DEFAULT_OBJECTIVES,
        "algorithms (ALGORITHMS names or registered objectives); 'all' = every registered objective the "
        "lab supports, with its defaults",
    )
    mc_groups: int = option(2000, "Monte Carlo groups per estimate", minimum=2)
    seed: int = option(0, "seed of θ_old and of the sampling")
    rollout_groups: int = option(4, "groups of the batch that moves θ", minimum=1)

    def __post_init__(self) -> None:
        self.steps = tuple(sorted(set(self.steps)))
        self.objectives = expand_objectives(tuple(self.objectives))


def run_bias(cfg: BiasConfig, progress: bool = True) -> dict[str, Any]:
    """All measurements of the module doc, as a JSON-ready dict."""
    from tqdm import tqdm

    check_options(cfg)
    variants = [get_variant(o, monte_carlo=True) for o in cfg.objectives]  # group-coupled: Monte Carlo rows only
    space = enumerate_trajectories(cfg.vocab, cfg.max_len)
    policy = make_policy(cfg.policy, space, cfg.init_scale)
    problem = Problem(space, policy, make_rewards(cfg.reward, space))
    gen = torch.Generator().manual_seed(cfg.seed)
    theta_old = policy.init(cfg.seed)
    j_old, grad_old = exact_gradient(problem, theta_old)
    baseline = j_old

    # θ_k: GRPO's own inner iterates on one rollout batch from π_old.
    mover = get_variant("grpo")
    idx = sample_groups(problem, theta_old, cfg.rollout_groups, cfg.group_size, gen)
    adv = group_advantages(problem, idx, mover.advantage_name, options=mover.advantage_options)
    param = theta_old.clone().requires_grad_(True)
    path = inner_loop(problem, mover, param, make_optimizer("adam", param, cfg.lr), idx, adv, max(cfg.steps))

    points, rows = [], []
    total = len(cfg.steps) * len(variants)
    with tqdm(total=total, desc="lab bias", disable=not progress, leave=False) as bar:
        for k in cfg.steps:
            theta = path[k]
            j_k, grad_k = exact_gradient(problem, theta)
            point = {
                "k": k,
                "J": j_k,
                "kl_old_theta": kl_divergence(problem, theta_old, theta),
                "param_dist": float((theta - theta_old).norm()),
                "grad_norm": float(grad_k.norm()),
                "cos_grad_old": compare(grad_k, grad_old)["cos"],
            }
            points.append(point)
            for variant in variants:
                rows += _measure(problem, variant, theta, theta_old, grad_k, grad_old, baseline, cfg, gen, point)
                bar.update()
    return {
        "config": asdict(cfg),
        "problem": {
            "num_trajectories": space.num_trajectories,
            "num_prefixes": space.num_prefixes,
            "num_params": policy.num_params,
            "J_old": j_old,
            "grad_norm_old": float(grad_old.norm()),
            "baseline": baseline,
            "mean_length_old": float((problem.probabilities(theta_old) * problem.lengths).sum()),
        },
        "variants": {
            v.name: {
                "objective": v.objective,
                "overrides": dict(v.overrides),
                "advantage_options": dict(v.advantage_options),
                "advantage": v.advantage_name,
                "description": v.description,
            }
            for v in variants
        },
        "path": points,
        "rows": rows,
    }


def _measure(
    problem: Problem,
    variant: Variant,
    theta: torch.Tensor,
    theta_old: torch.Tensor,
    grad_k: torch.Tensor,
    grad_old: torch.Tensor,
    baseline: float,
    cfg: BiasConfig,
    gen: torch.Generator,
    point: dict[str, Any],
) -> list[dict[str, Any]]:
    base = {"variant": variant.name, "k": point["k"], "kl_old_theta": point["kl_old_theta"]}
    out = []
    # a group-coupled loss (nthr) has no exact expectation: its rows are the Monte Carlo mean of ĝ
    # over cfg.mc_groups sampled groups, with the standard error in noise_floor_*
    exact = (None if OBJECTIVES.spec(variant.objective).couples_group
             else expected_gradient_exact(problem, variant, theta, theta_old, baseline))
    if exact is not None:
        out.append({**base, "estimate": "fixed (exact)", **_metrics(exact, grad_k, grad_old)})
    # check directions: the exact E[ĝ] (where there is one) and 5 random unit vectors
    dirs = torch.randn(6, grad_k.numel(), generator=gen, dtype=torch.float64)
    if exact is not None:
        dirs[0] = exact
    dirs = dirs / dirs.norm(dim=1, keepdim=True).clamp(min=1e-300)
    for advantage in (FIXED, variant.advantage_name):
        mc = monte_carlo_gradient(
            problem, variant, theta, theta_old, cfg.mc_groups, cfg.group_size, advantage, gen, baseline, dirs,
            advantage_options=None if advantage == FIXED else variant.advantage_options,
        )
        row = {**base, "estimate": f"{advantage} (MC)", **_metrics(mc.mean, grad_k, grad_old)}
        row["trace_cov"] = mc.trace_cov
        row["noise_floor_current"] = float(mc.stderr.norm() / grad_k.norm())
        row["noise_floor_old"] = float(mc.stderr.norm() / grad_old.norm())
        if exact is not None and advantage == FIXED and mc.projection_mean is not None \
                and mc.projection_stderr is not None:
            z = (mc.projection_mean - dirs @ exact) / mc.projection_stderr.clamp(min=1e-300)
            row["max_abs_z_vs_exact"] = float(z.abs().max())
        out.append(row)
    return out


def _metrics(estimate: torch.Tensor, grad_k: torch.Tensor, grad_old: torch.Tensor) -> dict[str, float]:
    cur, old = compare(estimate, grad_k), compare(estimate, grad_old)
    return {
        "rel_err_current": cur["rel_err"],
        "rel_err_old": old["rel_err"],
        "cos_current": cur["cos"],
        "cos_old": old["cos"],
        "norm_ratio_current": cur["norm_ratio"],
    }


__all__ = ["DEFAULT_OBJECTIVES", "BiasConfig", "run_bias"]
