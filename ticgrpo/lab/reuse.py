"""`ticgrpo lab reuse`: trajectory reuse (RT-PG, arXiv 2506.06178) against fresh samples, exactly.

Along a training path (the arm `path_algorithm` trained with `converge.train`, θ_s its iterate
after s optimizer steps), at each step t of `measure_at` and window ω of `windows`, the pool holds
ω batches, batch j sampled by θ_{t−j} (j = 0..ω−1; θ_0 when t − j < 0). Two sample budgets:

* `pooled`: n_j = G/ω trajectories from each version, N = G in the update: the same number of
  trajectories in the gradient as one fresh group, of which only G/ω are new at each step;
* `per_step`: n_j = G from each version, N = ωG: the same number of NEW trajectories per step as a
  fresh group, the older ones reused.

A reuse arm (an objective that reads `mixture_logprobs`) weighs each pooled trajectory by the
balance heuristic w(o) = P_θt(o)/q(o), q = Σ_j (n_j/N) P_θ{t−j}. Fresh arms (`algorithms`) use G new
samples from θ_t. Every number is exact (enumeration, float64) with the fixed baseline b = J(θ_t):
the pooled estimate ĝ = (1/N) Σ_j Σ_k g(o_jk) of stratified draws has

    E ĝ = Σ_j (n_j/N) E_θj[g],   tr Cov ĝ = (1/N) Σ_j (n_j/N) (E_θj‖g‖² − ‖E_θj g‖²),

compared with ∇J(θ_t): rel_err, cos, noise-to-signal tr Cov/‖E ĝ‖², and the relative MSE
(‖E ĝ − ∇J(θ_t)‖² + tr Cov)/‖∇J(θ_t)‖² of one update's estimate. Over seeds: the mean and 95%
Student-t interval of the per-seed mean over `measure_at`; the paired comparisons (declared here) are
log(relative MSE of each reuse arm at ω > 1 / that of the fresh trajectory ratio `reference`), Holm.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ticgrpo.core.objectives import OBJECTIVES
from ticgrpo.lab.converge import ConvergeConfig, make_problem, train
from ticgrpo.lab.estimators import Problem, check_exact_moments, compare, exact_gradient, group_gradients
from ticgrpo.lab.lag import _summarise
from ticgrpo.lab.options import check_options, option
from ticgrpo.lab.variants import Variant, get_variant
from ticgrpo.reports.io import write_json
from ticgrpo.reports.markdown import markdown_table
from ticgrpo.reports.plots import pyplot
from ticgrpo.reports.stats import holm_adjust, paired_difference

BUDGETS = ("pooled", "per_step")
FRESH = "fresh"  # the budget label of the fresh-sample arms: G new samples from θ_t
QUANTITIES = ("kl_window", "rel_err_current", "cos_current", "noise_to_signal", "relative_mse")


@dataclass
class ReuseConfig(ConvergeConfig):
    algorithms: tuple[str, ...] = option(("grpo", "tic_grpo", "tic_ratio_only"), "fresh-sample arms (G from θ_t)")
    reuse_algorithms: tuple[str, ...] = option(
        ("trajectory_reuse", "trajectory_reuse_clip"), "reuse arms: objectives that read mixture log-probs"
    )
    reference: str = option("tic_ratio_only", "the fresh arm the reuse arms are compared with")
    path_algorithm: str = option("grpo", "the arm whose training path gives the policy versions θ_s")
    windows: tuple[int, ...] = option((1, 2, 4, 8), "windows ω: batches of the last ω policy versions", minimum=1)
    seeds: tuple[int, ...] = option((0, 1, 2, 3, 4), "seeds: θ_init and the path's sampler")
    iterations: int = option(40, "outer iterations of the training path", minimum=1)
    inner_steps: int = option(1, "μ of the training path (1: every optimizer step is a new policy version)", minimum=1)
    measure_at: tuple[int, ...] = option((10, 20, 30, 40), "optimizer steps t at which to measure", minimum=0)


def check_reuse(cfg: ReuseConfig) -> None:
    """ValueError (one line) for settings the study cannot run."""
    total = cfg.iterations * cfg.inner_steps
    late = [t for t in cfg.measure_at if t > total]
    if late:
        raise ValueError(
            f"measure_at {late} is past the path's last step ({cfg.iterations}·{cfg.inner_steps} = {total})"
        )
    uneven = [w for w in cfg.windows if cfg.group_size % w]
    if uneven:
        raise ValueError(f"windows {uneven} do not divide group_size {cfg.group_size} (the pooled budget takes G/ω "
                         "from each version): choose windows that divide it")
    if cfg.reference not in cfg.algorithms:
        raise ValueError(f"reference {cfg.reference!r} is not among the fresh arms {list(cfg.algorithms)}")
    for name in (*cfg.algorithms, *cfg.reuse_algorithms, cfg.path_algorithm):
        check_exact_moments(get_variant(name))
    for name in cfg.reuse_algorithms:
        objective = get_variant(name).objective
        if not OBJECTIVES.spec(objective).reads_mixture_logprobs:
            raise ValueError(f"reuse arm {name!r}: its objective {objective!r} does not read mixture log-probs "
                             "(choose one such as trajectory_reuse)")


@dataclass(frozen=True)
class Pool:
    """The policy versions of a pool and each one's share n_j/N of its N trajectories."""

    thetas: tuple[Tensor, ...]
    shares: tuple[float, ...]
    size: int  # N

    def mixture_logprobs(self, problem: Problem) -> Tensor:
        """[num_trajectories] log q(o) = logsumexp_j (log(n_j/N) + log P_θj(o))."""
        with torch.no_grad():
            terms = [math.log(share) + problem.sequence_logprobs(theta) for theta, share in zip(
                self.thetas, self.shares, strict=True)]
            return torch.logsumexp(torch.stack(terms), dim=0)


