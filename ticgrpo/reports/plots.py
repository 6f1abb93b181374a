"""`curves.png`: training reward and held-out accuracy against the step (matplotlib, Agg)."""

from __future__ import annotations

import json
from pathlib import Path


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Plot reward (mean ± std band) and eval accuracy / mean@k of a run; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "curves.png"
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    evals = read_jsonl(run_dir / "eval.jsonl")
    fig, (ax_r, ax_e) = plt.subplots(1, 2, figsize=(11, 4))
    if metrics:
        steps = [m["step"] for m in metrics]
        mean = [m.get("reward_mean", float("nan")) for m in metrics]
        std = [m.get("reward_std", 0.0) for m in metrics]
        ax_r.plot(steps, mean, label="reward mean")
        low = [a - b for a, b in zip(mean, std, strict=True)]
        high = [a + b for a, b in zip(mean, std, strict=True)]
        ax_r.fill_between(steps, low, high, alpha=0.2, label="± std")
        if len(mean) >= 5:
            w = max(len(mean) // 10, 2)
            smooth = [sum(mean[max(0, i - w + 1): i + 1]) / len(mean[max(0, i - w + 1): i + 1])
                      for i in range(len(mean))]
            ax_r.plot(steps, smooth, label=f"moving mean ({w})")
        ax_r.legend()
    ax_r.set_xlabel("step")
    ax_r.set_ylabel("training reward")
    ax_r.set_title("reward")
    if evals:
        steps = [e["step"] for e in evals]
        for key in sorted({k for e in evals for k in e if k == "accuracy" or k.startswith("mean_at_")}):
            ax_e.plot(steps, [e.get(key, float("nan")) for e in evals], marker="o", label=key)
        ax_e.legend()
    ax_e.set_xlabel("step")
    ax_e.set_ylabel("held-out")
    ax_e.set_title("held-out accuracy")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
