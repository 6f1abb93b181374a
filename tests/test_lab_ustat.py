"""lab ustat: leave-one-out as a U-statistic (Hoeffding terms against brute force), the including-self
mean's exact bias −∇J/G, the Monte Carlo check, the per-budget choice of G and the CLI."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from ticgrpo.cli import main
from ticgrpo.lab.baseline_moments import BASELINES, exact_moments, num_groups, sampled_moments, score_table
from ticgrpo.lab.converge import make_problem
from ticgrpo.lab.estimators import exact_gradient
from ticgrpo.lab.options import SpaceConfig
from ticgrpo.lab.ustat import UstatConfig, run_ustat


def tiny_problem(policy: str = "tabular", vocab: int = 2, max_len: int = 3):
    return make_problem(SpaceConfig(policy, vocab, max_len, 2, 1.0), "target")


def test_pair_kernel_covariance_is_cov_h_by_a_double_loop() -> None:
    """ζ_2 = Cov h(X, Y), h(a, b) = ½ (s_a − s_b)(r_a − r_b), written as a loop over all pairs."""
    problem = tiny_problem("neural")
    table = score_table(problem, problem.policy.init(2))
    p, s, r = table.probabilities, table.scores, problem.rewards
    n = p.numel()
    second = sum(p[a] * p[b] * torch.outer(0.5 * (s[a] - s[b]) * (r[a] - r[b]), 0.5 * (s[a] - s[b]) * (r[a] - r[b]))
                 for a, b in itertools.product(range(n), repeat=2))  # fmt: skip
    mean = sum(p[a] * p[b] * 0.5 * (s[a] - s[b]) * (r[a] - r[b]) for a, b in itertools.product(range(n), repeat=2))
    _, grad = exact_gradient(problem, problem.policy.init(2))
    assert torch.allclose(mean, grad, atol=1e-14)  # E h = ∇J: the kernel is unbiased
    assert torch.allclose(table.pair_kernel_covariance(), second - torch.outer(mean, mean), atol=1e-14)


@pytest.mark.parametrize("group_size", [2, 3, 4])
def test_leave_one_out_variance_is_the_hoeffding_formula_by_brute_force(group_size: int) -> None:
    """tr Cov ĝ_rloo over all N^G ordered groups = ((G−2) tr Σ_J + 2 tr ζ_2)/(G(G−1))."""
    problem = tiny_problem("tabular")
    table = score_table(problem, problem.policy.init(5))
    p, s, r = table.probabilities.tolist(), table.scores, problem.rewards.tolist()
    n, g = len(p), group_size
    first, squares = torch.zeros(s.shape[1], dtype=torch.float64), 0.0
    for group in itertools.product(range(n), repeat=g):
        weight = float(torch.tensor([p[o] for o in group], dtype=torch.float64).prod())
        estimate = sum(s[o] * (r[o] - (sum(r[x] for x in group) - r[o]) / (g - 1)) for o in group) / g
        first += weight * estimate
        squares += weight * float(estimate @ estimate)
    brute = squares - float(first @ first)
    sigma = float(torch.trace(table.term_covariance(table.value)))
    zeta2 = float(torch.trace(table.pair_kernel_covariance()))
    assert brute == pytest.approx(((g - 2) * sigma + 2 * zeta2) / (g * (g - 1)), rel=1e-12)
    # and the excess over the oracle is (2ζ_2 − Σ_J)/(G(G−1)) ≥ 0
    assert brute - sigma / g == pytest.approx((2 * zeta2 - sigma) / (g * (g - 1)), rel=1e-9, abs=1e-15)
    assert 2 * zeta2 >= sigma


@pytest.mark.parametrize("group_size", [2, 3, 4, 8, 32])
def test_including_self_mean_is_biased_by_exactly_minus_grad_over_g(group_size: int) -> None:
    problem = tiny_problem("neural", vocab=3, max_len=3)
    theta = problem.policy.init(0)
    table = score_table(problem, theta)
    _, grad = exact_gradient(problem, theta)
    mean = exact_moments(problem, table, BASELINES["mean"], group_size).mean
    assert torch.allclose(mean - grad, -grad / group_size, atol=1e-14)


def test_including_self_mean_bias_by_brute_force_enumeration() -> None:
    """E[(1/G) Σ_i s_i (r_i − r̄)] over all ordered groups = (1 − 1/G) ∇J, without any closed form."""
    problem = tiny_problem("tabular")
    theta = problem.policy.init(4)
    table = score_table(problem, theta)
    p, s, r = table.probabilities.tolist(), table.scores, problem.rewards.tolist()
    g = 3
    first = torch.zeros(s.shape[1], dtype=torch.float64)
    for group in itertools.product(range(len(p)), repeat=g):
        weight = float(torch.tensor([p[o] for o in group], dtype=torch.float64).prod())
        mean_r = sum(r[o] for o in group) / g
        first += weight * sum(s[o] * (r[o] - mean_r) for o in group) / g
    _, grad = exact_gradient(problem, theta)
    assert torch.allclose(first - grad, -grad / g, atol=1e-14)


@pytest.mark.parametrize("name", ["rloo", "mean", "mean_std"])
def test_exact_trace_cov_agrees_with_monte_carlo(name: str) -> None:
    problem = tiny_problem("neural")
    theta = problem.policy.init(1)
    table = score_table(problem, theta)
    exact = exact_moments(problem, table, BASELINES[name], 6)
    sampled = sampled_moments(problem, table, theta, BASELINES[name], 6, 40_000, seed=0)
    assert abs(exact.trace_cov - sampled.trace_cov) < 4 * sampled.trace_cov_standard_error
    assert ((exact.mean - sampled.mean).abs() < 4 * sampled.mean_standard_error + 1e-12).all()


def test_study_rows_and_the_per_budget_choice() -> None:
    cfg = UstatConfig(group_sizes=(2, 4, 8), seeds=(0, 1), check_groups=2_000, budget=16)
    results = run_ustat(cfg, progress=False)
    rows = results["rows"]
    assert len(rows) == 2 * 3 * 4
    oracle = [r for r in rows if r["estimator"] == "value"]
    assert all(r["ratio_to_oracle"] == pytest.approx(1.0) for r in oracle)
    assert results["best_group_size"]["value"]["noise_to_signal_budget"]["G"] == "all equal"
    for r in rows:
        if r["estimator"] == "mean":
            assert r["relative_bias"] == pytest.approx(1 / r["G"], rel=1e-10)
        if r["estimator"] == "rloo":
            assert r["relative_bias"] < 1e-12 and r["ratio_to_oracle"] >= 1.0
    # V=2, L=4: every multiset of G ≤ 8 is enumerable, so group_norm is exact too
    assert all(r["method"] == "exact (all groups)" for r in rows if r["estimator"] == "mean_std")
    assert results["max_abs_check_z"] < 5


def test_group_norm_falls_back_to_monte_carlo_past_the_limit() -> None:
    assert num_groups(5, 32) > 10
    cfg = UstatConfig(group_sizes=(32,), seeds=(0,), check_groups=500, exact_group_limit=10)
    rows = run_ustat(cfg, progress=False)["rows"]
    assert [r["method"] for r in rows if r["estimator"] == "mean_std"] == ["monte carlo"]


def test_cli_runs_a_tiny_study_and_writes_its_files(tmp_path, capsys) -> None:
    out = tmp_path / "ustat"
    rc = main(["lab", "ustat", "--group-sizes", "2,4", "--seeds", "0", "--check-groups", "500", "--budget", "8",
               "--no-progress", "--out", str(out)])  # fmt: skip
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert {(e["estimator"], e["G"]) for e in results["summary"]} == {
        (n, g) for n in ("value", "rloo", "mean", "mean_std") for g in (2, 4)
    }
    assert (out / "report.md").read_text().startswith("# lab ustat")
    assert (out / "group_size.png").stat().st_size > 0
    assert "best G at budget 8" in capsys.readouterr().out