def window_pool(path: list[Tensor], t: int, window: int, per_version: int) -> Pool:
    """ω batches of `per_version` trajectories, batch j from θ_{t−j} (θ_0 before the path starts)."""
    thetas = tuple(path[max(t - j, 0)] for j in range(window))
    return Pool(thetas, tuple(1.0 / window for _ in thetas), window * per_version)


def pool_moments(
    problem: Problem, variant: Variant, theta: Tensor, pool: Pool, baseline: float
) -> tuple[Tensor, float]:
    """E ĝ and tr Cov ĝ of the pooled estimate at θ (module doc), exactly."""
    n = problem.space.num_trajectories
    mixture = pool.mixture_logprobs(problem) if OBJECTIVES.spec(variant.objective).reads_mixture_logprobs else None
    rows = torch.arange(n).view(n, 1)
    # g(o) for every trajectory; θ_old = the newest version (ℓ^old of the objectives without a mixture)
    per_sequence = group_gradients(problem, variant, theta, pool.thetas[0], rows,
                                   (problem.rewards - baseline).view(n, 1), mixture_logprobs=mixture)
    mean = torch.zeros(per_sequence.shape[1], dtype=torch.float64)
    trace_cov = 0.0
    for version, share in zip(pool.thetas, pool.shares, strict=True):
        with torch.no_grad():
            p = problem.probabilities(version)
        version_mean = p @ per_sequence
        mean = mean + share * version_mean
        second = float(p @ per_sequence.pow(2).sum(dim=1))
        trace_cov += share * max(second - float(version_mean @ version_mean), 0.0) / pool.size
    return mean, trace_cov


def measure(problem: Problem, variant: Variant, theta: Tensor, pool: Pool) -> dict[str, float]:
    """The pooled estimate at θ against ∇J(θ), fixed baseline J(θ)."""
    baseline, grad = exact_gradient(problem, theta)
    mean, trace_cov = pool_moments(problem, variant, theta, pool, baseline)
    current = compare(mean, grad)
    grad_sq = max(float(grad @ grad), 1e-300)
    with torch.no_grad():  # KL(π_θ‖π_oldest): how far the window reaches back
        lp, lq = problem.sequence_logprobs(theta), problem.sequence_logprobs(pool.thetas[-1])
        kl_window = float((lp.exp() * (lp - lq)).sum())
    return {
        "kl_window": kl_window,
        "rel_err_current": current["rel_err"],
        "cos_current": current["cos"],
        "trace_cov": trace_cov,
        "noise_to_signal": trace_cov / max(float(mean @ mean), 1e-300),
        "relative_mse": (float((mean - grad).pow(2).sum()) + trace_cov) / grad_sq,
    }


