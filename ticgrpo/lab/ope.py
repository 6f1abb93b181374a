"""`ticgrpo lab ope`: estimating J(θ) from samples of a k-steps-stale π_old (off-policy evaluation).

θ = θ_t, θ_old = θ_{t−k} along a training path (`paths.training_path`; θ_0 when t < k). From a
batch of n trajectories o_i ~ π_old, three families of estimators of J(θ) = Σ_o π_θ(o) R(o):

* `is`: (1/n) Σ w_i R_i with w = π_θ/π_old. Unbiased; Var = (E_old[w² R²] − J²)/n. Exact.
* `snis` (self-normalised IS): Σ w_i R_i / Σ w_i. Biased at finite n, with no closed form; its
  bias and variance are Monte Carlo over `mc_batches` batches, with standard errors (the bias's
  is sd/√M, the variance's √((m₄ − s⁴)/M) from the fourth central moment m₄).
* Policy convolution (Sachdeva, Wang, Liang, Kallus, McAuley, "Off-Policy Evaluation for Large
  Action Spaces via Policy Convolution", WWW 2024, arXiv 2310.15433), **reconstruction** of the
  paper's idea for sequences (the paper convolves policies over the actions of a one-step
  contextual bandit; here an action is a whole trajectory). Embedding: e(o) ∈ {0,1}^{L·V}, the
  one-hot of o_t at each position t (all zeros after the end), so ‖e(o) − e(o')‖² counts 2 for a
  position where both have different tokens and 1 where only one has a token. Kernel: Gaussian,
  K_h(o' → o) = exp(−‖e(o) − e(o')‖²/(2h²)) / Σ_o'' exp(−‖e(o'') − e(o')‖²/(2h²)), row-stochastic, so
  the convolved policy π̃(o) = Σ_o' π(o') K_h(o' → o) is a distribution (h → 0: π̃ = π).
  `conv_target_h`: (1/n) Σ π̃_θ(o_i)/π_old(o_i) · R_i (target side); `conv_both_h`:
  (1/n) Σ π̃_θ(o_i)/π̃_old(o_i) · R_i (both sides, the same kernel). Both are linear in the
  samples, so their bias Σ π_old c R − J and variance (Σ π_old c² R² − (Σ π_old c R)²)/n are exact.
  The bandwidth h trades bias (J(π̃_θ) ≠ J(θ)) for variance (weights nearer one).

Reported per batch of n: bias, variance, MSE = bias² + variance, as the lag k and h vary.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ticgrpo.lab.converge import make_problem
from ticgrpo.lab.enumerate import TrajectorySpace
from ticgrpo.lab.estimators import Problem, kl_divergence
from ticgrpo.lab.lag import _summarise
from ticgrpo.lab.options import check_options, option
from ticgrpo.lab.paths import PathConfig, check_path, training_path
from ticgrpo.reports.io import write_json
from ticgrpo.reports.markdown import markdown_table
from ticgrpo.reports.plots import pyplot

QUANTITIES = ("bias", "variance", "mse", "kl_old_theta")
_LOG_FLOOR = 1e-14


@dataclass
class OPEConfig(PathConfig):
    lags: tuple[int, ...] = option((0, 1, 2, 4, 8), "lags k: samples from θ_{t−k}, target θ_t", minimum=0)
    batch_size: int = option(32, "n, trajectories per batch of the estimate", minimum=2)
    bandwidths: tuple[float, ...] = option(
        (0.3, 0.5, 0.7, 1.0), "kernel bandwidths h of the convolution estimators", above=0
    )
    mc_batches: int = option(20_000, "Monte Carlo batches for self-normalised IS", minimum=2)


def check_ope(cfg: OPEConfig) -> None:
    """ValueError (one line) for settings the study cannot run."""
    check_path(cfg)


def trajectory_embedding(space: TrajectorySpace) -> Tensor:
    """e(o): one-hot of the token at every position, zeros after the end: [N, L·V] float64."""
    one_hot = torch.nn.functional.one_hot(space.tokens, space.vocab_size).to(torch.float64)
    return (one_hot * space.mask[..., None]).reshape(space.num_trajectories, -1)


def convolution_kernel(space: TrajectorySpace, bandwidth: float) -> Tensor:
    """K_h [N, N], row o' the distribution K_h(o' → ·) ∝ exp(−‖e(o) − e(o')‖²/(2h²)) (module doc)."""
    embedding = trajectory_embedding(space)
    squared = torch.cdist(embedding, embedding).pow(2)
    return torch.softmax(-squared / (2 * bandwidth**2), dim=1)


def linear_moments(p_old: Tensor, coefficients: Tensor, rewards: Tensor, n: int) -> tuple[float, float]:
    """(E, Var) of (1/n) Σ c(o_i) R(o_i) over n i.i.d. o_i ~ π_old, exactly."""
    terms = coefficients * rewards
    mean = float(p_old @ terms)
    return mean, max(float(p_old @ terms.pow(2)) - mean**2, 0.0) / n


def snis_monte_carlo(
    p_old: Tensor, weights: Tensor, rewards: Tensor, n: int, batches: int, generator: torch.Generator
) -> dict[str, float]:
    """Mean, variance and their standard errors of Σ w_i R_i / Σ w_i over `batches` batches of n from π_old."""
    idx = torch.multinomial(p_old, batches * n, replacement=True, generator=generator).view(batches, n)
    w = weights[idx]
    estimates = (w * rewards[idx]).sum(dim=1) / w.sum(dim=1)
    centred = estimates - estimates.mean()
    variance = float(centred.pow(2).mean())
    fourth = float(centred.pow(4).mean())
    return {
        "mean": float(estimates.mean()),
        "mean_se": math.sqrt(variance / batches),
        "variance": variance,
        "variance_se": math.sqrt(max(fourth - variance**2, 0.0) / batches),
    }


def estimator_moments(
    problem: Problem, kernels: dict[float, Tensor], theta: Tensor, theta_old: Tensor, cfg: OPEConfig,
    generator: torch.Generator,
) -> Iterator[dict[str, Any]]:
    """Bias, variance and MSE of every estimator of J(θ) from n samples of π_old (module doc)."""
    with torch.no_grad():
        p, p_old = problem.probabilities(theta), problem.probabilities(theta_old)
    rewards, n = problem.rewards, cfg.batch_size
    target = float(p @ rewards)

    def row(estimator: str, bandwidth: float | None, mean: float, variance: float, **se: float) -> dict[str, Any]:
        bias = mean - target
        return {"estimator": estimator, "bandwidth": bandwidth, "J": target, "bias": bias, "variance": variance,
                "mse": bias**2 + variance, "exact": not se, **se}  # fmt: skip

    yield row("is", None, *linear_moments(p_old, p / p_old, rewards, n))
    snis = snis_monte_carlo(p_old, p / p_old, rewards, n, cfg.mc_batches, generator)
    yield row("snis", None, snis["mean"], snis["variance"], bias_se=snis["mean_se"], variance_se=snis["variance_se"])
    for h, kernel in kernels.items():
        smoothed = p @ kernel
        yield row(f"conv_target_{h:g}", h, *linear_moments(p_old, smoothed / p_old, rewards, n))
        yield row(f"conv_both_{h:g}", h, *linear_moments(p_old, smoothed / (p_old @ kernel), rewards, n))


def _path_rows(problem: Problem, kernels: dict[float, Tensor], cfg: OPEConfig, seed: int) -> Iterator[dict[str, Any]]:
    """Every estimator at every measured step t and lag k of one seed's training path."""
    path = training_path(problem, cfg, seed)
    generator = torch.Generator().manual_seed(seed)
    for t in cfg.measure_at:
        for k in cfg.lags:
            theta, theta_old = path[t], path[max(t - k, 0)]
            base = {"seed": seed, "t": t, "k": k, "kl_old_theta": kl_divergence(problem, theta_old, theta)}
            for row in estimator_moments(problem, kernels, theta, theta_old, cfg, generator):
                yield {**base, **row}


def run_ope(cfg: OPEConfig, progress: bool = True) -> dict[str, Any]:
    """Every estimator at every (reward, seed, step t, lag k)."""
    from tqdm import tqdm

    check_options(cfg)
    check_ope(cfg)
    rows: list[dict[str, Any]] = []
    problems = {}
    with tqdm(total=len(cfg.rewards) * len(cfg.seeds), desc="lab ope", disable=not progress, leave=False) as bar:
        for reward in cfg.rewards:
            problem = problems[reward] = make_problem(cfg, reward)
            kernels = {h: convolution_kernel(problem.space, h) for h in cfg.bandwidths}
            for seed in cfg.seeds:
                rows.extend({"reward": reward, **r} for r in _path_rows(problem, kernels, cfg, seed))
                bar.update()
    first = problems[cfg.rewards[0]]
    return {
        "config": asdict(cfg),
        "problem": {"num_trajectories": first.space.num_trajectories, "num_params": first.policy.num_params},
        "rows": rows,
        "summary": _summarise(rows, ("reward", "k", "estimator"), QUANTITIES),
        "max_snis_bias_se": max((r["bias_se"] for r in rows if not r["exact"]), default=0.0),
        "max_snis_variance_relative_se": max(
            (r["variance_se"] / r["variance"] for r in rows if not r["exact"] and r["variance"] > 0), default=0.0
        ),
    }


def _cell(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.4g} [{stat['low']:.4g}, {stat['high']:.4g}]"


def _series(results: dict[str, Any], reward: str, estimator: str, quantity: str) -> tuple[list[int], list[float]]:
    pts = sorted((e for e in results["summary"] if e["reward"] == reward and e["estimator"] == estimator),
                 key=lambda e: e["k"])  # fmt: skip
    values = [e[quantity]["mean"] for e in pts]
    if quantity == "bias":
        values = [abs(v) for v in values]
    return [e["k"] for e in pts], [max(v, _LOG_FLOOR) for v in values]


def _plot_lag(results: dict[str, Any], out_dir: Path) -> Path:
    """Per reward: |bias|, variance and MSE of every estimator against the lag k."""
    plt = pyplot()
    rewards = list(results["config"]["rewards"])
    names = list(dict.fromkeys(e["estimator"] for e in results["summary"]))
    fig, axes = plt.subplots(len(rewards), 3, figsize=(14, 3.8 * len(rewards)), squeeze=False)
    for row, reward in enumerate(rewards):
        for col, quantity in enumerate(("bias", "variance", "mse")):
            ax = axes[row][col]
            for i, name in enumerate(names):
                style = "-" if not name.startswith("conv_both") else "--"
                ax.plot(*_series(results, reward, name, quantity), style, marker="o", ms=3,
                        color=plt.cm.tab10(i % 10), label=name)  # fmt: skip
            ax.set_yscale("log")
            ax.set_title(f"{'|bias|' if quantity == 'bias' else quantity} — reward {reward}", fontsize=9)
            ax.set_xlabel("lag k (samples from θ_{t−k})", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(names), 6), fontsize=7)
    fig.tight_layout(rect=(0, 0.07, 1, 1))  # room for the legend below the panels
    plot = out_dir / "ope_lag.png"
    fig.savefig(plot, dpi=80)
    plt.close(fig)
    return plot


def _plot_bandwidth(results: dict[str, Any], out_dir: Path) -> Path:
    """Per reward, at the largest lag: bias², variance and MSE of the convolution estimators against h."""
    plt = pyplot()
    cfg = results["config"]
    rewards, k_max, hs = list(cfg["rewards"]), max(cfg["lags"]), list(cfg["bandwidths"])
    fig, axes = plt.subplots(1, len(rewards), figsize=(5.5 * len(rewards), 4), squeeze=False)
    for col, reward in enumerate(rewards):
        ax = axes[0][col]
        at = {e["estimator"]: e for e in results["summary"] if e["reward"] == reward and e["k"] == k_max}
        for side, style in (("target", "-"), ("both", "--")):
            entries = [at[f"conv_{side}_{h:g}"] for h in hs]
            for quantity, color in (("bias", "C0"), ("variance", "C1"), ("mse", "C2")):
                values = [e[quantity]["mean"] ** 2 if quantity == "bias" else e[quantity]["mean"] for e in entries]
                ax.plot(hs, [max(v, _LOG_FLOOR) for v in values], style, marker="o", ms=3, color=color,
                        label=f"conv_{side}: {'bias²' if quantity == 'bias' else quantity}")  # fmt: skip
        for name, color in (("is", "k"), ("snis", "gray")):
            ax.axhline(max(at[name]["mse"]["mean"], _LOG_FLOOR), color=color, lw=0.8, ls=":", label=f"{name} MSE")
        ax.set_yscale("log")
        ax.set_title(f"reward {reward}, lag k={k_max}, n={cfg['batch_size']}", fontsize=9)
        ax.set_xlabel("kernel bandwidth h", fontsize=8)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    plot = out_dir / "ope_bandwidth.png"
    fig.savefig(plot, dpi=80)
    plt.close(fig)
    return plot


def write_ope_outputs(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """results.json, report.md, ope_lag.png and ope_bandwidth.png under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", results)
    plots = [_plot_lag(results, out_dir), _plot_bandwidth(results, out_dir)]
    cfg = results["config"]
    table = markdown_table(
        ["reward", "k", "estimator", *QUANTITIES],
        [[e["reward"], e["k"], e["estimator"], *(_cell(e[q]) for q in QUANTITIES)] for e in results["summary"]],
    )
    text = [
        "# lab ope",
        "",
        f"Problem: {cfg['policy']} policy, V={cfg['vocab']}, L={cfg['max_len']} "
        f"({results['problem']['num_trajectories']} trajectories, {results['problem']['num_params']} parameters); "
        f"rewards {list(cfg['rewards'])}. Training path: `{cfg['algorithm']}`, {cfg['iterations']} iterations × "
        f"μ={cfg['inner_steps']} {cfg['optimizer']} steps at lr={cfg['lr']}, {cfg['groups']} groups × "
        f"G={cfg['group_size']}; measured at steps {list(cfg['measure_at'])}; seeds {list(cfg['seeds'])}.",
        "",
        f"Estimates of J(θ_t) from a batch of n={cfg['batch_size']} samples of π_θ_{{t−k}}. is and conv_* exact; "
        f"snis by Monte Carlo over {cfg['mc_batches']} batches (largest standard error of its bias "
        f"{results['max_snis_bias_se']:.3g}, of its variance {100 * results['max_snis_variance_relative_se']:.3g}% "
        "of the variance). conv_target_h smooths π_θ with the Gaussian kernel of bandwidth h over the positional "
        "one-hot embedding of trajectories; conv_both_h smooths π_old too (a reconstruction for sequences of the "
        "policy-convolution idea, see ticgrpo/lab/ope.py). Mean over seeds [95% Student-t interval] of the per-seed "
        "mean over the measurement steps.",
        "",
        table,
        "",
        *summary_lines(results),
        "",
        *(f"![{p.stem}]({p.name})" for p in plots),
        "",
    ]
    (out_dir / "report.md").write_text("\n".join(text))
    return [out_dir / "results.json", out_dir / "report.md", *plots]


def summary_lines(results: dict[str, Any]) -> list[str]:
    """Per reward, at the largest lag: each estimator's MSE, and the bandwidth with the least MSE."""
    k_max = max(results["config"]["lags"])
    lines = []
    for reward in results["config"]["rewards"]:
        at = [e for e in results["summary"] if e["reward"] == reward and e["k"] == k_max]
        best = min(at, key=lambda e: e["mse"]["mean"])
        mses = ", ".join(f"{e['estimator']} {e['mse']['mean']:.3g}" for e in at)
        lines.append(f"reward {reward}, lag {k_max}: MSE {mses}; least: {best['estimator']}")
    return lines


__all__ = [
    "OPEConfig",
    "check_ope",
    "convolution_kernel",
    "estimator_moments",
    "linear_moments",
    "run_ope",
    "snis_monte_carlo",
    "summary_lines",
    "trajectory_embedding",
    "write_ope_outputs",
]
