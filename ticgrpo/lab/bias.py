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
from pathlib import Path
from typing import Any

import torch

from ticgrpo.lab.converge import inner_loop, make_optimizer
from ticgrpo.lab.enumerate import enumerate_trajectories
from ticgrpo.lab.estimators import (
    FIXED,
    Problem,
    compare,
    exact_gradient,
    expected_gradient_exact,
    get_variant,
    group_advantages,
    kl_divergence,
    monte_carlo_gradient,
    sample_groups,
)
from ticgrpo.lab.policies import make_policy
from ticgrpo.lab.report import markdown_table, pyplot, write_json
from ticgrpo.lab.rewards import make_rewards

DEFAULT_OBJECTIVES = (
    "grpo",
    "grpo_noclip",
    "grpo_tokensum",
    "no_is",
    "no_is_tokensum",
    "tic_grpo_ratio",
    "tic_grpo_lc",
    "tic_grpo",
)


def all_objectives() -> tuple[str, ...]:
    """Every registered objective the lab can run (all but the group-coupled `gtpo`, see
    `estimators.UNSUPPORTED`), each with its defaults: what `--objectives all` expands to."""
    from ticgrpo.core.objectives import OBJECTIVES
    from ticgrpo.lab.estimators import UNSUPPORTED

    first = ("grpo", "no_is", "tic_grpo")
    rest = [n for n in OBJECTIVES.names() if n not in first and n not in UNSUPPORTED]
    return first + tuple(rest)


def expand_objectives(names: tuple[str, ...]) -> tuple[str, ...]:
    """`names` with `all` replaced by `all_objectives()`, duplicates dropped (first kept)."""
    out: list[str] = []
    for name in names:
        for n in all_objectives() if name == "all" else (name,):
            if n not in out:
                out.append(n)
    return tuple(out)


@dataclass
class BiasConfig:
    policy: str = "tabular"
    vocab: int = 4
    max_len: int = 5
    reward: str = "target"
    group_size: int = 8
    steps: tuple[int, ...] = (0, 1, 2, 4, 8, 16)
    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES
    mc_groups: int = 2000
    seed: int = 0
    lr: float = 0.05
    rollout_groups: int = 4
    init_scale: float = 1.0


def run_bias(cfg: BiasConfig, progress: bool = True) -> dict[str, Any]:
    """All measurements of the module doc, as a JSON-ready dict."""
    from tqdm import tqdm

    if any(k < 0 for k in cfg.steps):
        raise ValueError(f"inner steps must be >= 0, got {cfg.steps}")
    variants = [get_variant(o) for o in cfg.objectives]
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
    adv = group_advantages(problem, idx, mover.advantage_name)
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
    variant: Any,
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
    exact = expected_gradient_exact(problem, variant, theta, theta_old, baseline)
    out.append({**base, "estimate": "fixed (exact)", **_metrics(exact, grad_k, grad_old)})
    # check directions: the exact E[ĝ] and 5 random unit vectors
    dirs = torch.randn(6, exact.numel(), generator=gen, dtype=torch.float64)
    dirs[0] = exact
    dirs = dirs / dirs.norm(dim=1, keepdim=True).clamp(min=1e-300)
    for advantage in (FIXED, variant.advantage_name):
        mc = monte_carlo_gradient(
            problem, variant, theta, theta_old, cfg.mc_groups, cfg.group_size, advantage, gen, baseline, dirs
        )
        row = {**base, "estimate": f"{advantage} (MC)", **_metrics(mc.mean, grad_k, grad_old)}
        row["trace_cov"] = mc.trace_cov
        row["noise_floor_current"] = float(mc.stderr.norm() / grad_k.norm())
        row["noise_floor_old"] = float(mc.stderr.norm() / grad_old.norm())
        if advantage == FIXED and mc.projection_mean is not None and mc.projection_stderr is not None:
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


