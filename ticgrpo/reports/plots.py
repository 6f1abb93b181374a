"""Plots: `curves.png` of one training run, and one PNG per quantity of a comparison report
(mean over seeds with a 95% t-interval band). matplotlib on the Agg backend, imported on use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ticgrpo.reports.io import read_jsonl
from ticgrpo.reports.runs import RunData, group
from ticgrpo.reports.summary import aggregate, smoothing_window


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Plot reward (mean ± std band) and eval accuracy / mean@k of a run; for a run trained on
    stale samples (some staleness above 0, or off-policy correction weights) a panel with the
    staleness and the weights' effective sample size; for multi-turn episodes a panel with tool
    use and turns. Returns the PNG path."""
    plt = pyplot()
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "curves.png"
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    evals = read_jsonl(run_dir / "eval.jsonl")
    extra: list[Any] = []
    if has_offpolicy_metrics(metrics):
        extra.append(lambda axis: _offpolicy_panel(axis, metrics))
    if any("episode/turns_mean" in m for m in metrics):
        extra.append(lambda axis: _episode_panel(axis, metrics, evals))
    fig, axs = plt.subplots(1, 2 + len(extra), figsize=(5.5 * (2 + len(extra)), 4), squeeze=False)
    _reward_panel(axs[0][0], metrics)
    _heldout_panel(axs[0][1], evals)
    for axis, draw in zip(axs[0][2:], extra, strict=True):
        draw(axis)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def has_offpolicy_metrics(metrics: list[dict]) -> bool:
    """A run that trained on stale rows or weighted its samples: every run logs staleness (0 for
    the on-policy loop, whose panel would be a flat line), so the panel needs a staleness above 0
    or an ESS."""
    return any(m.get("staleness_max", 0.0) > 0 or "offpolicy/ess" in m for m in metrics)


