"""`ticgrpo lab lag`: what each estimator estimates when its samples are k policy versions stale.

The paper's claims 1 and 3 are about E[ĝ] as θ moves away from the sampling policy θ_old. Here
θ moves the way training moves it:

* **Lag k.** Each arm trains on its own path (`converge.train`, exact J, the arm's own update);
  θ_s is the iterate after s optimizer steps. At steps t of `measure_at` and lag k ∈ `lags`,
  θ_old = θ_{t−k} (θ_0 when t < k) and θ = θ_t: the estimator of an asynchronous trainer whose
  samples are k versions stale.
* **μ inner steps.** At the same θ_t, one rollout batch from π_θt and μ − 1 inner steps of the
  arm's own update on it (a fresh optimizer, as `lab bias` does): θ_old = θ_t, θ = the (μ−1)-th
  inner iterate — where the μ-th inner step's gradient is taken.
* **Length sweep.** For each max length L ∈ `sweep_lengths`, θ = θ_old + s·u with u a fixed random
  direction and s chosen (bisection) so that the mean per-token divergence
  KL(π_old‖π_θ)/E_old|o| equals `target_token_kl`: the sequence divergence then grows with L at a
  fixed per-token one — the reviewers' setting for the trajectory ratio's variance.

Every quantity is exact (enumeration, float64) with the fixed baseline b = J(θ_old):
E[ĝ] and tr Cov of one group's ĝ (`estimators.exact_moments`), compared with ∇J(θ) and ∇J(θ_old)
(relative error, cosine), the noise-to-signal tr Cov/‖E ĝ‖², and the relative MSE of one group's
estimate for ∇J(θ), (‖E ĝ − ∇J(θ)‖² + tr Cov)/‖∇J(θ)‖² (and of a batch of `groups` groups, tr Cov/groups).
In the sweep θ_old's EOS logit is shifted by `sweep_eos_shift` so that completions do reach L
(otherwise a random policy stops after a few tokens whatever L is). The fixed baseline makes the arms'
advantages one (their group_norm / length_corrected estimators are not modelled here; `lab bias`
measures those by Monte Carlo at θ = θ_old). Over seeds (each seed its own θ_init, sampler and
sweep direction): the mean and 95% Student-t interval of the per-seed value (averaged over
`measure_at`).
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

from ticgrpo.lab.converge import ConvergeConfig, inner_loop, make_optimizer, make_problem, train
from ticgrpo.lab.estimators import (
    Problem,
    check_exact_moments,
    compare,
    exact_gradient,
    exact_moments,
    group_advantages,
    kl_divergence,
    sample_groups,
)
from ticgrpo.lab.options import SpaceConfig, check_options, option
from ticgrpo.lab.variants import Variant, get_variant
from ticgrpo.reports.io import write_json
from ticgrpo.reports.markdown import markdown_table
from ticgrpo.reports.plots import pyplot
from ticgrpo.reports.stats import holm_adjust, paired_difference, t_interval

DEFAULT_ALGORITHMS = ("grpo", "grpo_tokensum", "no_is", "no_is_tokensum", "tic_ratio_only", "tic_grpo")
# the quantities summarised over seeds, in report order
QUANTITIES = (
    "kl_old_theta",
    "rel_err_current",
    "cos_current",
    "rel_err_old",
    "cos_old",
    "noise_to_signal",
    "relative_mse_current",
    "relative_mse_batch",
)
_LOG_FLOOR = 1e-17  # where the plots draw values ≤ 0 on a log axis
_SWEEP_SEED_OFFSET = 10_000  # the sweep direction's generator: apart from θ_init's seeds


@dataclass
class LagConfig(ConvergeConfig):
    algorithms: tuple[str, ...] = option(DEFAULT_ALGORITHMS, "algorithms (ALGORITHMS names or registered objectives)")
    seeds: tuple[int, ...] = option((0, 1, 2, 3, 4), "seeds: θ_init, sampler and sweep direction")
    iterations: int = option(40, "outer iterations of each arm's training path", minimum=1)
    inner_steps: int = option(1, "μ of the training path (1: every optimizer step is a new policy version)", minimum=1)
    lags: tuple[int, ...] = option((0, 1, 2, 4, 8), "lags k: samples from θ_{t−k}", minimum=0)
    measure_at: tuple[int, ...] = option((10, 20, 30, 40), "optimizer steps t at which to measure", minimum=0)
    mus: tuple[int, ...] = option((1, 2, 4, 8), "inner steps μ (θ after μ−1 inner steps on one batch)", minimum=1)
    sweep_lengths: tuple[int, ...] = option((2, 4, 6, 8, 10), "max lengths L of the length sweep", minimum=1)
    sweep_vocab: int = option(3, "vocabulary size V of the length sweep", minimum=2)
    sweep_eos_shift: float = option(
        -3.0, "added to θ_old's EOS logit in the sweep, so that completions run to the max length"
    )
    target_token_kl: float = option(0.05, "mean per-token KL(π_old‖π_θ) of the length sweep", above=0)


def check_lag(cfg: LagConfig) -> None:
    """ValueError (one line) for settings the study cannot run."""
    total = cfg.iterations * cfg.inner_steps
    late = [t for t in cfg.measure_at if t > total]
    if late:
        raise ValueError(
            f"measure_at {late} is past the path's last step ({cfg.iterations}·{cfg.inner_steps} = {total})"
        )
    for name in cfg.algorithms:
        check_exact_moments(get_variant(name))


def measure(
    problem: Problem, variant: Variant, theta: Tensor, theta_old: Tensor, group_size: int, groups: int
) -> dict[str, float]:
    """E ĝ(θ) from samples of π_old (fixed baseline J(θ_old)) against ∇J(θ) and ∇J(θ_old), exactly;
    the relative MSE for one group and for a batch of `groups` independent groups."""
    j_old, grad_old = exact_gradient(problem, theta_old)
    _, grad_current = exact_gradient(problem, theta)
    moments = exact_moments(problem, variant, theta, theta_old, j_old, group_size)
    current, old = compare(moments.mean, grad_current), compare(moments.mean, grad_old)
    signal = float(moments.mean @ moments.mean)
    squared_bias = float((moments.mean - grad_current).pow(2).sum())
    grad_sq = max(float(grad_current @ grad_current), 1e-300)
    return {
        "kl_old_theta": kl_divergence(problem, theta_old, theta),
        "rel_err_current": current["rel_err"],
        "cos_current": current["cos"],
        "rel_err_old": old["rel_err"],
        "cos_old": old["cos"],
        "norm_ratio_current": current["norm_ratio"],
        "trace_cov": moments.trace_cov,
        "noise_to_signal": moments.trace_cov / max(signal, 1e-300),
        "relative_mse_current": (squared_bias + moments.trace_cov) / grad_sq,
        "relative_mse_batch": (squared_bias + moments.trace_cov / groups) / grad_sq,
        "cos_grad_current_old": compare(grad_current, grad_old)["cos"],
    }


def _inner_iterates(problem: Problem, variant: Variant, theta_old: Tensor, cfg: LagConfig, seed: int) -> list[Tensor]:
    """θ_old and the arm's inner iterates on one batch from π_old (fresh optimizer): max(μ) tensors."""
    gen = torch.Generator().manual_seed(seed)
    idx = sample_groups(problem, theta_old, cfg.groups, cfg.group_size, gen)
    adv = group_advantages(problem, idx, variant.advantage_name, options=variant.advantage_options)
    param = theta_old.clone().requires_grad_(True)
    optimizer = make_optimizer(cfg.optimizer, param, cfg.lr)
    return inner_loop(problem, variant, param, optimizer, idx, adv, max(cfg.mus) - 1)


