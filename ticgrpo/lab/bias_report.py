"""The outputs of `ticgrpo lab bias`: results.json, report.md, the three plots and terminal lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ticgrpo.reports.io import write_json
from ticgrpo.reports.markdown import markdown_table
from ticgrpo.reports.plots import pyplot


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


__all__ = ["summary_lines", "write_bias_outputs"]
