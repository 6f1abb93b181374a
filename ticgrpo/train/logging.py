"""Run outputs: metrics.jsonl, eval.jsonl, samples.jsonl, evals/step-NNNN/, optional TensorBoard / W&B, and a
tqdm progress bar."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ticgrpo.eval.files import write_eval_files
from ticgrpo.rewards.scoring import ScoredRollout

logger = logging.getLogger(__name__)

LOG_FILES = ("metrics.jsonl", "eval.jsonl", "samples.jsonl")
EVALS_FOLDER = "evals"  # evals/step-NNNN/{eval.json,samples.jsonl}: one folder per held-out evaluation
PROGRESS_KEYS = (("reward_mean", "reward"), ("completion_length_mean", "len"), ("loss", "loss"))


class NullLogger:
    """What processes other than rank 0 log through: nothing (rank 0 writes the job's files)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class RunLogger:
    def __init__(
        self,
        run_dir: str | Path,
        total_steps: int,
        start_step: int = 0,
        progress_bar: bool = True,
        tensorboard: bool = False,
        wandb: bool = False,
        wandb_project: str = "ticgrpo",
        config: dict | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.last_eval: dict[str, float] = {}
        self.lines = {name: _count_lines(self.run_dir / name) for name in LOG_FILES}  # complete records
        self._tb = _tensorboard(self.run_dir) if tensorboard else None
        self._wandb = _wandb(wandb_project, self.run_dir, config) if wandb else None
        self._bar = None
        if progress_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True)

    def truncate_after(self, step: int) -> None:
        """On resume from a checkpoint that predates line counts: drop records logged after `step`."""
        self._rewrite(lambda name, lines: [line for line in lines if _step_of(line) <= step])

    def truncate_to(self, lines: dict[str, int]) -> None:
        """On resume: keep the first `lines[name]` records of each log, the ones that were written when
        the checkpoint was saved (later ones belong to the interrupted run, which is redone)."""
        self._rewrite(lambda name, records: records[: lines.get(name, 0)])

    def sync(self) -> dict[str, int]:
        """fsync every log (a checkpoint saved next must never be ahead of them); their line counts."""
        for name in LOG_FILES:
            path = self.run_dir / name
            if path.is_file():
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        return dict(self.lines)

    def _rewrite(self, keep: Any) -> None:
        for name in LOG_FILES:
            path = self.run_dir / name
            if not path.is_file():
                continue
            text = path.read_text()
            # a last line without its newline is torn (killed mid-write): never a record
            complete = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]
            kept = keep(name, complete)
            if kept != text.splitlines():
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text("".join(line + "\n" for line in kept))
                tmp.replace(path)  # atomic: a crash here leaves the old or the new file, never half of one
            self.lines[name] = len(kept)

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        self._append("metrics.jsonl", {"step": step, **metrics})
        self._scalars("train", step, metrics)
        if self._bar is not None:
            shown = {short: f"{metrics[key]:.3g}" for key, short in PROGRESS_KEYS if key in metrics}
            if "accuracy" in self.last_eval:
                shown["acc"] = f"{self.last_eval['accuracy']:.3f}"
            self._bar.set_postfix(shown, refresh=False)
            self._bar.update(1)

    def log_eval(self, step: int, metrics: dict[str, float], summary: dict | None = None,
                 records: Sequence[Any] | None = None) -> None:
        """One eval.jsonl line; with `summary`, also evals/step-NNNN/eval.json (intervals, baseline,
        answer distributions) and, with `records`, that folder's samples.jsonl (every completion).
        A resumed run redoes the evaluations after its checkpoint: it rewrites their folders."""
        self.last_eval = dict(metrics)
        self._append("eval.jsonl", {"step": step, **metrics})
        if summary is not None:
            write_eval_files(self.run_dir / EVALS_FOLDER / f"step-{step:04d}", {"step": step, **summary}, records)
        self._scalars("eval", step, metrics)
        if self._bar is not None:
            self._bar.write(f"eval step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        for sample in samples:
            self._append("samples.jsonl", {"step": step, **sample})

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()

    def _append(self, name: str, record: dict) -> None:
        with open(self.run_dir / name, "a") as f:
            f.write(json.dumps(record, default=_jsonable) + "\n")
        self.lines[name] += 1

    def _scalars(self, prefix: str, step: int, metrics: dict[str, Any]) -> None:
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        if self._tb is not None:
            for key, value in numeric.items():
                self._tb.add_scalar(f"{prefix}/{key}", value, step)
        if self._wandb is not None:
            self._wandb.log({f"{prefix}/{k}": v for k, v in numeric.items()}, step=step)


def _count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def _step_of(line: str) -> float:
    """The step of a jsonl record; a torn (partially written) or malformed line counts as infinitely
    late, so `truncate_after` drops it."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


def _jsonable(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.warning("logging.tensorboard is on but tensorboard is not installed; skipping it")
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def _wandb(project: str, run_dir: Path, config: dict | None) -> Any:
    try:
        import wandb
    except ImportError:
        logger.warning("logging.wandb is on but wandb is not installed; skipping it")
        return None
    return wandb.init(project=project, dir=str(run_dir), config=config or {})


def step_metrics(scored: ScoredRollout, adv: Any, lengths: torch.Tensor) -> dict[str, float]:
    r = scored.rewards
    a = adv.advantages.flatten()
    out = {
        "reward_mean": float(r.mean()),
        "reward_std": float(r.std()) if r.numel() > 1 else 0.0,
        "advantage_mean": float(a.mean()),
        "advantage_std": float(a.std()) if a.numel() > 1 else 0.0,
        "frac_zero_std": float(adv.frac_zero_std),
        "completion_length_mean": float(lengths.mean()),
        "completion_length_max": float(lengths.max()),
        "truncated_frac": float(scored.rollout.truncated.float().mean()),
        "num_sequences": float(r.numel()),
    }
    for name, values in scored.per_function.items():
        v = torch.tensor(values, dtype=torch.float32)
        out[f"reward/{name}_mean"] = float(v.mean())
        out[f"reward/{name}_std"] = float(v.std()) if v.numel() > 1 else 0.0
    if scored.rollout.episodes is not None:
        from ticgrpo.rollout.episodes import episode_metrics

        out.update(episode_metrics(scored.rollout.episodes))
    return out


def samples(scored: ScoredRollout, n: int) -> list[dict]:
    """Up to n (prompt, completion, reward) records, one per prompt group first; an episode's
    record also holds its turns ("episode": transcript, turns, tool calls, end)."""
    g, groups = scored.num_samples, len(scored.rows)
    idx = [(i % groups) * g + (i // groups) % g for i in range(min(n, len(scored.rewards)))]
    episodes = scored.rollout.episodes
    return [{"prompt": scored.rows[k // g]["prompt"], "completion": scored.rollout.completions[k],
             "reward": float(scored.rewards[k]), **({} if episodes is None else {"episode": episodes[k].to_json()})}
            for k in idx]