def _path_rows(
    problem: Problem, variant: Variant, cfg: LagConfig, seed: int, tick: Callable[[], None]
) -> Iterator[dict[str, Any]]:
    """Every lag and μ measurement of one arm's training path of one seed."""
    path: list[Tensor] = []
    train(problem, variant, problem.policy.init(seed), cfg, seed, steps_path=path)
    for t in cfg.measure_at:
        base = {"variant": variant.name, "seed": seed, "t": t}
        for k in cfg.lags:
            yield {
                **base,
                "study": "lag",
                "k": k,
                **measure(problem, variant, path[t], path[max(t - k, 0)], cfg.group_size, cfg.groups),
            }
        inner = _inner_iterates(problem, variant, path[t], cfg, seed * 100_003 + t)
        for mu in cfg.mus:
            yield {
                **base,
                "study": "mu",
                "k": mu,
                **measure(problem, variant, inner[mu - 1], path[t], cfg.group_size, cfg.groups),
            }
        tick()


def perturbation_at_token_kl(
    problem: Problem, theta_old: Tensor, direction: Tensor, target: float, iterations: int = 60
) -> tuple[Tensor, float]:
    """θ = θ_old + s·direction with KL(π_old‖π_θ)/E_old|o| = `target` (bisection on s ≥ 0).

    Returns θ and the per-token KL reached. The per-token KL is the sequence KL over the mean
    length: by the chain rule KL(π_old‖π_θ) = E_old Σ_t KL_t, the sum of the per-position KLs.
    """
    with torch.no_grad():
        mean_len = float((problem.probabilities(theta_old) * problem.lengths).sum())

    def token_kl(scale: float) -> float:
        return kl_divergence(problem, theta_old, theta_old + scale * direction) / mean_len

    high = 1.0
    while token_kl(high) < target:
        high *= 2.0
        if high > 1e6:
            raise ValueError(f"per-token KL {target} is out of reach along this direction")
    low = 0.0
    for _ in range(iterations):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if token_kl(mid) < target else (low, mid)
    scale = 0.5 * (low + high)
    return theta_old + scale * direction, token_kl(scale)


