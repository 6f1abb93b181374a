"""`ticgrpo lab ustat`: GRPO's gradient as a U-statistic (Zhou, Ye, Xu, Zhu, Gong, Shi, arXiv 2603.01162).

What could be read of the paper here is its abstract: the GRPO policy gradient is a U-statistic, it
is asymptotically equivalent to an oracle policy gradient with access to the value function, and a
scaling law gives the best group size. Its equations were not available, so the decomposition below
is derived here (reconstruction: the classical Hoeffding decomposition applied to the leave-one-out
form of the group-mean estimate, `baseline_moments`), not copied from the paper.

At each seed's θ (the policy's random init) and each G of `group_sizes`, exactly:

* `value` (the oracle b = J(θ)): Cov = Σ_J / G.
* `rloo`: the order-2 U-statistic, Cov = ((G − 2) Σ_J + 2 ζ_2)/(G (G − 1)); its excess over the oracle
  is (2 ζ_2 − Σ_J)/(G (G − 1)) = O(1/G²): the oracle property.
* `mean` (GRPO without std, the sample included): (G−1)/G · rloo; bias −∇J/G exactly.
* `mean_std` (GRPO's `group_norm`): not a U-statistic (the std divides); exact by the enumeration of
  all C(N + G − 1, G) groups when there are at most `exact_group_limit` of them, else Monte Carlo
  (`check_groups` groups, with standard errors). The `method` column says which.

Every value is checked against an independent Monte Carlo run (`check_groups` groups: z = (value − MC)/SE
of tr Cov, both runs' SE where the value is itself Monte Carlo).
At a sample budget B = G · groups (`budget`), a batch of B/G groups has Cov/(B/G); the relative MSE
(‖E ĝ − ∇J‖² + tr Cov · G/B)/‖∇J‖² and the scale-free noise-to-signal tr Cov · G/B / ‖E ĝ‖² name
the best G for each estimator.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ticgrpo.lab.baseline_moments import (
    ScoreTable,
    baseline_names,
    enumerated_moments,
    get_baseline,
    num_groups,
    sampled_moments,
    score_table,
)
from ticgrpo.lab.converge import make_problem
from ticgrpo.lab.estimators import Problem
from ticgrpo.lab.options import SpaceConfig, check_options, option
from ticgrpo.lab.rewards import REWARDS
from ticgrpo.reports.io import write_json
from ticgrpo.reports.markdown import markdown_table
from ticgrpo.reports.plots import pyplot
from ticgrpo.reports.stats import t_interval

STUDY_ESTIMATORS = ("value", "rloo", "mean", "mean_std")
QUANTITIES = ("trace_cov", "ratio_to_oracle", "relative_bias", "cos_gradient", "relative_mse_budget",
              "noise_to_signal_budget", "check_z")  # fmt: skip


@dataclass
class UstatConfig(SpaceConfig):
    vocab: int = option(2, "vocabulary size V including EOS", minimum=2)
    max_len: int = option(4, "max completion length L", minimum=1)
    reward: str = option("target", "reward of a trajectory", choices=lambda: REWARDS.names())
    estimators: tuple[str, ...] = option(STUDY_ESTIMATORS, "baselines of the estimators", choices=baseline_names)
    group_sizes: tuple[int, ...] = option((2, 4, 8, 16, 32), "group sizes G", minimum=2)
    seeds: tuple[int, ...] = option((0, 1, 2, 3, 4), "seeds: θ (the policy's init) and the Monte Carlo check")
    budget: int = option(64, "samples per batch B = G · groups for the per-budget comparison", minimum=2)
    check_groups: int = option(20_000, "Monte Carlo groups of the check (and of mean_std when not enumerable)",
                               minimum=2)  # fmt: skip
    exact_group_limit: int = option(100_000, "enumerate mean_std's groups exactly up to this many multisets",
                                    minimum=1)  # fmt: skip


def check_ustat(cfg: UstatConfig) -> None:
    """ValueError (one line) for settings the study cannot run."""
    if "value" not in cfg.estimators:
        raise ValueError("estimators must include 'value' (the oracle every ratio is taken against)")
    too_big = [g for g in cfg.group_sizes if g > cfg.budget]
    if too_big:
        raise ValueError(f"group sizes {too_big} exceed the budget {cfg.budget} (B = G · groups needs G ≤ B)")


def _moments(problem: Problem, table: ScoreTable, theta: torch.Tensor, name: str, group_size: int,
             cfg: UstatConfig, seed: int) -> tuple[torch.Tensor, float, float, str]:  # fmt: skip
    """(E ĝ, tr Cov, the standard error of tr Cov (0 when exact), method) of one estimator."""
    baseline = get_baseline(name)
    if baseline.closed_form is not None:
        moments = baseline.closed_form(table, group_size)
        return moments.mean, moments.trace_cov, 0.0, "exact (closed form)"
    if num_groups(table.probabilities.numel(), group_size) <= cfg.exact_group_limit:
        moments = enumerated_moments(problem, table, baseline, group_size)
        return moments.mean, moments.trace_cov, 0.0, "exact (all groups)"
    sampled = sampled_moments(problem, table, theta, baseline, group_size, cfg.check_groups, seed)
    return sampled.mean, sampled.trace_cov, sampled.trace_cov_standard_error, "monte carlo"


def _rows_at(
    problem: Problem, theta: torch.Tensor, seed: int, group_size: int, cfg: UstatConfig
) -> list[dict[str, Any]]:
    """Every estimator at one θ and G: exact (or Monte Carlo) moments, budget criteria, the MC check."""
    table = score_table(problem, theta)
    grad = table.gradient
    grad_sq = float(grad @ grad)
    oracle = float(torch.trace(table.term_covariance(table.value))) / group_size
    rows = []
    for name in cfg.estimators:
        mean, trace_cov, trace_se, method = _moments(problem, table, theta, name, group_size, cfg, seed)
        check = sampled_moments(problem, table, theta, get_baseline(name), group_size, cfg.check_groups,
                                seed * 1_000 + group_size)  # fmt: skip
        check_se = (trace_se**2 + check.trace_cov_standard_error**2) ** 0.5  # two independent MC runs: both
        per_batch = trace_cov * group_size / cfg.budget
        rows.append({
            "seed": seed, "G": group_size, "estimator": name, "method": method,
            "trace_cov": trace_cov, "trace_cov_standard_error": trace_se,
            "ratio_to_oracle": trace_cov / oracle,
            "relative_bias": float((mean - grad).norm()) / grad_sq**0.5,
            "cos_gradient": float(mean @ grad / (mean.norm() * grad.norm()).clamp_min(1e-300)),
            "relative_mse_budget": (float((mean - grad).pow(2).sum()) + per_batch) / grad_sq,
            "noise_to_signal_budget": per_batch / max(float(mean @ mean), 1e-300),
            "mc_trace_cov": check.trace_cov, "mc_trace_cov_standard_error": check.trace_cov_standard_error,
            "check_z": (trace_cov - check.trace_cov) / max(check_se, 1e-300),
        })  # fmt: skip
    return rows


def hoeffding_terms(table: ScoreTable) -> dict[str, float]:
    """tr Σ_J (= 4 tr ζ_1) and tr ζ_2 of the leave-one-out kernel: the two numbers behind every G."""
    return {
        "trace_sigma_value": float(torch.trace(table.term_covariance(table.value))),
        "trace_zeta2": float(torch.trace(table.pair_kernel_covariance())),
    }


def _summarise(rows: list[dict[str, Any]], cfg: UstatConfig) -> list[dict[str, Any]]:
    out = []
    for name in cfg.estimators:
        for g in cfg.group_sizes:
            cell = [r for r in rows if r["estimator"] == name and r["G"] == g]
            entry: dict[str, Any] = {"estimator": name, "G": g, "method": cell[0]["method"]}
            for q in QUANTITIES:
                mean, low, high = t_interval([r[q] for r in cell])
                entry[q] = {"mean": mean, "low": low, "high": high}
            out.append(entry)
    return out


def best_group_sizes(rows: list[dict[str, Any]], cfg: UstatConfig) -> dict[str, dict[str, Any]]:
    """Per estimator and criterion: the G of least mean over seeds ("all equal" when no G differs), and
    how many seeds chose each G."""
    best: dict[str, dict[str, Any]] = {}
    for name in cfg.estimators:
        best[name] = {}
        for q in ("relative_mse_budget", "noise_to_signal_budget"):
            value = {(r["G"], r["seed"]): r[q] for r in rows if r["estimator"] == name}
            means = {g: float(np.mean([value[(g, s)] for s in cfg.seeds])) for g in cfg.group_sizes}
            per_seed = [min((value[(g, s)], g) for g in cfg.group_sizes)[1] for s in cfg.seeds]
            tie = max(means.values()) - min(means.values()) <= 1e-9 * max(means.values())  # the oracle: G·Cov const
            if tie:
                best[name][q] = {"G": "all equal", "seeds_choosing": "all equal"}
                continue
            best[name][q] = {"G": min(means, key=means.__getitem__),
                             "seeds_choosing": {str(g): per_seed.count(g) for g in cfg.group_sizes}}  # fmt: skip
    return best


def run_ustat(cfg: UstatConfig, progress: bool = True) -> dict[str, Any]:
    """Every estimator × G × seed of the module doc, as a JSON-ready dict."""
    from tqdm import tqdm

    check_options(cfg)
    check_ustat(cfg)
    problem = make_problem(cfg, cfg.reward)
    rows, hoeffding = [], []
    with tqdm(total=len(cfg.seeds) * len(cfg.group_sizes), desc="lab ustat", disable=not progress,
              leave=False) as bar:  # fmt: skip
        for seed in cfg.seeds:
            theta = problem.policy.init(seed)
            hoeffding.append({"seed": seed, **hoeffding_terms(score_table(problem, theta))})
            for g in cfg.group_sizes:
                rows.extend(_rows_at(problem, theta, seed, g, cfg))
                bar.update()
    return {
        "config": asdict(cfg),
        "problem": {"num_trajectories": problem.space.num_trajectories, "num_params": problem.policy.num_params},
        "estimators": {name: get_baseline(name).description for name in cfg.estimators},
        "hoeffding": hoeffding,
        "rows": rows,
        "summary": _summarise(rows, cfg),
        "best_group_size": best_group_sizes(rows, cfg),
        "max_abs_check_z": max(abs(r["check_z"]) for r in rows),
    }


def _cell(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.4g} [{stat['low']:.4g}, {stat['high']:.4g}]"


def _plot(results: dict[str, Any], out_dir: Path) -> list[Path]:
    plt = pyplot()
    quantities = ("trace_cov", "ratio_to_oracle", "relative_mse_budget", "noise_to_signal_budget")
    fig, axes = plt.subplots(1, len(quantities), figsize=(4.2 * len(quantities), 3.6))
    for ax, q in zip(axes, quantities, strict=True):
        for i, name in enumerate(results["estimators"]):
            pts = [e for e in results["summary"] if e["estimator"] == name]
            x = [e["G"] for e in pts]
            color = plt.cm.tab10(i % 10)
            ax.plot(x, [e[q]["mean"] for e in pts], marker="o", ms=3, color=color, label=name)
            ax.fill_between(x, [max(e[q]["low"], e[q]["mean"] / 10) for e in pts], [e[q]["high"] for e in pts],
                            color=color, alpha=0.15)  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(q if "budget" not in q else f"{q} (B={results['config']['budget']})", fontsize=9)
        ax.set_xlabel("group size G", fontsize=8)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "group_size.png"
    fig.savefig(path, dpi=85)
    plt.close(fig)
    return [path]


def write_ustat_outputs(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """results.json, report.md and group_size.png under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", results)
    plots = _plot(results, out_dir)
    cfg = results["config"]
    table = markdown_table(
        ["estimator", "G", "method", *QUANTITIES],
        [[e["estimator"], e["G"], e["method"], *(_cell(e[q]) for q in QUANTITIES)] for e in results["summary"]],
    )
    best = markdown_table(
        ["estimator", "best G by relative MSE", "seeds choosing each G", "best G by noise-to-signal",
         "seeds choosing each G"],
        [[name, b["relative_mse_budget"]["G"], b["relative_mse_budget"]["seeds_choosing"],
          b["noise_to_signal_budget"]["G"], b["noise_to_signal_budget"]["seeds_choosing"]]
         for name, b in results["best_group_size"].items()],
    )  # fmt: skip
    hoeffding = markdown_table(
        ["seed", "tr Σ_J (= 4 tr ζ_1)", "tr ζ_2", "2 tr ζ_2 / tr Σ_J"],
        [[h["seed"], h["trace_sigma_value"], h["trace_zeta2"], 2 * h["trace_zeta2"] / h["trace_sigma_value"]]
         for h in results["hoeffding"]],
    )  # fmt: skip
    text = [
        "# lab ustat",
        "",
        f"Problem: {cfg['policy']} policy, V={cfg['vocab']}, L={cfg['max_len']}, reward `{cfg['reward']}` "
        f"({results['problem']['num_trajectories']} trajectories, {results['problem']['num_params']} parameters); "
        f"θ = the policy's init of each seed {list(cfg['seeds'])}; budget B = {cfg['budget']} samples.",
        "",
        "trace_cov: tr Cov of one group's ĝ; ratio_to_oracle: over the value baseline's at the same G; "
        "relative_bias ‖E ĝ − ∇J‖/‖∇J‖; cos_gradient: cos(E ĝ, ∇J); relative_mse_budget and "
        "noise_to_signal_budget: a batch of B/G groups; check_z: (exact − Monte Carlo)/SE of tr Cov with "
        f"{cfg['check_groups']} groups. Mean over seeds [95% t-interval].",
        "",
        table,
        "",
        f"Largest |check_z| over all rows: {results['max_abs_check_z']:.3g}.",
        "",
        "## Hoeffding terms (tr Cov ĝ_rloo − tr Cov ĝ_value = (2 tr ζ_2 − tr Σ_J)/(G(G − 1)))",
        "",
        hoeffding,
        "",
        f"## Best group size at a budget of {cfg['budget']} samples",
        "",
        best,
        "",
        *(f"![{p.stem}]({p.name})" for p in plots),
        "",
    ]
    (out_dir / "report.md").write_text("\n".join(text))
    return [out_dir / "results.json", out_dir / "report.md", *plots]


def summary_lines(results: dict[str, Any]) -> list[str]:
    """Terminal lines: tr Cov over the oracle's per estimator and G, and the best G per estimator."""
    lines = ["tr Cov / oracle's (mean over seeds):"]
    for e in results["summary"]:
        lines.append(f"  {e['estimator']:9s} G={e['G']:<3d} {e['ratio_to_oracle']['mean']:.4f}  ({e['method']})")
    for name, b in results["best_group_size"].items():
        lines.append(f"best G at budget {results['config']['budget']}: {name:9s} by relative MSE "
                     f"{b['relative_mse_budget']['G']}, by noise-to-signal {b['noise_to_signal_budget']['G']}")
    lines.append(f"max |z| exact vs Monte Carlo: {results['max_abs_check_z']:.3g}")
    return lines


__all__ = [
    "STUDY_ESTIMATORS",
    "UstatConfig",
    "best_group_sizes",
    "check_ustat",
    "hoeffding_terms",
    "run_ustat",
    "summary_lines",
    "write_ustat_outputs",
]