def write_bias_outputs(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """results.json, report.md and three PNG plots under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", results)
    plots = _plots(results, out_dir)
    cfg, prob = results["config"], results["problem"]
    path_rows = [
        [p["k"], p["kl_old_theta"], p["param_dist"], p["J"], p["grad_norm"], p["cos_grad_old"]] for p in results["path"]
    ]
    main_rows = [
        [
            r["variant"],
            r["estimate"],
            r["k"],
            r["kl_old_theta"],
            r["rel_err_current"],
            r["rel_err_old"],
            r["cos_current"],
            r["cos_old"],
            r["norm_ratio_current"],
            r.get("noise_floor_current", 0.0),
            r.get("trace_cov", float("nan")),
        ]
        for r in results["rows"]
    ]
    checks = [r for r in results["rows"] if "max_abs_z_vs_exact" in r]
    worst = max(checks, key=lambda r: r["max_abs_z_vs_exact"]) if checks else None
    text = [
        "# lab bias",
        "",
        f"Problem: {cfg['policy']} policy, V={cfg['vocab']}, L={cfg['max_len']}, reward `{cfg['reward']}`: "
        f"{prob['num_trajectories']} trajectories, {prob['num_params']} parameters; J(θ_old) = "
        f"{prob['J_old']:.4f}, E_old|o| = {prob['mean_length_old']:.3f}. Groups of G={cfg['group_size']}; "
        f"Monte Carlo over {cfg['mc_groups']} groups; fixed baseline b = J(θ_old). θ_k = after k Adam "
        f"steps (lr={cfg['lr']}) of grpo on one rollout batch of {cfg['rollout_groups']} groups.",
        "",
        "## The path θ_k",
        "",
        markdown_table(["k", "KL(old‖θ)", "‖θ−θ_old‖", "J(θ)", "‖∇J(θ)‖", "cos(∇J(θ), ∇J(θ_old))"], path_rows),
        "",
        "## Estimators",
        "",
        "rel err = ‖E ĝ − ∇J‖/‖∇J‖ against the current (θ_k) and old (θ_old) gradient; noise = "
        "√ΣSE²/‖∇J(θ_k)‖, the relative error sampling noise alone gives an MC row; tr Cov is per group.",
        "",
        markdown_table(
            [
                "variant",
                "estimate",
                "k",
                "KL",
                "rel err cur",
                "rel err old",
                "cos cur",
                "cos old",
                "‖Eĝ‖/‖∇J‖",
                "noise",
                "tr Cov",
            ],
            main_rows,
        ),
        "",
    ]
    if worst is not None:
        text += [
            f"MC vs exact (fixed baseline): z = (MC − exact)/SE of the projections of ĝ on the exact "
            f"E ĝ and 5 random unit directions; largest |z| over all {len(checks)} rows × 6 "
            f"directions = {worst['max_abs_z_vs_exact']:.2f} ({worst['variant']}, k={worst['k']}).",
            "",
        ]
    text += [f"![{p.stem}]({p.name})" for p in plots] + [""]
    (out_dir / "report.md").write_text("\n".join(text))
    return [out_dir / "results.json", out_dir / "report.md", *plots]


def _plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    plt = pyplot()
    rows = results["rows"]
    variants = list(results["variants"])
    colors = {v: plt.cm.tab10(i % 10) for i, v in enumerate(variants)}
    files = []
    panels = [
        ("bias_rel_error.png", ("rel_err_current", "rel_err_old"), "relative error", True),
        ("bias_cosine.png", ("cos_current", "cos_old"), "cosine", False),
    ]
    for fname, keys, ylabel, logy in panels:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
        for ax, key in zip(axes, keys, strict=True):
            for v in variants:
                for est, style in (("fixed (exact)", "-"), (f"{results['variants'][v]['advantage']} (MC)", ":")):
                    pts = [r for r in rows if r["variant"] == v and r["estimate"] == est]
                    if not pts:
                        continue
                    x = [r["kl_old_theta"] for r in pts]
                    y = [max(r[key], 1e-17) if logy else r[key] for r in pts]
                    ax.plot(x, y, style, marker="o", ms=3, color=colors[v], label=f"{v} [{est}]")
            target = "∇J(θ)" if key.endswith("current") else "∇J(θ_old)"
            ax.set_title(f"E ĝ(θ) vs {target}", fontsize=10)
            ax.set_xlabel("KL(π_old ‖ π_θ)")
            if logy:
                ax.set_yscale("log")
        axes[0].set_ylabel(ylabel)
        axes[1].legend(fontsize=6, loc="best")
        fig.tight_layout()
        fig.savefig(out_dir / fname, dpi=85)
        plt.close(fig)
        files.append(out_dir / fname)

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for v in variants:
        for est, style in (("fixed (MC)", "-"), (f"{results['variants'][v]['advantage']} (MC)", ":")):
            pts = [r for r in rows if r["variant"] == v and r["estimate"] == est]
            if pts:
                ax.plot(
                    [r["kl_old_theta"] for r in pts],
                    [r["trace_cov"] for r in pts],
                    style,
                    marker="o",
                    ms=3,
                    color=colors[v],
                    label=f"{v} [{est}]",
                )
    ax.set_yscale("log")
    ax.set_xlabel("KL(π_old ‖ π_θ)")
    ax.set_ylabel("tr Cov(ĝ) per group")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out_dir / "bias_variance.png", dpi=85)
    plt.close(fig)
    files.append(out_dir / "bias_variance.png")
    return files


def summary_lines(results: dict[str, Any]) -> list[str]:
    """A few lines for the terminal: per variant, rel err vs current/old at the largest k."""
    k_max = max(p["k"] for p in results["path"])
    kl = next(p["kl_old_theta"] for p in results["path"] if p["k"] == k_max)
    lines = [f"at k={k_max} (KL={kl:.3g}): rel err vs ∇J(θ) / vs ∇J(θ_old)"]
    for r in results["rows"]:
        if r["k"] == k_max and r["estimate"] != "fixed (MC)":
            lines.append(
                f"  {r['variant']:16s} {r['estimate']:24s} {r['rel_err_current']:.3e} / {r['rel_err_old']:.3e}"
            )
    return lines


__all__ = [
    "DEFAULT_OBJECTIVES",
    "BiasConfig",
    "all_objectives",
    "expand_objectives",
    "run_bias",
    "summary_lines",
    "write_bias_outputs",
]