def _sweep_rows(cfg: LagConfig, variants: list[Variant], tick: Callable[[], None]) -> Iterator[dict[str, Any]]:
    """Every arm at a fixed per-token KL, for each max length L and seed."""
    for length in cfg.sweep_lengths:
        space_cfg = SpaceConfig(cfg.policy, cfg.sweep_vocab, length, cfg.group_size, cfg.init_scale)
        problem = make_problem(space_cfg, cfg.reward)
        for seed in cfg.seeds:
            theta_old = problem.policy.shift_eos_logit(problem.policy.init(seed), cfg.sweep_eos_shift)
            gen = torch.Generator().manual_seed(_SWEEP_SEED_OFFSET + seed)
            direction = torch.randn(theta_old.numel(), generator=gen, dtype=torch.float64)
            theta, token_kl = perturbation_at_token_kl(problem, theta_old, direction, cfg.target_token_kl)
            with torch.no_grad():
                log_ratio = problem.sequence_logprobs(theta) - problem.sequence_logprobs(theta_old)
                p_old = problem.probabilities(theta_old)
            base = {
                "L": length,
                "seed": seed,
                "token_kl": token_kl,
                "mean_length_old": float((p_old * problem.lengths).sum()),
                # E_old[ρ²] − 1 = χ²(π_θ‖π_old): the variance of the trajectory ratio itself
                "trajectory_ratio_variance": float((p_old * (2 * log_ratio).exp()).sum()) - 1.0,
            }
            for variant in variants:
                yield {
                    **base,
                    "variant": variant.name,
                    **measure(problem, variant, theta, theta_old, cfg.group_size, cfg.groups),
                }
            tick()


def _summarise(rows: list[dict[str, Any]], keys: tuple[str, ...], quantities: tuple[str, ...]) -> list[dict[str, Any]]:
    """Per combination of `keys`: each quantity's mean over seeds (of the per-seed mean over the
    other rows) with its 95% Student-t interval."""
    groups: dict[tuple[Any, ...], dict[int, list[dict[str, Any]]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), {}).setdefault(row["seed"], []).append(row)
    out = []
    for group, per_seed in groups.items():
        entry: dict[str, Any] = dict(zip(keys, group, strict=True))
        entry["num_seeds"] = len(per_seed)
        for q in quantities:
            mean, low, high = t_interval([float(np.mean([r[q] for r in seed_rows])) for seed_rows in per_seed.values()])
            entry[q] = {"mean": mean, "low": low, "high": high}
        out.append(entry)
    return out


SWEEP_QUANTITIES = (
    "mean_length_old",
    "token_kl",
    "trajectory_ratio_variance",
    "rel_err_current",
    "cos_current",
    "noise_to_signal",
    "relative_mse_current",
    "relative_mse_batch",
)