def _reward_panel(axis: Any, metrics: list[dict]) -> None:
    if metrics:
        steps = [m["step"] for m in metrics]
        mean = [m.get("reward_mean", float("nan")) for m in metrics]
        std = [m.get("reward_std", 0.0) for m in metrics]
        axis.plot(steps, mean, label="reward mean")
        low = [a - b for a, b in zip(mean, std, strict=True)]
        high = [a + b for a, b in zip(mean, std, strict=True)]
        axis.fill_between(steps, low, high, alpha=0.2, label="± std")
        if len(mean) >= 5:
            w = max(len(mean) // 10, 2)
            smooth = [sum(mean[max(0, i - w + 1): i + 1]) / len(mean[max(0, i - w + 1): i + 1])
                      for i in range(len(mean))]
            axis.plot(steps, smooth, label=f"moving mean ({w})")
        axis.legend()
    axis.set_xlabel("step")
    axis.set_ylabel("training reward")
    axis.set_title("reward")


AT_K_PREFIXES = ("pass@", "maj@", "avg@", "mean_at_")  # mean_at_k: eval.jsonl of runs before eval.ks


def _heldout_panel(axis: Any, evals: list[dict]) -> None:
    if evals:
        steps = [e["step"] for e in evals]
        for key in sorted({k for e in evals for k in e if k == "accuracy" or k.startswith(AT_K_PREFIXES)}):
            axis.plot(steps, [e.get(key, float("nan")) for e in evals], marker="o", label=key)
        if any("constant_baseline" in e for e in evals):  # what always giving the most common answer scores
            axis.plot(steps, [e.get("constant_baseline", float("nan")) for e in evals], ":", color="gray",
                      label="constant baseline")
        axis.legend()
    axis.set_xlabel("step")
    axis.set_ylabel("held-out")
    axis.set_title("held-out accuracy")


def _offpolicy_panel(axis: Any, metrics: list[dict]) -> None:
    """Staleness (policy versions, left axis) and the correction weights' ESS (in (0, 1], right axis)."""
    steps = [m["step"] for m in metrics]
    lines = []
    for key, style in (("staleness_mean", "-"), ("staleness_max", "--")):
        if any(key in m for m in metrics):
            lines += axis.plot(steps, [m.get(key, float("nan")) for m in metrics], style, label=key)
    axis.set_xlabel("step")
    axis.set_ylabel("staleness (policy versions)")
    axis.set_title("stale samples")
    if any("offpolicy/ess" in m for m in metrics):
        ess_axis = axis.twinx()
        lines += ess_axis.plot(steps, [m.get("offpolicy/ess", float("nan")) for m in metrics], ":", color="C3",
                               label="offpolicy/ess")
        ess_axis.set_ylim(0.0, 1.05)
        ess_axis.set_ylabel("effective sample size")
    if lines:
        axis.legend(lines, [line.get_label() for line in lines])


def _episode_panel(axis: Any, metrics: list[dict], evals: list[dict]) -> None:
    """Tool use per episode (training rollouts as lines, held-out greedy episodes as markers; left
    axis) and agent turns per episode (right axis)."""
    steps = [m["step"] for m in metrics]
    lines = []
    for key, style in (("episode/tool_call_rate", "-"), ("episode/tool_errors_mean", "--")):
        lines += axis.plot(steps, [m.get(key, float("nan")) for m in metrics], style, label=key)
    if any("tool_call_rate" in e for e in evals):
        lines += axis.plot([e["step"] for e in evals], [e.get("tool_call_rate", float("nan")) for e in evals], "o",
                           color="C0", label="held-out tool_call_rate")
    axis.set_xlabel("step")
    axis.set_ylabel("per episode")
    axis.set_title("episodes")
    turns_axis = axis.twinx()
    lines += turns_axis.plot(steps, [m.get("episode/turns_mean", float("nan")) for m in metrics], ":", color="C3",
                             label="episode/turns_mean")
    turns_axis.set_ylabel("agent turns")
    axis.legend(lines, [line.get_label() for line in lines])


AXES = {"step": "training step", "samples": "completions generated", "time": "training wall time (s)"}


@dataclass
class FigureSpec:
    name: str  # file name stem
    title: str
    source: str  # "metrics" | "evals"
    keys: tuple[str, ...]  # one panel per key (× axes)
    axes: tuple[str, ...] = ("step",)
    smooth: bool = True
    bounds: tuple[float, float] | None = None  # the quantity's range: the interval band is clipped to it


FIGURES = (
    FigureSpec("reward", "training reward (batch mean)", "metrics", ("reward_mean",), ("step", "samples", "time")),
    FigureSpec("accuracy", "held-out accuracy (greedy)", "evals", ("accuracy",), ("step", "samples", "time"), False,
               (0.0, 1.0)),
    FigureSpec("kl", "KL to the reference policy", "metrics", ("kl",)),
    FigureSpec("clip_frac", "clip fractions", "metrics", ("clip_frac_high", "clip_frac_low"), bounds=(0.0, 1.0)),
    FigureSpec("log_w", "trajectory log-ratio log w = log P_θ(o|q)/P_old(o|q)", "metrics",
               ("log_w_mean", "log_w_min", "log_w_max")),
    FigureSpec("ratio", "token ratio ρ = π_θ/π_old", "metrics", ("ratio_mean", "ratio_min", "ratio_max")),
    FigureSpec("completion_length", "completion length (tokens)", "metrics", ("completion_length_mean",)),
    FigureSpec("entropy", "policy entropy (nats/token)", "metrics", ("entropy",)),
)


def _clipped(values: list[float], bounds: tuple[float, float] | None) -> list[float]:
    return values if bounds is None else [min(max(v, bounds[0]), bounds[1]) for v in values]


def _draw_panel(axis: Any, spec: FigureSpec, key: str, x_name: str, groups: dict[str, list[RunData]],
                colors: dict[str, Any], smooth: int) -> None:
    """One key against one x axis: each algorithm's seed-mean curve and its interval band."""
    def series(run: RunData) -> dict[int, float]:
        return run.series(spec.source, key, smooth)

    for name, color in colors.items():
        runs = [r for r in groups[name] if r.series(spec.source, key)]
        if not runs:
            continue
        curve = aggregate(runs, series)
        xs = curve.x[x_name]
        marker = "o" if spec.source == "evals" and len(xs) <= 30 else None
        axis.plot(xs, curve.mean, color=color, marker=marker, markersize=4, label=f"{name} (n={len(runs)})")
        if max(curve.n) > 1:
            axis.fill_between(xs, _clipped(curve.low, spec.bounds), _clipped(curve.high, spec.bounds), color=color,
                              alpha=0.15, linewidth=0)
    axis.set_xlabel(AXES[x_name])
    axis.set_ylabel(key)
    axis.grid(alpha=0.3)
    axis.set_title(key if len(spec.axes) == 1 else f"{key} vs {x_name}", fontsize=10)


def plot_figures(runs: list[RunData], plots_dir: Path, order: list[str]) -> list[tuple[FigureSpec, Path]]:
    """One PNG per entry of FIGURES that any complete run logged; returns (figure, path) pairs."""
    plt = pyplot()
    plots_dir.mkdir(parents=True, exist_ok=True)
    groups = group([r for r in runs if r.complete])
    colors = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(n for n in order if n in groups)}
    window = smoothing_window([r for rs in groups.values() for r in rs])
    written = []
    for spec in FIGURES:
        keys = [k for k in spec.keys if any(r.series(spec.source, k) for rs in groups.values() for r in rs)]
        if not keys:
            continue
        panels = [(k, ax) for k in keys for ax in spec.axes]
        fig, axs = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
        smooth = window if spec.smooth else 1
        for axis, (key, x_name) in zip(axs[0], panels, strict=True):
            _draw_panel(axis, spec, key, x_name, groups, colors, smooth)
        axs[0][0].legend(fontsize=8)
        note = f"; moving average over {smooth} steps" if smooth > 1 else ""
        if spec.bounds is not None:
            note += f"; band clipped to [{spec.bounds[0]:g}, {spec.bounds[1]:g}]"
        fig.suptitle(f"{spec.title}: mean over seeds, band = 95% t-interval{note}", fontsize=11)
        fig.tight_layout()
        path = plots_dir / f"{spec.name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append((spec, path))
    return written


__all__ = ["AXES", "FIGURES", "FigureSpec", "plot_curves", "plot_figures", "pyplot"]