def _arms(cfg: ReuseConfig) -> Iterator[tuple[str, str, int]]:
    """(arm, budget, ω): each fresh arm once, each reuse arm at every window and budget."""
    for name in cfg.algorithms:
        yield name, FRESH, 1
    for name in cfg.reuse_algorithms:
        for budget in BUDGETS:
            for window in cfg.windows:
                yield name, budget, window


def _seed_rows(problem: Problem, cfg: ReuseConfig, seed: int, tick: Callable[[], None]) -> Iterator[dict[str, Any]]:
    path: list[Tensor] = []
    train(problem, get_variant(cfg.path_algorithm), problem.policy.init(seed), cfg, seed, steps_path=path)
    variants = {name: get_variant(name) for name in (*cfg.algorithms, *cfg.reuse_algorithms)}
    for t in cfg.measure_at:
        for name, budget, window in _arms(cfg):
            per_version = cfg.group_size // window if budget == "pooled" else cfg.group_size
            pool = window_pool(path, t, window, per_version)
            yield {"arm": name, "budget": budget, "window": window, "seed": seed, "t": t,
                   "pool_size": pool.size, "new_per_step": per_version,
                   **measure(problem, variants[name], path[t], pool)}
        tick()


def compare_with_reference(rows: list[dict[str, Any]], cfg: ReuseConfig) -> list[dict[str, Any]]:
    """Per reuse arm, budget and ω > 1: the paired (per seed) mean of log(relative MSE / the reference's),
    its 95% interval, p and Holm p over all of them."""
    def per_seed(arm: str, budget: str, window: int) -> dict[int, float]:
        found: dict[int, list[float]] = {}
        for r in rows:
            if (r["arm"], r["budget"], r["window"]) == (arm, budget, window):
                found.setdefault(r["seed"], []).append(r["relative_mse"])
        return {seed: float(np.mean(v)) for seed, v in found.items()}

    reference = per_seed(cfg.reference, FRESH, 1)
    out: list[dict[str, Any]] = []
    for name, budget, window in _arms(cfg):
        if budget == FRESH or window == 1:
            continue
        arm = per_seed(name, budget, window)
        diff = paired_difference([math.log(arm[s] / reference[s]) for s in sorted(arm)], margin=0.0)
        out.append({"comparison": f"log({name}.relative_mse / {cfg.reference}.relative_mse)", "budget": budget,
                    "window": window, "mean": diff.mean, "low": diff.low, "high": diff.high,
                    "p_value": diff.p_value, "n": diff.n, "note": diff.note})
    for row, p_holm in zip(out, holm_adjust([r["p_value"] for r in out]), strict=True):
        row["p_holm"] = p_holm
    return out


def run_reuse(cfg: ReuseConfig, progress: bool = True) -> dict[str, Any]:
    """The measurements of the module doc, as a JSON-ready dict."""
    from tqdm import tqdm

    check_options(cfg)
    check_reuse(cfg)
    problem = make_problem(cfg, cfg.reward)
    with tqdm(total=len(cfg.seeds) * len(cfg.measure_at), desc="lab reuse", disable=not progress, leave=False) as bar:
        rows = [row for seed in cfg.seeds for row in _seed_rows(problem, cfg, seed, bar.update)]
    names = (*cfg.algorithms, *cfg.reuse_algorithms)
    return {
        "config": asdict(cfg),
        "problem": {"num_trajectories": problem.space.num_trajectories, "num_params": problem.policy.num_params},
        "variants": {n: {"description": get_variant(n).description, "objective": get_variant(n).objective}
                     for n in names},
        "rows": rows,
        "summary": _summarise(rows, ("arm", "budget", "window"), QUANTITIES),
        "comparisons": compare_with_reference(rows, cfg),
    }


def _cell(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.4g} [{stat['low']:.4g}, {stat['high']:.4g}]"


def _summary_table(summary: list[dict[str, Any]]) -> str:
    rows = [[e["arm"], e["budget"], e["window"], *(_cell(e[q]) for q in QUANTITIES)] for e in summary]
    return markdown_table(["arm", "budget", "ω", *QUANTITIES], rows)