@dataclass(frozen=True)
class Comparison:
    """A pre-declared paired difference, per seed: `quantity` of arm `first` − `quantity_second` of
    arm `second` (the same arm for a within-arm contrast), at every lag / μ / L of `study`.

    `log_ratio`: the difference of the logs, for positive scale quantities (noise-to-signal, MSE)
    whose size varies by orders of magnitude between seeds; exp of its mean is the geometric-mean ratio.
    """

    study: str  # "lag", "mu" or "sweep"
    first: str
    second: str
    quantity: str
    quantity_second: str | None = None  # None: the same quantity
    log_ratio: bool = False

    @property
    def name(self) -> str:
        other = self.quantity_second or self.quantity
        if self.log_ratio:
            return f"{self.study}: log({self.first}.{self.quantity} / {self.second}.{other})"
        return f"{self.study}: {self.first}.{self.quantity} − {self.second}.{other}"

    def contrast(self, first: float, second: float) -> float:
        return float(np.log(first / second)) if self.log_ratio else first - second


COMPARISONS = (
    # claim 1: is the token ratio (no clip, no 1/|o|) nearer the current gradient than the old one?
    Comparison("lag", "grpo_tokensum", "grpo_tokensum", "rel_err_current", "rel_err_old"),
    Comparison("mu", "grpo_tokensum", "grpo_tokensum", "rel_err_current", "rel_err_old"),
    # claim 3 and the reviewers: the trajectory ratio's noise, and its MSE once the token ratio's bias counts
    Comparison("lag", "tic_ratio_only", "grpo_tokensum", "noise_to_signal", log_ratio=True),
    Comparison("lag", "tic_ratio_only", "grpo_tokensum", "relative_mse_batch", log_ratio=True),
    Comparison("sweep", "tic_ratio_only", "grpo_tokensum", "noise_to_signal", log_ratio=True),
    Comparison("sweep", "tic_ratio_only", "grpo_tokensum", "relative_mse_batch", log_ratio=True),
)


def _per_seed(rows: list[dict[str, Any]], arm: str, level_key: str, quantity: str) -> dict[tuple[Any, int], float]:
    """(level, seed) → the mean of `quantity` over that arm's rows (the measurement steps)."""
    found: dict[tuple[Any, int], list[float]] = {}
    for r in rows:
        if r["variant"] == arm:
            found.setdefault((r[level_key], r["seed"]), []).append(r[quantity])
    return {key: float(np.mean(values)) for key, values in found.items()}


def compare_arms(study_rows: dict[str, list[dict[str, Any]]], arms: tuple[str, ...]) -> list[dict[str, Any]]:
    """Every `COMPARISONS` entry whose arms were run, at each level: the paired mean difference over
    seeds, its 95% interval, the two-sided t-test p and the Holm-adjusted p over all of them."""
    out = []
    for comparison in COMPARISONS:
        if comparison.first not in arms or comparison.second not in arms:
            continue
        level_key = "L" if comparison.study == "sweep" else "k"
        rows = study_rows[comparison.study]
        first = _per_seed(rows, comparison.first, level_key, comparison.quantity)
        second = _per_seed(rows, comparison.second, level_key, comparison.quantity_second or comparison.quantity)
        for level in sorted({lv for lv, _ in first}):
            seeds = sorted(seed for lv, seed in first if lv == level)
            contrasts = [comparison.contrast(first[(level, s)], second[(level, s)]) for s in seeds]
            diff = paired_difference(contrasts, margin=0.0)  # no equivalence claim: margin unused
            out.append(
                {"comparison": comparison.name, "study": comparison.study, "log_ratio": comparison.log_ratio,
                 level_key: level, "mean": diff.mean,
                 "low": diff.low, "high": diff.high, "p_value": diff.p_value, "n": diff.n, "note": diff.note}
            )  # fmt: skip
    for row, p_holm in zip(out, holm_adjust([r["p_value"] for r in out]), strict=True):
        row["p_holm"] = p_holm
    return out


