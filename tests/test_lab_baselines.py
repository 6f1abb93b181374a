"""lab baselines: the exact moments of each baseline against brute-force enumeration of every
ordered group, leave-one-out's unbiasedness, the natural step, training and the CLI."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from ticgrpo.cli import main
from ticgrpo.core.advantages import DEFAULT_DELTA
from ticgrpo.lab.baseline_moments import (
    BASELINES,
    enumerated_moments,
    exact_moments,
    group_estimates,
    sampled_advantages,
    score_table,
)
from ticgrpo.lab.baselines import BaselinesConfig, natural_preconditioner, run_baselines, train_curve, variance_row
from ticgrpo.lab.converge import make_problem
from ticgrpo.lab.estimators import exact_gradient, sample_groups
from ticgrpo.lab.options import SpaceConfig


def tiny_problem(policy: str = "tabular", vocab: int = 2, max_len: int = 2):
    return make_problem(SpaceConfig(policy, vocab, max_len, 2, 1.0), "target")


def loop_advantages(name: str, rewards: list[float], value: float) -> list[float]:
    """Each baseline written out sample by sample (independent of the package's estimators)."""
    g = len(rewards)
    mean = sum(rewards) / g
    if name == "none":
        return list(rewards)
    if name == "value":
        return [r - value for r in rewards]
    if name == "rloo":
        return [r - (sum(rewards) - r) / (g - 1) for r in rewards]
    if name == "mean":
        return [r - mean for r in rewards]
    std = (sum((r - mean) ** 2 for r in rewards) / (g - 1)) ** 0.5
    return [(r - mean) / (std + DEFAULT_DELTA) for r in rewards]


def brute_force(problem, theta, name: str, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """E ĝ and Cov ĝ over all N^G ordered groups, with per-trajectory scores by autograd one at a time."""
    n = problem.space.num_trajectories
    scores = []
    for o in range(n):
        th = theta.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(problem.sequence_logprobs(th)[o], th)
        scores.append(grad)
    with torch.no_grad():
        p = problem.probabilities(theta).tolist()
    value = sum(pi * float(r) for pi, r in zip(p, problem.rewards, strict=True))
    d = theta.numel()
    first, second = torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64)
    for group in itertools.product(range(n), repeat=group_size):
        weight = 1.0
        for o in group:
            weight *= p[o]
        adv = loop_advantages(name, [float(problem.rewards[o]) for o in group], value)
        estimate = sum(scores[o] * a for o, a in zip(group, adv, strict=True)) / group_size
        first += weight * estimate
        second += weight * torch.outer(estimate, estimate)
    return first, second - torch.outer(first, first)


@pytest.mark.parametrize("policy", ["tabular", "neural"])
@pytest.mark.parametrize("group_size", [2, 3])
@pytest.mark.parametrize("name", list(BASELINES))
def test_exact_moments_match_brute_force_enumeration(policy: str, group_size: int, name: str) -> None:
    problem = tiny_problem(policy)
    theta = problem.policy.init(3)
    table = score_table(problem, theta)
    mean, cov = brute_force(problem, theta, name, group_size)
    for moments in (exact_moments(problem, table, BASELINES[name], group_size),
                    enumerated_moments(problem, table, BASELINES[name], group_size)):  # fmt: skip
        assert torch.allclose(moments.mean, mean, atol=1e-13, rtol=1e-10)
        assert torch.allclose(moments.cov, cov, atol=1e-13, rtol=1e-10)


@pytest.mark.parametrize("group_size", [2, 3, 5, 8])
def test_leave_one_out_and_value_are_unbiased_exactly(group_size: int) -> None:
    problem = tiny_problem("neural", vocab=3, max_len=3)
    theta = problem.policy.init(1)
    table = score_table(problem, theta)
    _, grad = exact_gradient(problem, theta)
    for name in ("none", "rloo", "value"):
        moments = exact_moments(problem, table, BASELINES[name], group_size)
        assert (moments.mean - grad).abs().max() < 1e-13 * max(1.0, float(grad.abs().max()))
    # the group-count enumeration (no closed form used) says the same for leave-one-out
    enumerated = enumerated_moments(problem, table, BASELINES["rloo"], min(group_size, 3))
    assert (enumerated.mean - grad).abs().max() < 1e-12


def test_value_baseline_has_the_least_variance_of_the_unbiased_ones() -> None:
    problem = tiny_problem("tabular", vocab=3, max_len=3)
    table = score_table(problem, problem.policy.init(0))
    traces = {n: exact_moments(problem, table, BASELINES[n], 4).trace_cov for n in ("none", "rloo", "value")}
    assert traces["value"] < traces["rloo"] and traces["value"] < traces["none"]


def test_natural_preconditioner_inverts_the_damped_fisher() -> None:
    problem = tiny_problem("tabular", vocab=3, max_len=2)
    table = score_table(problem, problem.policy.init(0))
    fisher = table.fisher()
    # F = E[s sᵀ], by a loop over trajectories
    loop = sum(float(p) * torch.outer(s, s) for p, s in zip(table.probabilities, table.scores, strict=True))
    assert torch.allclose(fisher, loop, atol=1e-14)
    inverse = natural_preconditioner(table, 1e-2)
    eye = torch.eye(fisher.shape[0], dtype=torch.float64)
    assert torch.allclose(inverse @ (fisher + 1e-2 * eye), eye, atol=1e-9)


def test_training_is_reproducible_and_tracks_exact_j() -> None:
    problem = tiny_problem("tabular", vocab=3, max_len=2)
    cfg = BaselinesConfig(vocab=3, max_len=2, iterations=20, seeds=(0,))
    first = train_curve(problem, "value", "npg", cfg, 0)
    assert first == train_curve(problem, "value", "npg", cfg, 0)
    with torch.no_grad():
        j0 = float(problem.probabilities(problem.policy.init(0)) @ problem.rewards)
    assert first["J"][0] == pytest.approx(j0, abs=1e-15) and len(first["J"]) == 21


def test_natural_pg_without_baseline_commits_more_than_with_the_value() -> None:
    cfg = BaselinesConfig(vocab=3, max_len=2, iterations=60, seeds=tuple(range(6)), baselines=("none", "value"))
    results = run_baselines(cfg, progress=False)
    committed = {(e["method"], e["baseline"]): e["committed_suboptimal"] for e in results["summary"]["training"]}
    assert committed[("npg", "none")] > committed[("npg", "value")]


def test_cli_runs_a_tiny_study_and_writes_its_files(tmp_path, capsys) -> None:
    out = tmp_path / "baselines"
    rc = main(["lab", "baselines", "--seeds", "0,1", "--iterations", "4", "--max-len", "2", "--no-progress",
               "--out", str(out)])  # fmt: skip
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert {(e["method"], e["baseline"]) for e in results["summary"]["training"]} == {
        (m, b) for m in ("pg", "npg") for b in ("none", "mean", "rloo", "value")
    }
    assert all(len(e["curve"]) == 5 for e in results["summary"]["training"])
    assert (out / "report.md").read_text().startswith("# lab baselines")
    assert (out / "curves.png").stat().st_size > 0 and (out / "variance.png").stat().st_size > 0
    assert "npg  value" in capsys.readouterr().out


def test_training_records_the_exact_variances_at_the_final_theta() -> None:
    problem = tiny_problem("tabular", vocab=3, max_len=2)
    cfg = BaselinesConfig(vocab=3, max_len=2, iterations=3, seeds=(0,))
    run = train_curve(problem, "rloo", "pg", cfg, 0)
    theta = problem.policy.init(0)  # replay the three plain steps with the same sampler
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        table = score_table(problem, theta)
        idx = sample_groups(problem, theta, cfg.groups, cfg.group_size, gen)
        adv = sampled_advantages(problem, BASELINES["rloo"], idx, table.value)
        theta = theta + cfg.pg_lr * group_estimates(table, adv, idx).mean(0)
    final = variance_row(problem, score_table(problem, theta), "rloo", cfg)
    assert run["final_trace_cov"] == pytest.approx(final["trace_cov"], rel=1e-12)
    assert run["final_natural_trace_cov"] == pytest.approx(final["natural_trace_cov"], rel=1e-12)
