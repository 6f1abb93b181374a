"""`ticgrpo lab checkpoint_lag`: the noise-free products, λ, and the measured update being the trainer's."""

from __future__ import annotations

import dataclasses
import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ticgrpo.cli import main
from ticgrpo.lab.checkpoint_lag import (
    POLICY_GRADIENT,
    CheckpointLagConfig,
    Measurement,
    Products,
    bootstrap_counts,
    off_diagonal_mean,
    restrict_gradients,
    run_checkpoint_lag,
    write_checkpoint_lag_outputs,
)
from ticgrpo.train.step import TrainingBatch, accumulate_gradients

ROOT = Path(__file__).parents[1]


def test_off_diagonal_mean_is_the_mean_over_pairs_of_distinct_prompts():
    torch.manual_seed(0)
    a, b = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    counts = torch.tensor([[1, 1, 1, 1, 1], [2, 0, 1, 0, 2], [0, 3, 0, 1, 1]], dtype=torch.float64)
    got = off_diagonal_mean(a @ b.T, counts)
    for row, c in enumerate(counts):
        copies = [i for i in range(5) for _ in range(int(c[i]))]  # the resample, prompt by prompt
        pairs = [(i, j) for i, j in itertools.product(copies, copies) if i != j]  # never a prompt with itself
        expected = sum(float(a[i] @ b[j]) for i, j in pairs) / len(pairs)
        assert float(got[row]) == pytest.approx(expected, rel=1e-12)


def test_bootstrap_counts_resample_every_prompt_slot():
    counts = bootstrap_counts(6, 50, seed=3)
    assert counts.shape == (51, 6) and torch.equal(counts[0], torch.ones(6, dtype=torch.float64))
    assert torch.all(counts.sum(1) == 6) and len({tuple(r.tolist()) for r in counts[1:]}) > 40


def test_position_is_where_the_stale_expectation_lies_between_old_and_current():
    torch.manual_seed(1)
    n, d = 400, 30
    old, current = torch.randn(d), torch.randn(d)
    noise = {name: 0.5 * torch.randn(n, d) for name in ("s", "o", "c")}
    for lam in (0.0, 0.3, 1.0):
        sets = {"stale/x": old + lam * (current - old) + noise["s"], "on_old/x": old + noise["o"],
                "on_current/x": current + noise["c"]}
        products = Products(sets, bootstrap_counts(n, 300, seed=0))
        position = products.position("stale/x", "on_old/x", "on_current/x")
        low, high = torch.quantile(position[1:], torch.tensor([0.025, 0.975], dtype=torch.float64))
        assert abs(float(position[0]) - lam) < 0.05 and 0 < high - low < 0.15
        # without noise every C is the exact product of expectations
        exact = Products({"stale/x": (old + lam * (current - old)).expand(n, d), "on_old/x": old.expand(n, d),
                          "on_current/x": current.expand(n, d)}, bootstrap_counts(n, 100, seed=0))
        assert torch.allclose(exact.position("stale/x", "on_old/x", "on_current/x"),
                              torch.tensor(lam, dtype=torch.float64), atol=1e-5)
        assert float(exact.noise_to_signal("on_old/x")) == pytest.approx(0.0, abs=1e-5)


