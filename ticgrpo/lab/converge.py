"""Training on enumerable problems with sampled groups and exact J tracked each iteration.

One outer iteration: draw `groups` groups of `group_size` trajectories from π_old = π_θ (the
current policy), form advantages with the variant's estimator (`compute_advantages`), then take
`inner_steps` optimizer steps on the variant's loss (`compute_loss`, whole batch per step,
N_seq = groups·group_size) — μ = `inner_steps` is GRPO's num_iterations. The no_is `frozen`
schedule (an objective whose spec declares a frozen gradient) computes ĝ(θ_old) once and applies
it μ times. The optimizer (Adam by default) keeps
its state across outer iterations, as in a trainer. J(θ) is computed exactly after each outer
iteration; over seeds we report the mean and the 95% Student-t interval.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.objectives import compute_loss
from ticgrpo.lab.enumerate import enumerate_trajectories
from ticgrpo.lab.estimators import Problem, exact_objective, group_advantages, kl_divergence, sample_groups
from ticgrpo.lab.options import ProblemConfig, SpaceConfig, check_options, option
from ticgrpo.lab.policies import make_policy
from ticgrpo.lab.rewards import make_rewards
from ticgrpo.lab.variants import Variant, get_variant
from ticgrpo.reports.io import write_json
from ticgrpo.reports.markdown import markdown_table
from ticgrpo.reports.plots import pyplot
from ticgrpo.reports.stats import t_half_width

DEFAULT_ALGORITHMS = ("grpo", "no_is", "tic_ratio_only", "tic_ratio_lenadv", "tic_grpo")
OPTIMIZERS = ("adam", "sgd")


def batch_loss(
    problem: Problem, variant: Variant, config: Any, theta: Tensor, idx: Tensor, adv: Tensor, old: Tensor
) -> Tensor:
    """The variant's loss on the sampled rollout batch idx [B, G] (whole batch = one step)."""
    rows = idx.reshape(-1)
    mask = problem.space.mask[rows]
    batch = PolicyBatch(
        logprobs=problem.token_logprobs(theta, rows),
        mask=mask,
        advantages=adv.reshape(-1),
        old_logprobs=old,
        token_ids=problem.space.tokens[rows],
        group_ids=torch.arange(idx.shape[0]).repeat_interleave(idx.shape[1]),
    )
    norms = StepNormalizers(
        num_sequences=float(rows.numel()),
        num_tokens=float(mask.sum()),
        max_new_tokens=problem.space.max_len,
    )
    loss, _ = compute_loss(variant.objective, batch, config, norms)
    return loss