def run_lag(cfg: LagConfig, progress: bool = True) -> dict[str, Any]:
    """The lag, μ and length-sweep measurements of the module doc, as a JSON-ready dict."""
    from tqdm import tqdm

    check_options(cfg)
    check_lag(cfg)
    variants = [get_variant(a) for a in cfg.algorithms]
    problem = make_problem(cfg, cfg.reward)
    total = len(variants) * len(cfg.seeds) * len(cfg.measure_at) + len(cfg.sweep_lengths) * len(cfg.seeds)
    with tqdm(total=total, desc="lab lag", disable=not progress, leave=False) as bar:
        path_rows = [
            row for v in variants for seed in cfg.seeds for row in _path_rows(problem, v, cfg, seed, bar.update)
        ]
        sweep_rows = list(_sweep_rows(cfg, variants, bar.update))
    study_rows = {
        "lag": [r for r in path_rows if r["study"] == "lag"],
        "mu": [r for r in path_rows if r["study"] == "mu"],
        "sweep": sweep_rows,
    }
    return {
        "config": asdict(cfg),
        "problem": {
            "num_trajectories": problem.space.num_trajectories,
            "num_params": problem.policy.num_params,
        },
        "variants": {v.name: {"description": v.description, "objective": v.objective} for v in variants},
        "rows": path_rows,
        "sweep_rows": sweep_rows,
        "summary": {
            "lag": _summarise(study_rows["lag"], ("variant", "k"), QUANTITIES),
            "mu": _summarise(study_rows["mu"], ("variant", "k"), QUANTITIES),
            "sweep": _summarise(sweep_rows, ("variant", "L"), SWEEP_QUANTITIES),
        },
        "comparisons": compare_arms(study_rows, tuple(cfg.algorithms)),
    }


def _cell(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.4g} [{stat['low']:.4g}, {stat['high']:.4g}]"


def _table(entries: list[dict[str, Any]], key: str, quantities: tuple[str, ...]) -> str:
    rows = [[e["variant"], e[key], *(_cell(e[q]) for q in quantities)] for e in entries]
    return markdown_table(["variant", key, *quantities], rows)


def _comparison_table(rows: list[dict[str, Any]]) -> str:
    def p(value: float) -> str:
        return "—" if value != value else f"{value:.3g}"  # nan: zero variance (identical estimators)

    def ratio(r: dict[str, Any]) -> str:
        if not r["log_ratio"]:
            return ""
        return f"×{np.exp(r['mean']):.3g} [{np.exp(r['low']):.3g}, {np.exp(r['high']):.3g}]"

    table = [
        [r["comparison"], r.get("k", r.get("L")), f"{r['mean']:+.4g} [{r['low']:+.4g}, {r['high']:+.4g}]",
         ratio(r), p(r["p_value"]), p(r["p_holm"]), r["note"]]
        for r in rows
    ]  # fmt: skip
    headers = ["comparison", "k / μ / L", "mean Δ [95% CI]", "geometric-mean ratio", "p", "Holm p", "note"]
    return markdown_table(headers, table)


def _plot(results: dict[str, Any], out_dir: Path) -> list[Path]:
    plt = pyplot()
    variants = list(results["variants"])
    files = []
    panels = {
        "lag_bias.png": (
            ("lag", "k", "lag k (samples from θ_{t−k})"),
            ("rel_err_current", "cos_current", "rel_err_old", "noise_to_signal"),
        ),
        "length_sweep.png": (
            ("sweep", "L", f"max length L (per-token KL {results['config']['target_token_kl']})"),
            ("trajectory_ratio_variance", "noise_to_signal", "relative_mse_batch", "rel_err_current"),
        ),
    }
    for fname, ((study, key, xlabel), quantities) in panels.items():
        fig, axes = plt.subplots(1, len(quantities), figsize=(4.2 * len(quantities), 3.8))
        for ax, q in zip(axes, quantities, strict=True):
            logy = q not in ("cos_current", "cos_old")
            for i, v in enumerate(variants):
                pts = sorted((e for e in results["summary"][study] if e["variant"] == v), key=lambda e: e[key])
                x = [e[key] for e in pts]
                # log axes: a lower interval end ≤ 0 (few seeds, skewed values) is drawn at mean/10
                band = [[max(e[q][end], e[q]["mean"] / 10, _LOG_FLOOR) if logy else e[q][end] for e in pts]
                        for end in ("low", "high")]  # fmt: skip
                color = plt.cm.tab10(i % 10)
                ax.plot(x, [max(e[q]["mean"], _LOG_FLOOR) if logy else e[q]["mean"] for e in pts], marker="o", ms=3,
                        color=color, label=v)  # fmt: skip
                ax.fill_between(x, band[0], band[1], alpha=0.15, color=color)
            if logy:
                ax.set_yscale("log")
            ax.set_title(q, fontsize=9)
            ax.set_xlabel(xlabel, fontsize=8)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / fname, dpi=85)
        plt.close(fig)
        files.append(out_dir / fname)
    return files


