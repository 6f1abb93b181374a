"""`ticgrpo lab baselines`: the role of baselines in policy gradient (Mei et al., 2023, arXiv 2301.06276).

Baselines (`baseline_moments.BASELINES`): none, the group mean including the sample (GRPO's),
leave-one-out (RLOO) and the exact value b = J(θ). Two measurements per seed (θ_init = the policy's
random init for that seed):

* **Variance, exactly.** tr Cov of one group's estimate ĝ (G samples) at θ_init, by the closed forms
  of `baseline_moments` (i.i.d. terms for none / value, the order-2 U-statistic for leave-one-out,
  ĝ_mean = (G−1)/G · ĝ_rloo); checked against the enumeration of all groups in the tests. The same
  for the natural-gradient step (F + λI)⁻¹ ĝ: tr of (F + λI)⁻¹ Cov ĝ (F + λI)⁻¹, F the exact Fisher.
* **Convergence with sampled groups.** From θ_init, `iterations` steps θ ← θ + lr·d, with d = ĝ (plain
  policy gradient, `pg_lr`) or d = (F + λI)⁻¹ ĝ (natural policy gradient, exact Fisher
  F = E[∇log π ∇log πᵀ] of the enumerable policy, damping λ, `npg_lr`); ĝ averages `groups` groups of
  G sampled from the current policy. J(θ) is exact at each iteration. A seed is *committed* when the
  final policy puts more than `commit_threshold` of its mass on one trajectory that is not optimal.

The paper's abstract (what could be read here): with on-policy sampling, stochastic natural PG with
the value baseline converges to a global optimum, while the variance of the NPG estimate is unbounded
with or without a baseline; the baseline's effect is to make the updates less aggressive (committal),
not less noisy. A related abstract found beside it (its title was not in the excerpt) reports that
some baselines make on-policy NPG converge to a suboptimal policy for any step size, and that a lower-
variance baseline can be worse than a higher-variance one. This study measures both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ticgrpo.lab.baseline_moments import (
    ScoreTable,
    baseline_names,
    exact_moments,
    get_baseline,
    group_estimates,
    sampled_advantages,
    score_table,
)
from ticgrpo.lab.converge import make_problem
from ticgrpo.lab.estimators import Problem, sample_groups
from ticgrpo.lab.options import SpaceConfig, check_options, option
from ticgrpo.lab.rewards import REWARDS
from ticgrpo.reports.io import write_json
from ticgrpo.reports.markdown import markdown_table
from ticgrpo.reports.plots import pyplot
from ticgrpo.reports.stats import t_interval

STUDY_BASELINES = ("none", "mean", "rloo", "value")
METHODS = ("pg", "npg")


@dataclass
class BaselinesConfig(SpaceConfig):
    vocab: int = option(3, "vocabulary size V including EOS", minimum=2)
    max_len: int = option(3, "max completion length L", minimum=1)
    group_size: int = option(4, "G, completions per group", minimum=2)
    reward: str = option("target", "reward of a trajectory", choices=lambda: REWARDS.names())
    baselines: tuple[str, ...] = option(STUDY_BASELINES, "baselines to compare", choices=baseline_names)
    seeds: tuple[int, ...] = option(tuple(range(10)), "seeds: θ_init and the sampler")
    iterations: int = option(200, "training iterations", minimum=1)
    groups: int = option(1, "groups per iteration", minimum=1)
    pg_lr: float = option(1.0, "step size of plain policy gradient", above=0)
    npg_lr: float = option(0.2, "step size of natural policy gradient", above=0)
    damping: float = option(1e-3, "λ of the damped Fisher F + λI", above=0)
    commit_threshold: float = option(0.95, "probability mass on one trajectory that counts as committed",
                                     above=0)  # fmt: skip


def check_baselines(cfg: BaselinesConfig) -> None:
    """ValueError (one line) for settings the study cannot run."""
    if cfg.commit_threshold >= 1:
        raise ValueError(f"commit_threshold must be < 1 (a probability), got {cfg.commit_threshold}")


def natural_preconditioner(table: ScoreTable, damping: float) -> Tensor:
    """(F + λI)⁻¹ with F the exact Fisher."""
    fisher = table.fisher()
    return torch.linalg.inv(fisher + damping * torch.eye(fisher.shape[0], dtype=fisher.dtype))


def variance_row(problem: Problem, table: ScoreTable, name: str, cfg: BaselinesConfig) -> dict[str, float]:
    """Exact tr Cov of one group's ĝ and of its natural step, and E ĝ's relative error to ∇J."""
    moments = exact_moments(problem, table, get_baseline(name), cfg.group_size)
    precondition = natural_preconditioner(table, cfg.damping)
    grad = table.gradient
    return {
        "trace_cov": moments.trace_cov,
        "natural_trace_cov": float(torch.trace(precondition @ moments.cov @ precondition)),
        "relative_bias": float((moments.mean - grad).norm() / grad.norm().clamp_min(1e-300)),
    }


def train_curve(problem: Problem, name: str, method: str, cfg: BaselinesConfig, seed: int) -> dict[str, Any]:
    """Exact J at every iteration of one sampled-group run, where the final policy ends, and the exact
    variances (`variance_row`) at the final θ: how the natural step's noise grows as π nears a vertex."""
    baseline = get_baseline(name)
    theta = problem.policy.init(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    values = []
    for _ in range(cfg.iterations):
        table = score_table(problem, theta)
        values.append(table.value)
        idx = sample_groups(problem, theta, cfg.groups, cfg.group_size, gen)
        estimate = group_estimates(table, sampled_advantages(problem, baseline, idx, table.value), idx).mean(0)
        if method == "npg":
            estimate = natural_preconditioner(table, cfg.damping) @ estimate
        theta = theta + (cfg.npg_lr if method == "npg" else cfg.pg_lr) * estimate
    table = score_table(problem, theta)
    values.append(table.value)
    p = table.probabilities
    top = int(p.argmax())
    committed = float(p[top]) > cfg.commit_threshold
    final = variance_row(problem, table, name, cfg)
    return {
        "J": values,
        "top_probability": float(p[top]),
        "committed_suboptimal": committed and float(problem.rewards[top]) < float(problem.rewards.max()),
        "final_trace_cov": final["trace_cov"],
        "final_natural_trace_cov": final["natural_trace_cov"],
    }


def _interval(values: list[float]) -> dict[str, float]:
    mean, low, high = t_interval(values)
    return {"mean": mean, "low": low, "high": high}


def _summaries(variance: list[dict[str, Any]], runs: list[dict[str, Any]], cfg: BaselinesConfig) -> dict[str, Any]:
    var_summary = {
        name: {q: _interval([r[q] for r in variance if r["baseline"] == name])
               for q in ("trace_cov", "natural_trace_cov", "relative_bias")}
        for name in cfg.baselines
    }  # fmt: skip
    train_summary = []
    for method in METHODS:
        for name in cfg.baselines:
            arm = [r for r in runs if r["method"] == method and r["baseline"] == name]
            curves = np.array([r["J"] for r in arm])
            train_summary.append({
                "method": method,
                "baseline": name,
                "curve": [_interval(list(curves[:, i])) for i in range(curves.shape[1])],
                "J_final": _interval(list(curves[:, -1])),
                "J_mean_over_training": _interval(list(curves[:, 1:].mean(1))),
                "committed_suboptimal": sum(r["committed_suboptimal"] for r in arm),
                "final_trace_cov": _interval([r["final_trace_cov"] for r in arm]),
                "final_natural_trace_cov": _interval([r["final_natural_trace_cov"] for r in arm]),
                "num_seeds": len(arm),
            })  # fmt: skip
    return {"variance": var_summary, "training": train_summary}


def run_baselines(cfg: BaselinesConfig, progress: bool = True) -> dict[str, Any]:
    """The exact variances and the training curves of the module doc, as a JSON-ready dict."""
    from tqdm import tqdm

    check_options(cfg)
    check_baselines(cfg)
    problem = make_problem(cfg, cfg.reward)
    variance, runs = [], []
    with tqdm(total=len(cfg.seeds), desc="lab baselines", disable=not progress, leave=False) as bar:
        for seed in cfg.seeds:
            table = score_table(problem, problem.policy.init(seed))
            for name in cfg.baselines:
                variance.append({"seed": seed, "baseline": name, **variance_row(problem, table, name, cfg)})
                for method in METHODS:
                    runs.append({"seed": seed, "baseline": name, "method": method,
                                 **train_curve(problem, name, method, cfg, seed)})  # fmt: skip
            bar.update()
    return {
        "config": asdict(cfg),
        "problem": {
            "num_trajectories": problem.space.num_trajectories,
            "num_params": problem.policy.num_params,
            "max_reward": float(problem.rewards.max()),
        },
        "baselines": {name: get_baseline(name).description for name in cfg.baselines},
        "variance_rows": variance,
        "runs": runs,
        "summary": _summaries(variance, runs, cfg),
    }


def _cell(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.4g} [{stat['low']:.4g}, {stat['high']:.4g}]"


def _plot(results: dict[str, Any], out_dir: Path) -> list[Path]:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(METHODS), figsize=(10, 3.8), sharey=True)
    for ax, method in zip(axes, METHODS, strict=True):
        for i, entry in enumerate(e for e in results["summary"]["training"] if e["method"] == method):
            x = np.arange(len(entry["curve"]))
            color = plt.cm.tab10(i % 10)
            ax.plot(x, [c["mean"] for c in entry["curve"]], color=color, label=entry["baseline"])
            ax.fill_between(x, [c["low"] for c in entry["curve"]], [c["high"] for c in entry["curve"]],
                            color=color, alpha=0.15)  # fmt: skip
        ax.axhline(results["problem"]["max_reward"], color="gray", lw=0.8, ls="--")
        ax.set_title({"pg": "plain policy gradient", "npg": "natural policy gradient"}[method], fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
    axes[0].set_ylabel("exact J (mean over seeds, 95% band)", fontsize=8)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    curves = out_dir / "curves.png"
    fig.savefig(curves, dpi=85)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    names = list(results["summary"]["variance"])
    for ax, q in zip(axes, ("trace_cov", "natural_trace_cov"), strict=True):
        stats = [results["summary"]["variance"][n][q] for n in names]
        ax.bar(names, [s["mean"] for s in stats], color="tab:blue", alpha=0.7)
        ax.errorbar(names, [s["mean"] for s in stats], yerr=[[s["mean"] - s["low"] for s in stats],
                    [s["high"] - s["mean"] for s in stats]], fmt="none", color="k")  # fmt: skip
        ax.set_yscale("log")
        ax.set_title(f"{q} at θ_init (G={results['config']['group_size']})", fontsize=9)
    fig.tight_layout()
    variance = out_dir / "variance.png"
    fig.savefig(variance, dpi=85)
    plt.close(fig)
    return [curves, variance]


def write_baselines_outputs(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """results.json, report.md, curves.png and variance.png under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", results)
    plots = _plot(results, out_dir)
    cfg, summary = results["config"], results["summary"]
    variance_table = markdown_table(
        ["baseline", "tr Cov ĝ", "tr Cov natural step", "‖E ĝ − ∇J‖/‖∇J‖"],
        [[n, _cell(s["trace_cov"]), _cell(s["natural_trace_cov"]), _cell(s["relative_bias"])]
         for n, s in summary["variance"].items()],
    )  # fmt: skip
    training_table = markdown_table(
        ["method", "baseline", "final J", "mean J over training", "seeds committed to a suboptimal trajectory",
         "tr Cov ĝ at the final θ", "tr Cov natural step at the final θ"],
        [[e["method"], e["baseline"], _cell(e["J_final"]), _cell(e["J_mean_over_training"]),
          f"{e['committed_suboptimal']} / {e['num_seeds']}", _cell(e["final_trace_cov"]),
          _cell(e["final_natural_trace_cov"])] for e in summary["training"]],
    )  # fmt: skip
    text = [
        "# lab baselines",
        "",
        f"Problem: {cfg['policy']} policy, V={cfg['vocab']}, L={cfg['max_len']}, reward `{cfg['reward']}` "
        f"({results['problem']['num_trajectories']} trajectories, {results['problem']['num_params']} parameters, "
        f"max reward {results['problem']['max_reward']:.4g}); G={cfg['group_size']}, {cfg['groups']} group(s) "
        f"per iteration, {cfg['iterations']} iterations; seeds {list(cfg['seeds'])}.",
        "",
        "## Exact variance of one group's estimate at θ_init (closed forms; mean over seeds [95% t-interval])",
        "",
        f"Natural step: (F + λI)⁻¹ ĝ with the exact Fisher, λ = {cfg['damping']}.",
        "",
        variance_table,
        "",
        f"## Training with sampled groups (plain PG lr {cfg['pg_lr']}, natural PG lr {cfg['npg_lr']})",
        "",
        f"Committed: the final policy puts more than {cfg['commit_threshold']} of its mass on one trajectory "
        "whose reward is below the maximum.",
        "",
        training_table,
        "",
        *(f"![{p.stem}]({p.name})" for p in plots),
        "",
    ]
    (out_dir / "report.md").write_text("\n".join(text))
    return [out_dir / "results.json", out_dir / "report.md", *plots]


def summary_lines(results: dict[str, Any]) -> list[str]:
    """Terminal lines: per method and baseline, final J and the committed seeds."""
    return [
        f"{e['method']:4s} {e['baseline']:9s} final J {e['J_final']['mean']:.4f} "
        f"[{e['J_final']['low']:.4f}, {e['J_final']['high']:.4f}]   committed {e['committed_suboptimal']}/"
        f"{e['num_seeds']}"
        for e in results["summary"]["training"]
    ]


__all__ = [
    "METHODS",
    "STUDY_BASELINES",
    "BaselinesConfig",
    "check_baselines",
    "natural_preconditioner",
    "run_baselines",
    "summary_lines",
    "train_curve",
    "variance_row",
    "write_baselines_outputs",
]