def make_optimizer(name: str, param: Tensor, lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam([param], lr=lr)
    if name == "sgd":
        return torch.optim.SGD([param], lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")


def inner_loop(
    problem: Problem,
    variant: Variant,
    param: Tensor,
    optimizer: torch.optim.Optimizer,
    idx: Tensor,
    adv: Tensor,
    steps: int,
) -> list[Tensor]:
    """μ = `steps` optimizer steps on one rollout batch; returns θ after each step (θ_old first).

    `param` is the leaf being optimised and holds θ_old on entry. A frozen-gradient variant
    (no_is `frozen`): the gradient at θ_old is computed once and applied at every step.
    """
    config = variant.config()
    theta_old = param.detach().clone()
    with torch.no_grad():
        old = problem.token_logprobs(theta_old, idx.reshape(-1))
    path = [theta_old]
    frozen_grad = None
    for _ in range(steps):
        optimizer.zero_grad()
        if variant.is_frozen():
            if frozen_grad is None:
                th = theta_old.clone().requires_grad_(True)
                (frozen_grad,) = torch.autograd.grad(batch_loss(problem, variant, config, th, idx, adv, old), th)
            param.grad = frozen_grad.clone()
        else:
            batch_loss(problem, variant, config, param, idx, adv, old).backward()
        optimizer.step()
        path.append(param.detach().clone())
    return path


@dataclass
class ConvergeConfig(ProblemConfig):
    algorithms: tuple[str, ...] = option(DEFAULT_ALGORITHMS, "algorithms (ALGORITHMS names or registered objectives)")
    seeds: tuple[int, ...] = option(tuple(range(10)), "seeds; a seed gives every algorithm the same θ_init and sampler")
    iterations: int = option(60, "outer iterations N", minimum=1)
    inner_steps: int = option(4, "μ optimizer steps per rollout batch", minimum=1)
    groups: int = option(4, "groups per outer iteration", minimum=1)
    optimizer: str = option("adam", "optimizer of the inner steps", choices=lambda: OPTIMIZERS)


def train(
    problem: Problem,
    variant: Variant,
    theta_init: Tensor,
    cfg: ConvergeConfig,
    seed: int,
    tick: Callable[[], None] | None = None,
    steps_path: list[Tensor] | None = None,
) -> dict[str, list[float]]:
    """One run: exact J after every outer iteration, and KL(π_old ‖ π_new) of each iteration.

    `steps_path`, when given, receives θ before the first step and after every optimizer step
    (iterations × μ + 1 tensors): the policy versions `lab lag` reads its stale θ_{t−k} from."""
    gen = torch.Generator().manual_seed(seed)
    param = theta_init.detach().clone().requires_grad_(True)
    optimizer = make_optimizer(cfg.optimizer, param, cfg.lr)
    with torch.no_grad():
        curve, kls = [float(exact_objective(problem, param))], []
    for _ in range(cfg.iterations):
        theta_old = param.detach().clone()
        idx = sample_groups(problem, theta_old, cfg.groups, cfg.group_size, gen)
        adv = group_advantages(problem, idx, variant.advantage_name, options=variant.advantage_options)
        inner = inner_loop(problem, variant, param, optimizer, idx, adv, cfg.inner_steps)
        if steps_path is not None:
            steps_path.extend(inner if not steps_path else inner[1:])  # inner[0] is the last step's θ
        with torch.no_grad():
            curve.append(float(exact_objective(problem, param)))
        kls.append(kl_divergence(problem, theta_old, param.detach()))
        if tick is not None:
            tick()
    return {"J": curve, "kl_per_iteration": kls}


def make_problem(cfg: SpaceConfig, reward: str) -> Problem:
    """The enumerable problem of `cfg` (space, policy) under reward `reward`."""
    space = enumerate_trajectories(cfg.vocab, cfg.max_len)
    return Problem(space, make_policy(cfg.policy, space, cfg.init_scale), make_rewards(reward, space))


def mean_over_training(curves: np.ndarray) -> np.ndarray:
    """Mean exact J over iterations 1..N of each curve [..., N+1] (the area under the curve: the
    speed of convergence; iteration 0, the shared initial J, is left out)."""
    return np.asarray(curves)[..., 1:].mean(axis=-1)


def run_converge(cfg: ConvergeConfig, progress: bool = True) -> dict[str, Any]:
    """Every algorithm × seed; the same seed gives the same θ_init and sampler seed to each algorithm."""
    from tqdm import tqdm

    check_options(cfg)
    variants = [get_variant(a) for a in cfg.algorithms]
    problem = make_problem(cfg, cfg.reward)
    space, policy = problem.space, problem.policy
    total = len(variants) * len(cfg.seeds) * cfg.iterations
    runs: dict[str, dict[str, Any]] = {}
    with tqdm(total=total, desc="lab converge", disable=not progress, leave=False) as bar:
        for variant in variants:
            per_seed = {}
            for seed in cfg.seeds:
                per_seed[str(seed)] = train(problem, variant, policy.init(seed), cfg, seed, bar.update)
            runs[variant.name] = {
                "description": variant.description,
                "objective": variant.objective,
                "overrides": dict(variant.overrides),
                "advantage": variant.advantage_name,
                "advantage_options": dict(variant.advantage_options),
                "seeds": per_seed,
            }
    summary = summarise(runs, cfg)
    return {
        "config": asdict(cfg),
        "problem": {
            "num_trajectories": space.num_trajectories,
            "num_prefixes": space.num_prefixes,
            "num_params": policy.num_params,
            "max_reward": float(problem.rewards.max()),
        },
        "runs": runs,
        "summary": summary,
    }


def summarise(runs: dict[str, dict[str, Any]], cfg: ConvergeConfig) -> dict[str, Any]:
    """Per algorithm: mean J curve with 95% band, final J, mean J over training, paired Δ vs the first."""
    out: dict[str, Any] = {}
    first = next(iter(runs))
    ref = np.array([runs[first]["seeds"][str(s)]["J"] for s in cfg.seeds])
    for name, run in runs.items():
        curves = np.array([run["seeds"][str(s)]["J"] for s in cfg.seeds])  # [S, I+1]
        mean, half = t_half_width(curves)
        final_m, final_h = t_half_width(curves[:, -1])
        auc_m, auc_h = t_half_width(mean_over_training(curves))
        diff_m, diff_h = t_half_width(curves[:, -1] - ref[:, -1])
        auc_diff_m, auc_diff_h = t_half_width(mean_over_training(curves) - mean_over_training(ref))
        kl_m, _ = t_half_width(np.array([run["seeds"][str(s)]["kl_per_iteration"] for s in cfg.seeds]))
        out[name] = {
            "J_mean": mean.tolist(),
            "J_half_width": half.tolist(),
            "J_initial": float(curves[:, 0].mean()),
            "J_final": float(final_m),
            "J_final_half_width": float(final_h),
            "J_mean_over_training": float(auc_m),
            "J_mean_over_training_half_width": float(auc_h),
            "final_minus_reference": float(diff_m),
            "final_minus_reference_half_width": float(diff_h),
            "mean_minus_reference": float(auc_diff_m),
            "mean_minus_reference_half_width": float(auc_diff_h),
            "reference": first,
            "mean_kl_per_iteration": float(kl_m.mean()),
        }
    return out


def write_converge_outputs(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """results.json, report.md and converge_J.png under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", results)
    cfg, summary = results["config"], results["summary"]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, s in summary.items():
        mean, half = np.array(s["J_mean"]), np.array(s["J_half_width"])
        x = np.arange(mean.size)
        ax.plot(x, mean, label=name)
        ax.fill_between(x, mean - half, mean + half, alpha=0.2)
    ax.set_xlabel("outer iteration")
    ax.set_ylabel("exact J(θ)")
    ax.set_title(
        f"{cfg['policy']} V={cfg['vocab']} L={cfg['max_len']} reward={cfg['reward']} "
        f"μ={cfg['inner_steps']} lr={cfg['lr']} ({len(cfg['seeds'])} seeds, 95% CI)",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    plot = out_dir / "converge_J.png"
    fig.savefig(plot, dpi=90)
    plt.close(fig)

    ref = next(iter(summary))
    rows = [
        [
            name,
            results["runs"][name]["description"],
            s["J_initial"],
            f"{s['J_final']:.4f} ± {s['J_final_half_width']:.4f}",
            f"{s['J_mean_over_training']:.4f} ± {s['J_mean_over_training_half_width']:.4f}",
            f"{s['final_minus_reference']:+.4f} ± {s['final_minus_reference_half_width']:.4f}",
            f"{s['mean_minus_reference']:+.4f} ± {s['mean_minus_reference_half_width']:.4f}",
            s["mean_kl_per_iteration"],
        ]
        for name, s in summary.items()
    ]
    text = [
        "# lab converge",
        "",
        f"Problem: {cfg['policy']} policy, V={cfg['vocab']}, L={cfg['max_len']}, reward `{cfg['reward']}` "
        f"({results['problem']['num_trajectories']} trajectories, {results['problem']['num_params']} "
        f"parameters, max reward {results['problem']['max_reward']:.4g}). Per outer iteration "
        f"{cfg['groups']} groups × G={cfg['group_size']} samples, μ={cfg['inner_steps']} inner "
        f"{cfg['optimizer']} steps at lr={cfg['lr']}, {cfg['iterations']} iterations, seeds {tuple(cfg['seeds'])}.",
        "",
        "J is exact (enumerated). ± is the 95% Student-t half-width over seeds; Δ is the paired "
        f"difference against `{ref}` (same seed = same init and sampler seed) of the final J and of "
        "the mean J over iterations 1..N (area under the curve: the speed of convergence).",
        "",
        markdown_table(
            [
                "algorithm",
                "what",
                "J init",
                "J final",
                "mean J over training",
                f"Δ final vs {ref}",
                f"Δ mean J vs {ref}",
                "mean KL(old‖new)/iter",
            ],
            rows,
        ),
        "",
        "![J](converge_J.png)",
        "",
    ]
    (out_dir / "report.md").write_text("\n".join(text))
    return [out_dir / "results.json", out_dir / "report.md", plot]