def _comparison_table(comparisons: list[dict[str, Any]]) -> str:
    def p(value: float) -> str:
        return "—" if value != value else f"{value:.3g}"

    rows = [[r["comparison"], r["budget"], r["window"],
             f"×{math.exp(r['mean']):.3g} [{math.exp(r['low']):.3g}, {math.exp(r['high']):.3g}]",
             p(r["p_value"]), p(r["p_holm"]), r["note"]] for r in comparisons]
    return markdown_table(["comparison", "budget", "ω", "geometric-mean ratio [95% CI]", "p", "Holm p", "note"], rows)


def _plot(results: dict[str, Any], out_dir: Path) -> Path:
    """rel_err, noise-to-signal and relative MSE against ω: reuse arms per budget, fresh arms as lines."""
    plt = pyplot()
    summary = results["summary"]
    panels = ("rel_err_current", "noise_to_signal", "relative_mse")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.8))
    windows = sorted({e["window"] for e in summary})
    for ax, q in zip(axes, panels, strict=True):
        curves = sorted({(e["arm"], e["budget"]) for e in summary})
        for i, (arm, budget) in enumerate(curves):
            pts = sorted((e for e in summary if (e["arm"], e["budget"]) == (arm, budget)), key=lambda e: e["window"])
            color = plt.cm.tab10(i % 10)
            if budget == FRESH:  # one value: a horizontal line across the windows
                ax.plot(windows, [max(pts[0][q]["mean"], 1e-17)] * len(windows), ls="--", color=color,
                        label=f"{arm} (fresh G)")
                continue
            ax.plot([e["window"] for e in pts], [max(e[q]["mean"], 1e-17) for e in pts], marker="o", ms=3,
                    color=color, ls="-" if budget == "pooled" else ":", label=f"{arm} ({budget})")
        ax.set_yscale("log")
        ax.set_xscale("log", base=2)
        ax.set_title(q, fontsize=9)
        ax.set_xlabel("window ω (policy versions in the pool)", fontsize=8)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    path = out_dir / "reuse.png"
    fig.savefig(path, dpi=85)
    plt.close(fig)
    return path


def write_reuse_outputs(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """results.json, report.md and reuse.png under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", results)
    plot = _plot(results, out_dir)
    cfg = results["config"]
    text = [
        "# lab reuse",
        "",
        f"Problem: {cfg['policy']} policy, V={cfg['vocab']}, L={cfg['max_len']}, reward `{cfg['reward']}` "
        f"({results['problem']['num_trajectories']} trajectories, {results['problem']['num_params']} parameters). "
        f"Training path: `{cfg['path_algorithm']}`, {cfg['iterations']} iterations × μ={cfg['inner_steps']} "
        f"{cfg['optimizer']} steps at lr={cfg['lr']}, {cfg['groups']} groups × G={cfg['group_size']}; measured at "
        f"steps {list(cfg['measure_at'])}; seeds {list(cfg['seeds'])}.",
        "",
        "All exact, fixed baseline b = J(θ_t), against ∇J(θ_t). Budgets: `fresh` G new samples from θ_t; "
        "`pooled` G/ω from each of θ_t..θ_{t−ω+1} (N = G); `per_step` G from each (N = ωG, G new per step). "
        "kl_window = KL(π_θt‖π_θ{t−ω+1}); noise_to_signal = tr Cov/‖E ĝ‖²; relative_mse = (‖E ĝ − ∇J‖² + "
        "tr Cov)/‖∇J‖² of one update's estimate. Mean over seeds [95% Student-t interval] of the per-seed "
        "mean over the measurement steps.",
        "",
        _summary_table(results["summary"]),
        "",
        f"## Paired comparisons (per seed, against fresh `{cfg['reference']}`; Holm over all rows)",
        "",
        _comparison_table(results["comparisons"]),
        "",
        f"![reuse]({plot.name})",
        "",
    ]
    (out_dir / "report.md").write_text("\n".join(text))
    return [out_dir / "results.json", out_dir / "report.md", plot]


def summary_lines(results: dict[str, Any]) -> list[str]:
    """Terminal lines: relative MSE of every arm, budget and window."""
    lines = ["relative MSE vs ∇J(θ_t) (mean over seeds): arm, budget, ω"]
    for e in results["summary"]:
        lines.append(f"  {e['arm']:22s} {e['budget']:9s} ω={e['window']:<3d} {e['relative_mse']['mean']:.4g}")
    return lines


__all__ = ["ReuseConfig", "check_reuse", "measure", "pool_moments", "run_reuse", "summary_lines",
           "window_pool", "write_reuse_outputs"]