def _growth_rate_line(sweep: list[dict[str, Any]]) -> str:
    """log(1 + χ²)/E_old|o| per L, from the means: the per-token rate at which the trajectory
    ratio's variance grows (exponential growth in the length makes it constant in L). χ² and
    E_old|o| depend on the problem only, so the first arm's rows give them."""
    first = sweep[0]["variant"]
    rates = [f"L={r['L']}: {math.log1p(r['trajectory_ratio_variance']['mean']) / r['mean_length_old']['mean']:.3f}"
             for r in sweep if r["variant"] == first]
    return "log(1 + χ²)/E_old|o| of the means (the per-token growth rate of 1 + χ²): " + ", ".join(rates) + "."


def write_lag_outputs(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """results.json, report.md, lag_bias.png and length_sweep.png under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", results)
    plots = _plot(results, out_dir)
    cfg, summary = results["config"], results["summary"]
    text = [
        "# lab lag",
        "",
        f"Problem: {cfg['policy']} policy, V={cfg['vocab']}, L={cfg['max_len']}, reward `{cfg['reward']}` "
        f"({results['problem']['num_trajectories']} trajectories, {results['problem']['num_params']} parameters). "
        f"Each arm's training path: {cfg['iterations']} iterations × μ={cfg['inner_steps']} {cfg['optimizer']} "
        f"steps at lr={cfg['lr']}, {cfg['groups']} groups × G={cfg['group_size']}; measured at steps "
        f"{list(cfg['measure_at'])}; seeds {list(cfg['seeds'])}.",
        "",
        "All exact, fixed baseline b = J(θ_old). rel_err/cos_current: E ĝ against ∇J(θ); *_old: against "
        "∇J(θ_old); noise_to_signal = tr Cov(one group's ĝ)/‖E ĝ‖²; relative_mse_current = "
        "(‖E ĝ − ∇J(θ)‖² + tr Cov)/‖∇J(θ)‖² (one group), relative_mse_batch the same with tr Cov/"
        f"{cfg['groups']} (a batch of {cfg['groups']} groups). Mean over seeds [95% Student-t interval] of "
        "the per-seed mean over the measurement steps.",
        "",
        "## Lag k: samples from θ_{t−k}, estimator at θ_t",
        "",
        _table(summary["lag"], "k", QUANTITIES),
        "",
        "## μ inner steps: θ after μ−1 inner steps on one batch from θ_old = θ_t (fresh optimizer)",
        "",
        _table(summary["mu"], "k", QUANTITIES),
        "",
        f"## Length sweep at per-token KL {cfg['target_token_kl']} (V={cfg['sweep_vocab']}, random θ_old and "
        "direction per seed)",
        "",
        "trajectory_ratio_variance = Var_old[π_θ(o)/π_old(o)] = χ²(π_θ‖π_old).",
        "",
        _table(summary["sweep"], "L", SWEEP_QUANTITIES),
        "",
        _growth_rate_line(summary["sweep"]),
        "",
        "## Pre-declared paired comparisons (per seed; Holm over all rows)",
        "",
        _comparison_table(results["comparisons"]),
        "",
        "Plots: mean over seeds with its 95% interval; on log axes a lower end ≤ 0 is drawn at mean/10.",
        "",
        *(f"![{p.stem}]({p.name})" for p in plots),
        "",
    ]
    (out_dir / "report.md").write_text("\n".join(text))
    return [out_dir / "results.json", out_dir / "report.md", *plots]


def summary_lines(results: dict[str, Any]) -> list[str]:
    """Terminal lines: per arm, at the largest lag, cosine with ∇J(θ_t) and ∇J(θ_old), noise-to-signal."""
    k_max = max(e["k"] for e in results["summary"]["lag"])
    lines = [f"lag k={k_max}: cos vs ∇J(θ_t) / vs ∇J(θ_old), noise-to-signal per group"]
    for e in results["summary"]["lag"]:
        if e["k"] == k_max:
            lines.append(
                f"  {e['variant']:16s} {e['cos_current']['mean']:.4f} / {e['cos_old']['mean']:.4f}   "
                f"{e['noise_to_signal']['mean']:.4g}"
            )
    return lines


__all__ = [
    "COMPARISONS",
    "DEFAULT_ALGORITHMS",
    "Comparison",
    "LagConfig",
    "check_lag",
    "compare_arms",
    "measure",
    "perturbation_at_token_kl",
    "run_lag",
    "summary_lines",
    "write_lag_outputs",
]