REWARD_MODULE = """
def sevens(prompts, completions, **kwargs):  # a dense reward the random tiny model earns unevenly
    return [c.count("7") / max(len(c), 1) for c in completions]
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Iterator[Path]:
    """A 3-step tiny run with a checkpoint at every step; its reward module is importable (sys.path)."""
    folder = tmp_path_factory.mktemp("checkpoint_lag")
    (folder / "lag_rewards.py").write_text(REWARD_MODULE)
    config = (ROOT / "configs" / "tiny.yaml").read_text().replace(
        "    - {name: math_correctness, weight: 1.0}\n    - {name: answer_format, weight: 0.5}\n",
        "    - {name: 'lag_rewards:sevens', weight: 1.0}\n")
    assert "lag_rewards" in config
    (folder / "tiny.yaml").write_text(config)
    result = subprocess.run(
        [sys.executable, "-m", "ticgrpo.cli", "train", "--config", str(folder / "tiny.yaml"), "--output-dir",
         str(folder / "run"), "--set", "max_steps=3", "--set", "checkpoint.every_steps=1", "--set",
         "checkpoint.keep_last=4", "--set", "eval.every_steps=0", "--set", "logging.progress_bar=false",
         "--set", "optim.lr=0.01", "--overwrite"],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{folder}"})
    assert result.returncode == 0, result.stderr[-2000:]
    sys.path.insert(0, str(folder))  # the study scores with the run's rewards, in this process
    yield folder / "run"
    sys.path.remove(str(folder))


def small(run: Path, **changes) -> CheckpointLagConfig:
    return CheckpointLagConfig(**{"run": str(run), "step": 3, "lags": (1, 3), "groups": 6, "group_size": 4,
                                  "bootstrap": 100, **changes})


def test_the_stale_update_is_the_trainers_first_lagged_step(tiny_run: Path):
    """Each stale vector is the gradient `accumulate_gradients` takes at θ_t on that group with
    π_old = π_θ(t−k) (a rollout.lag run's first optimizer step), over the top block's parameters."""
    study = Measurement(small(tiny_run))
    old_model = study.load_version(2)
    old_params = restrict_gradients(old_model, 1)
    sampled = study.sample(old_model, 2)
    stale, diagnostics = study.group_vectors(study.current, study.params_current, sampled, study.variants,
                                             study.behaviour(old_model))
    on_old, _ = study.group_vectors(old_model, old_params, sampled, [*study.variants, POLICY_GRADIENT], None)
    g = study.config.group_size
    for variant in study.variants:
        for group in (0, 4):
            rows = torch.arange(group * g, (group + 1) * g)
            part = sampled.batch.rows(rows)
            trainer_batch = TrainingBatch(**{**part.__dict__, "advantages": sampled.advantages[variant.name][rows],
                                             "old_logprobs": study.behaviour(old_model)(part),
                                             "group_ids": torch.zeros(g, dtype=torch.long)})
            settings = dataclasses.replace(study.settings, objective=variant.objective,
                                           objective_config=variant.config())
            study.current.zero_grad(set_to_none=True)
            accumulate_gradients(study.current, trainer_batch, settings)
            expected = torch.cat([p.grad.flatten() for p in study.params_current])
            assert torch.allclose(stale[variant.name][group], expected, rtol=1e-5, atol=1e-7)
    # on-policy, grpo and no_is are one estimator (ratio 1, group_norm, 1/|o|): the same vectors
    assert torch.allclose(on_old["grpo"], on_old["no_is"], rtol=1e-5, atol=1e-8)
    assert not torch.allclose(on_old["grpo"], stale["grpo"])  # the checkpoints differ
    assert torch.cat(diagnostics["log_ratio"]).abs().max() > 0


def test_the_study_runs_writes_and_rebuilds_its_report(tiny_run: Path, tmp_path: Path):
    results = run_checkpoint_lag(small(tiny_run), progress=False)
    assert set(results["lags"]) == {"1", "3"} and results["dimension"] > 0
    for lag in results["lags"].values():
        assert set(lag["variants"]) == {"grpo", "tic_grpo", "no_is"}
        assert set(lag["position_differences"]) == {"tic_grpo − grpo", "no_is − grpo"}
        ratio = lag["ratios"]
        assert ratio["trajectory_log_ratio_min"] <= ratio["trajectory_log_ratio_max"]
        assert 0 < ratio["trajectory_ratio_ess"] <= 1
    files = write_checkpoint_lag_outputs(results, tmp_path / "a")
    assert [f.name for f in files] == ["results.json", "report.md", "position.png"]
    report = (tmp_path / "a" / "report.md").read_text()
    for lag in ("1", "3"):  # a row per lag in the λ table, a row per lag and objective in the error table
        assert f"\n| {lag} | " in report
        for name in ("grpo", "tic_grpo", "no_is"):
            assert f"| {lag} | {name} |" in report
    # the committed folders' byte-for-byte rebuild is tests/test_committed_reports.py


@pytest.mark.parametrize(("flags", "message"), [
    ([], "--run is required"),
    (["--run", "{missing}"], "no config.yaml there"),
    (["--run", "{run}", "--step", "3", "--lags", "4"], "--lags 4 > --step 3"),
    (["--run", "{run}", "--step", "3", "--lags", "1", "--objectives", "nope"], "nope"),
    (["--run", "{run}", "--step", "3", "--lags", "1", "--objectives", "dapo"], "trainer mechanisms"),
    (["--run", "{run}", "--step", "3", "--lags", "1", "--groups", "1"], "--groups must be >= 3"),
    (["--run", "{run}", "--step", "3", "--lags", "1", "--top-layers", "99"], "--top-layers 99 >"),
])
def test_bad_flags_are_one_line_usage_errors(flags, message, tiny_run: Path, tmp_path: Path, capsys):
    flags = [f.format(run=tiny_run, missing=tmp_path / "nowhere") for f in flags]
    code = main(["lab", "checkpoint_lag", *flags, "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_run_without_the_needed_checkpoints_says_how_to_make_them(tiny_run: Path, tmp_path: Path, capsys):
    thin = tmp_path / "thin"
    (thin / "checkpoints").mkdir(parents=True)
    (thin / "config.yaml").write_text((tiny_run / "config.yaml").read_text())
    code = main(["lab", "checkpoint_lag", "--run", str(thin), "--step", "3", "--lags", "1",
                 "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no checkpoint for step(s) 2, 3" in err and "checkpoint.every_steps=1" in err
