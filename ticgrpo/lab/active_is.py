"""`ticgrpo lab active_is`: the behaviour policy that minimises the policy gradient's variance.

Source: Papini, Manganini, Metelli, Restelli, "Policy Gradient with Active Importance Sampling"
(RLC 2024, arXiv 2405.05630): sample from a behaviour policy q chosen to lower the variance of
the importance-weighted gradient estimate, possibly below on-policy sampling. Here the optimum is
computed exactly over the enumerated trajectories (the paper learns it by cross-entropy).

The estimator. REINFORCE with a fixed baseline b at π = π_θ, one sample o ~ q:

    ĝ_q(o) = w(o) g(o),   w = π(o)/q(o),   g(o) = (R(o) − b) ∇log π(o),   E_q ĝ_q = E_π g = ∇J(θ)

(unbiased whenever q > 0 where π·‖g‖ > 0; the baseline term stays mean-zero under IS because
E_q[w ∇log π] = Σ_o ∇π(o) = 0). Its total variance per sample is

    V(q) = tr Cov_q ĝ_q = Σ_o π(o)² ‖g(o)‖² / q(o) − ‖∇J‖²,

and by Cauchy–Schwarz (Σ_o π‖g‖)² ≤ Σ_o q · Σ_o π²‖g‖²/q, with equality iff q ∝ π‖g‖:

    q*(o) = π(o) ‖(R(o) − b) ∇log π(o)‖ / Σ_o' π(o') ‖(R(o') − b) ∇log π(o')‖,
    V(q*) = (E_π ‖g‖)² − ‖∇J‖²    against on-policy   V(π) = E_π ‖g‖² − ‖∇J‖².

The gap V(π) − V(q*) = Var_π ‖g‖ ≥ 0. A group of G i.i.d. samples has V(q)/G. b = J(θ) (`value`,
the value baseline, which the exact study can use) or 0 (`zero`). A per-sample baseline (group
mean, leave-one-out) makes the per-sample terms depend on the other samples of the group, so
there is no single q that is optimal for every group; this study states the optimum for the fixed
b, which is what the leave-one-out baseline tends to as G grows.

Behaviour policies compared at each θ_t of a training path (`paths.training_path`):
`on_policy` (q = π_θt), `optimal` (q*), `defensive_α` (α π_θ + (1 − α) q*, the defensive mixture
the paper samples from so that w ≤ 1/α), `lag_k` (q = π_θ_{t−k}, the stale policy an asynchronous
trainer samples from) and `temp_T` (π_θ with every next-token distribution at temperature T).
Everything is exact (float64 enumeration).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ticgrpo.lab.converge import make_problem
from ticgrpo.lab.estimators import Problem
from ticgrpo.lab.lag import _summarise
from ticgrpo.lab.options import check_options, option
from ticgrpo.lab.paths import PathConfig, check_path, training_path
from ticgrpo.reports.io import write_json
from ticgrpo.reports.markdown import markdown_table
from ticgrpo.reports.plots import pyplot

BASELINES = ("value", "zero")
QUANTITIES = ("trace_var_sample", "trace_var_group", "ratio_to_on_policy", "relative_var_group", "kl_q_to_pi")
_LOG_FLOOR = 1e-12


@dataclass
class ActiveISConfig(PathConfig):
    baseline: str = option("value", "b of the REINFORCE estimator: value (b = J(θ)) or zero", choices=lambda: BASELINES)
    lags: tuple[int, ...] = option((1, 2, 4, 8), "behaviour π_θ_{t−k} for each lag k", minimum=1)
    temperatures: tuple[float, ...] = option((0.8, 1.25, 1.5), "behaviour π_θ at temperature T", above=0)
    defensive: tuple[float, ...] = option((0.5,), "behaviour α π_θ + (1 − α) q* for each α in (0, 1]", above=0)


def check_active_is(cfg: ActiveISConfig) -> None:
    """ValueError (one line) for settings the study cannot run."""
    check_path(cfg)
    too_large = [a for a in cfg.defensive if a > 1]
    if too_large:
        raise ValueError(f"defensive weights α must be <= 1 (α π_θ + (1 − α) q*), got {too_large}")


def trajectory_scores(problem: Problem, theta: Tensor) -> Tensor:
    """∇_θ log π_θ(o) for every trajectory: [N, D] (one vectorised Jacobian of the enumerated log-probs)."""
    jacobian = torch.autograd.functional.jacobian(problem.sequence_logprobs, theta.detach(), vectorize=True)
    assert isinstance(jacobian, Tensor)
    return jacobian


def reinforce_terms(problem: Problem, theta: Tensor, baseline: str) -> tuple[Tensor, Tensor]:
    """(π_θ(o) [N], g(o) = (R(o) − b) ∇log π_θ(o) [N, D]) with b = J(θ) (`value`) or 0 (`zero`)."""
    with torch.no_grad():
        p = problem.probabilities(theta)
    b = float(p @ problem.rewards) if baseline == "value" else 0.0
    return p, (problem.rewards - b)[:, None] * trajectory_scores(problem, theta)


def optimal_behaviour(p: Tensor, g: Tensor) -> Tensor:
    """q*(o) ∝ π(o) ‖g(o)‖: the behaviour with the least tr Cov of the IS estimate (module doc)."""
    mass = p * g.norm(dim=1)
    return mass / mass.sum()


def is_trace_variance(p: Tensor, g: Tensor, q: Tensor) -> float:
    """tr Cov_q of one sample's π/q · g: Σ π²‖g‖²/q − ‖Σ π g‖² (inf where q misses π‖g‖'s support)."""
    weight = p.pow(2) * g.pow(2).sum(dim=1)
    if bool(((q <= 0) & (weight > 0)).any()):
        return math.inf
    second = float(torch.where(weight > 0, weight / q.clamp_min(1e-300), torch.zeros_like(weight)).sum())
    mean = p @ g
    return max(second - float(mean @ mean), 0.0)


def tempered_probabilities(problem: Problem, theta: Tensor, temperature: float) -> Tensor:
    """π_θ with every next-token distribution at temperature T: softmax(log π(·|prefix)/T), per trajectory."""
    with torch.no_grad():
        table = torch.log_softmax(problem.policy.log_prob_table(theta) / temperature, dim=-1)
        return problem.space.sequence_logprobs(table).exp()


def behaviours(
    problem: Problem, cfg: ActiveISConfig, path: list[Tensor], t: int, p: Tensor, g: Tensor
) -> Iterator[tuple[str, Tensor]]:
    """(name, q [N]) of every behaviour policy of the module doc, at θ_t."""
    optimal = optimal_behaviour(p, g)
    yield "on_policy", p
    yield "optimal", optimal
    for alpha in cfg.defensive:
        yield f"defensive_{alpha:g}", alpha * p + (1 - alpha) * optimal
    with torch.no_grad():
        for k in cfg.lags:
            yield f"lag_{k}", problem.probabilities(path[max(t - k, 0)])
    for temperature in cfg.temperatures:
        yield f"temp_{temperature:g}", tempered_probabilities(problem, path[t], temperature)


def _kl(q: Tensor, p: Tensor) -> float:
    """KL(q‖π) over trajectories (inf where q puts mass π lacks)."""
    support = q > 0
    return float((q[support] * (q[support].log() - p[support].log())).sum())


def measure(problem: Problem, cfg: ActiveISConfig, path: list[Tensor], t: int) -> list[dict[str, Any]]:
    """One row per behaviour policy at θ_t: tr Cov per sample and per group of G, the ratio to on-policy."""
    p, g = reinforce_terms(problem, path[t], cfg.baseline)
    grad = p @ g
    grad_sq = max(float(grad @ grad), 1e-300)
    on_policy = is_trace_variance(p, g, p)
    rows = []
    for name, q in behaviours(problem, cfg, path, t, p, g):
        variance = is_trace_variance(p, g, q)
        rows.append({
            "behaviour": name,
            "trace_var_sample": variance,
            "trace_var_group": variance / cfg.group_size,
            "ratio_to_on_policy": variance / max(on_policy, 1e-300),
            "relative_var_group": variance / cfg.group_size / grad_sq,
            "kl_q_to_pi": _kl(q, p),
            "grad_norm": math.sqrt(grad_sq),
        })  # fmt: skip
    return rows


def run_active_is(cfg: ActiveISConfig, progress: bool = True) -> dict[str, Any]:
    """Every behaviour at every measured θ_t of each reward's and seed's training path."""
    from tqdm import tqdm

    check_options(cfg)
    check_active_is(cfg)
    rows: list[dict[str, Any]] = []
    problems = {}
    with tqdm(total=len(cfg.rewards) * len(cfg.seeds), desc="lab active_is", disable=not progress, leave=False) as bar:
        for reward in cfg.rewards:
            problem = problems[reward] = make_problem(cfg, reward)
            for seed in cfg.seeds:
                path = training_path(problem, cfg, seed)
                for t in cfg.measure_at:
                    for row in measure(problem, cfg, path, t):
                        rows.append({"reward": reward, "seed": seed, "t": t, **row})
                bar.update()
    first = problems[cfg.rewards[0]]
    return {
        "config": asdict(cfg),
        "problem": {"num_trajectories": first.space.num_trajectories, "num_params": first.policy.num_params},
        "rows": rows,
        "summary": _summarise(rows, ("reward", "behaviour"), QUANTITIES),
        "summary_by_step": _summarise(rows, ("reward", "t", "behaviour"), QUANTITIES),
    }


def _cell(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.4g} [{stat['low']:.4g}, {stat['high']:.4g}]"


def _plot(results: dict[str, Any], out_dir: Path) -> Path:
    """Per reward: the ratio to on-policy and tr Cov per group along the path, one line per behaviour."""
    plt = pyplot()
    rewards = list(results["config"]["rewards"])
    names = list(dict.fromkeys(e["behaviour"] for e in results["summary"]))
    fig, axes = plt.subplots(2, len(rewards), figsize=(5.2 * len(rewards), 7.2), squeeze=False)
    for col, reward in enumerate(rewards):
        for row, quantity in enumerate(("ratio_to_on_policy", "trace_var_group")):
            ax = axes[row][col]
            for i, name in enumerate(names):
                pts = sorted(
                    (e for e in results["summary_by_step"] if e["reward"] == reward and e["behaviour"] == name),
                    key=lambda e: e["t"],
                )
                values = [max(e[quantity]["mean"], _LOG_FLOOR) for e in pts]
                ax.plot([e["t"] for e in pts], values, marker="o", ms=3, color=plt.cm.tab10(i % 10), label=name)
            ax.set_yscale("log")
            ax.set_title(f"{quantity} — reward {reward}", fontsize=9)
            ax.set_xlabel("optimizer step t of the training path", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(names), 6), fontsize=7)
    fig.tight_layout(rect=(0, 0.07, 1, 1))  # room for the legend below the panels
    plot = out_dir / "active_is_variance.png"
    fig.savefig(plot, dpi=85)
    plt.close(fig)
    return plot


def write_active_is_outputs(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """results.json, report.md and active_is_variance.png under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", results)
    plot = _plot(results, out_dir)
    cfg = results["config"]
    table = markdown_table(
        ["reward", "behaviour", *QUANTITIES],
        [[e["reward"], e["behaviour"], *(_cell(e[q]) for q in QUANTITIES)] for e in results["summary"]],
    )
    text = [
        "# lab active_is",
        "",
        f"Problem: {cfg['policy']} policy, V={cfg['vocab']}, L={cfg['max_len']} "
        f"({results['problem']['num_trajectories']} trajectories, {results['problem']['num_params']} parameters); "
        f"rewards {list(cfg['rewards'])}. Training path: `{cfg['algorithm']}`, {cfg['iterations']} iterations × "
        f"μ={cfg['inner_steps']} {cfg['optimizer']} steps at lr={cfg['lr']}, {cfg['groups']} groups × "
        f"G={cfg['group_size']}; measured at steps {list(cfg['measure_at'])}; seeds {list(cfg['seeds'])}; "
        f"baseline `{cfg['baseline']}`.",
        "",
        "All exact. Estimator: REINFORCE w(o)(R(o) − b)∇log π_θ(o), o ~ q, w = π_θ/q. trace_var_sample = "
        "tr Cov of one sample's estimate, trace_var_group = the same for a group of G (÷G), ratio_to_on_policy "
        "= trace_var / on-policy trace_var, relative_var_group = trace_var_group/‖∇J‖², kl_q_to_pi = "
        "KL(q‖π_θ). optimal = q* ∝ π_θ‖(R − b)∇log π_θ‖; defensive_α = α π_θ + (1 − α) q*; lag_k = π_θ_{t−k}; "
        "temp_T = π_θ at temperature T. Mean over seeds [95% Student-t interval] of the per-seed mean over "
        "the measurement steps.",
        "",
        table,
        "",
        *summary_lines(results),
        "",
        f"![variance]({plot.name})",
        "",
    ]
    (out_dir / "report.md").write_text("\n".join(text))
    return [out_dir / "results.json", out_dir / "report.md", plot]


def summary_lines(results: dict[str, Any]) -> list[str]:
    """Per reward: how far below on-policy q* goes (mean, and the smallest over seeds and steps)."""
    lines = []
    for reward in results["config"]["rewards"]:
        ratios = [r["ratio_to_on_policy"] for r in results["rows"]
                  if r["reward"] == reward and r["behaviour"] == "optimal"]  # fmt: skip
        lines.append(
            f"reward {reward}: tr Var(q*)/tr Var(on-policy) mean {np.mean(ratios):.4g}, "
            f"min {np.min(ratios):.4g}, max {np.max(ratios):.4g} over {len(ratios)} (seed, step) points"
        )
    return lines


__all__ = [
    "BASELINES",
    "ActiveISConfig",
    "behaviours",
    "check_active_is",
    "is_trace_variance",
    "measure",
    "optimal_behaviour",
    "reinforce_terms",
    "run_active_is",
    "summary_lines",
    "tempered_probabilities",
    "trajectory_scores",
    "write_active_is_outputs",
]
