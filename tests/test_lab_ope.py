"""`ticgrpo lab ope`: IS, self-normalised IS and policy-convolution estimates of J against loops and Monte Carlo."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from ticgrpo.cli import main
from ticgrpo.lab.converge import make_problem
from ticgrpo.lab.ope import (
    OPEConfig,
    convolution_kernel,
    estimator_moments,
    linear_moments,
    snis_monte_carlo,
    trajectory_embedding,
)
from ticgrpo.lab.paths import training_path

TINY = {"vocab": 3, "max_len": 3, "group_size": 4, "groups": 2, "iterations": 4, "measure_at": (4,), "seeds": (0,)}


def _setting(policy: str = "tabular", **overrides):
    cfg = OPEConfig(policy=policy, **{**TINY, **overrides})
    problem = make_problem(cfg, "target")
    path = training_path(problem, cfg, 0)
    return cfg, problem, path[-1], path[0]  # θ = θ_4, θ_old = θ_0: four steps stale


def test_embedding_distance_counts_differing_positions() -> None:
    _, problem, _, _ = _setting()
    space = problem.space
    e = trajectory_embedding(space)
    for i, j in itertools.product(range(space.num_trajectories), repeat=2):
        expected = 0
        for t in range(space.max_len):
            here, there = t < int(space.lengths[i]), t < int(space.lengths[j])
            if here and there:
                expected += 2 * int(space.tokens[i, t] != space.tokens[j, t])
            else:
                expected += int(here != there)
        assert float((e[i] - e[j]).pow(2).sum()) == expected


def test_kernel_is_row_stochastic_and_narrows_to_the_identity() -> None:
    _, problem, theta, theta_old = _setting()
    kernel = convolution_kernel(problem.space, 0.7)
    assert torch.allclose(kernel.sum(dim=1), torch.ones(kernel.shape[0], dtype=torch.float64), rtol=1e-12)
    narrow = convolution_kernel(problem.space, 0.05)
    assert torch.allclose(narrow, torch.eye(kernel.shape[0], dtype=torch.float64), atol=1e-30)
    cfg = OPEConfig(**TINY, mc_batches=10)
    moments = estimator_moments(problem, {0.05: narrow}, theta, theta_old, cfg, torch.Generator())
    rows = {r["estimator"]: r for r in moments}
    for side in ("target", "both"):  # h → 0: both convolution estimators are IS
        assert rows[f"conv_{side}_0.05"]["mse"] == pytest.approx(rows["is"]["mse"], rel=1e-12)


@pytest.mark.parametrize("policy", ["tabular", "neural"])
def test_exact_moments_match_a_loop_and_is_is_unbiased(policy: str) -> None:
    cfg, problem, theta, theta_old = _setting(policy)
    kernel = convolution_kernel(problem.space, 0.7)
    moments = estimator_moments(problem, {0.7: kernel}, theta, theta_old, cfg, torch.Generator())
    rows = {r["estimator"]: r for r in moments}
    p, p_old, rewards = problem.probabilities(theta), problem.probabilities(theta_old), problem.rewards
    n, N = cfg.batch_size, problem.space.num_trajectories
    target = sum(float(p[o] * rewards[o]) for o in range(N))
    smoothed = [sum(float(p[a] * kernel[a, o]) for a in range(N)) for o in range(N)]
    smoothed_old = [sum(float(p_old[a] * kernel[a, o]) for a in range(N)) for o in range(N)]
    coefficients = {
        "is": [float(p[o] / p_old[o]) for o in range(N)],
        "conv_target_0.7": [smoothed[o] / float(p_old[o]) for o in range(N)],
        "conv_both_0.7": [smoothed[o] / smoothed_old[o] for o in range(N)],
    }
    for name, c in coefficients.items():
        mean = sum(float(p_old[o]) * c[o] * float(rewards[o]) for o in range(N))
        second = sum(float(p_old[o]) * (c[o] * float(rewards[o])) ** 2 for o in range(N))
        assert rows[name]["bias"] == pytest.approx(mean - target, abs=1e-13), name
        assert rows[name]["variance"] == pytest.approx((second - mean**2) / n, rel=1e-10), name
        assert rows[name]["mse"] == pytest.approx((mean - target) ** 2 + (second - mean**2) / n, rel=1e-10), name
    assert abs(rows["is"]["bias"]) < 1e-14 and rows["is"]["exact"]  # IS is unbiased, exactly
    assert abs(rows["conv_target_0.7"]["bias"]) > 1e-4  # the smoothing's bias is real


def test_is_variance_matches_monte_carlo() -> None:
    _, problem, theta, theta_old = _setting()
    p, p_old = problem.probabilities(theta), problem.probabilities(theta_old)
    mean, variance = linear_moments(p_old, p / p_old, problem.rewards, 8)
    gen = torch.Generator().manual_seed(3)
    idx = torch.multinomial(p_old, 50_000 * 8, replacement=True, generator=gen).view(50_000, 8)
    estimates = ((p / p_old)[idx] * problem.rewards[idx]).mean(dim=1)
    assert float(estimates.mean()) == pytest.approx(mean, abs=4 * math.sqrt(variance / 50_000))
    assert float(estimates.var()) == pytest.approx(variance, rel=0.03)


def test_snis_monte_carlo_agrees_with_its_exact_value_for_two_samples() -> None:
    _, problem, theta, theta_old = _setting()
    p, p_old, r = problem.probabilities(theta), problem.probabilities(theta_old), problem.rewards
    w = p / p_old
    first = second = 0.0  # every ordered pair (o_1, o_2) of a batch of n = 2
    for i, j in itertools.product(range(problem.space.num_trajectories), repeat=2):
        value = float((w[i] * r[i] + w[j] * r[j]) / (w[i] + w[j]))
        first += float(p_old[i] * p_old[j]) * value
        second += float(p_old[i] * p_old[j]) * value**2
    exact_var = second - first**2
    mc = snis_monte_carlo(p_old, w, r, 2, 200_000, torch.Generator().manual_seed(1))
    assert abs(mc["mean"] - first) < 4 * mc["mean_se"]
    assert abs(mc["variance"] - exact_var) < 4 * mc["variance_se"]
    assert abs(first - float(p @ r)) > 4 * mc["mean_se"]  # SNIS at n = 2 is measurably biased here


def test_on_policy_snis_is_the_sample_mean() -> None:
    _, problem, theta, _ = _setting()
    p = problem.probabilities(theta)
    mc = snis_monte_carlo(p, torch.ones_like(p), problem.rewards, 8, 20_000, torch.Generator().manual_seed(2))
    _, variance = linear_moments(p, torch.ones_like(p), problem.rewards, 8)
    assert abs(mc["mean"] - float(p @ problem.rewards)) < 4 * mc["mean_se"]
    assert abs(mc["variance"] - variance) < 4 * mc["variance_se"]


def test_cli_runs_a_tiny_study_and_writes_its_files(tmp_path, capsys) -> None:
    out = tmp_path / "ope"
    rc = main(["lab", "ope", "--vocab", "3", "--max-len", "3", "--iterations", "4", "--measure-at", "4",
               "--seeds", "0,1", "--lags", "0,2,4", "--bandwidths", "0.5,1", "--mc-batches", "200",
               "--no-progress", "--out", str(out)])  # fmt: skip
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    names = {"is", "snis", "conv_target_0.5", "conv_both_0.5", "conv_target_1", "conv_both_1"}
    assert {(e["reward"], e["k"], e["estimator"]) for e in results["summary"]} == {
        (r, k, n) for r in ("target", "first") for k in (0, 2, 4) for n in names
    }
    zero_lag = [r for r in results["rows"] if r["k"] == 0]
    assert all(r["kl_old_theta"] == 0.0 for r in zero_lag)
    assert all(abs(r["bias"]) < 1e-12 for r in zero_lag if r["estimator"].startswith("conv_both"))  # π̃/π̃ = 1
    assert (out / "report.md").read_text().startswith("# lab ope")
    assert (out / "ope_lag.png").stat().st_size > 0 and (out / "ope_bandwidth.png").stat().st_size > 0
    assert "lag 4: MSE is" in capsys.readouterr().out
