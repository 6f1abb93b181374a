"""`ticgrpo lab active_is`: the variance-minimising behaviour policy against a loop and Monte Carlo; the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from ticgrpo.cli import main
from ticgrpo.lab.active_is import (
    ActiveISConfig,
    behaviours,
    is_trace_variance,
    measure,
    optimal_behaviour,
    reinforce_terms,
    tempered_probabilities,
)
from ticgrpo.lab.converge import make_problem
from ticgrpo.lab.estimators import exact_gradient
from ticgrpo.lab.paths import training_path

TINY = {"vocab": 3, "max_len": 3, "group_size": 4, "groups": 2, "iterations": 4, "measure_at": (2, 4), "seeds": (0,)}


def _problem(policy: str = "tabular", reward: str = "target"):
    cfg = ActiveISConfig(policy=policy, **TINY)
    return cfg, make_problem(cfg, reward)


def _loop_terms(problem, theta: torch.Tensor, baseline: float):
    """π(o) and (R(o) − b)∇log π(o), one trajectory at a time from the policy's table (no vectorisation)."""
    space = problem.space
    probs, terms = [], []
    for i in range(space.num_trajectories):
        th = theta.detach().clone().requires_grad_(True)
        table = problem.policy.log_prob_table(th)
        logp = sum(table[int(space.prefix_ids[i, t]), int(space.tokens[i, t])] for t in range(int(space.lengths[i])))
        (score,) = torch.autograd.grad(logp, th)
        probs.append(float(logp.detach().exp()))
        terms.append((float(problem.rewards[i]) - baseline) * score)
    return probs, terms


@pytest.mark.parametrize("policy", ["tabular", "neural"])
def test_variances_match_a_loop_over_trajectories(policy: str) -> None:
    _, problem = _problem(policy)
    theta = problem.policy.init(3)
    p, g = reinforce_terms(problem, theta, "value")
    b = float(p @ problem.rewards)
    probs, terms = _loop_terms(problem, theta, b)
    assert torch.allclose(p, torch.tensor(probs, dtype=torch.float64), rtol=1e-12)
    assert torch.allclose(g, torch.stack(terms), rtol=1e-10, atol=1e-14)
    grad = sum(pi * gi for pi, gi in zip(probs, terms, strict=True))
    assert torch.allclose(grad, exact_gradient(problem, theta)[1], rtol=1e-10, atol=1e-14)  # the baseline is mean-zero
    norms = [float(gi.norm()) for gi in terms]
    on_policy = sum(pi * n**2 for pi, n in zip(probs, norms, strict=True)) - float(grad @ grad)
    optimal = sum(pi * n for pi, n in zip(probs, norms, strict=True)) ** 2 - float(grad @ grad)  # (E‖g‖)² − ‖∇J‖²
    assert is_trace_variance(p, g, p) == pytest.approx(on_policy, rel=1e-10)
    assert is_trace_variance(p, g, optimal_behaviour(p, g)) == pytest.approx(optimal, rel=1e-10)
    q = tempered_probabilities(problem, theta, 1.5)
    tempered = sum(pi**2 * n**2 / float(qi) for pi, n, qi in zip(probs, norms, q, strict=True)) - float(grad @ grad)
    assert is_trace_variance(p, g, q) == pytest.approx(tempered, rel=1e-10)


def test_no_behaviour_beats_the_optimum_and_every_one_is_unbiased() -> None:
    cfg, problem = _problem()
    path = training_path(problem, cfg, 0)
    p, g = reinforce_terms(problem, path[4], cfg.baseline)
    grad = p @ g
    best = is_trace_variance(p, g, optimal_behaviour(p, g))
    named = dict(behaviours(problem, cfg, path, 4, p, g))
    gen = torch.Generator().manual_seed(0)
    random = [torch.softmax(torch.randn(p.numel(), generator=gen, dtype=torch.float64), 0) for _ in range(20)]
    for name, q in [*named.items(), *((f"random_{i}", q) for i, q in enumerate(random))]:
        assert float(q.sum()) == pytest.approx(1.0, abs=1e-12), name
        assert is_trace_variance(p, g, q) >= best * (1 - 1e-12), name
        support = q > 0  # q* is 0 where g is: E_q[π/q · g] sums over q's support only
        unbiased = (q[support] * (p[support] / q[support]))[:, None] * g[support]
        assert torch.allclose(unbiased.sum(dim=0), grad, rtol=1e-10, atol=1e-14), name
    assert best < is_trace_variance(p, g, p)  # strictly below on-policy unless ‖g‖ is constant on π's support


def test_temperature_one_is_the_policy() -> None:
    _, problem = _problem("neural")
    theta = problem.policy.init(1)
    assert torch.allclose(tempered_probabilities(problem, theta, 1.0), problem.probabilities(theta), rtol=1e-12)


def test_monte_carlo_under_the_optimum_is_unbiased_with_the_exact_variance() -> None:
    _, problem = _problem()
    theta = problem.policy.init(2)
    p, g = reinforce_terms(problem, theta, "value")
    q = optimal_behaviour(p, g)
    gen = torch.Generator().manual_seed(7)
    draws = 40_000
    idx = torch.multinomial(q, draws, replacement=True, generator=gen)
    samples = (p / q)[idx, None] * g[idx]  # one-sample estimates
    grad = p @ g
    mean, stderr = samples.mean(dim=0), samples.std(dim=0) / draws**0.5
    directions = torch.randn(8, grad.numel(), generator=gen, dtype=torch.float64)
    projected = samples @ directions.T
    z = (projected.mean(dim=0) - directions @ grad) / (projected.std(dim=0) / draws**0.5)
    assert float(z.abs().max()) < 4.5, z
    assert float(((mean - grad).abs() / stderr.clamp_min(1e-12)).max()) < 5.5
    exact = is_trace_variance(p, g, q)
    assert float(samples.var(dim=0).sum()) == pytest.approx(exact, rel=0.04)


def test_zero_baseline_changes_the_optimum_not_the_mean() -> None:
    _, problem = _problem()
    theta = problem.policy.init(4)
    p, g_value = reinforce_terms(problem, theta, "value")
    _, g_zero = reinforce_terms(problem, theta, "zero")
    assert torch.allclose(p @ g_value, p @ g_zero, rtol=1e-10, atol=1e-14)
    assert not torch.allclose(optimal_behaviour(p, g_value), optimal_behaviour(p, g_zero))


def test_measure_rows_are_relative_to_on_policy() -> None:
    cfg, problem = _problem()
    path = training_path(problem, cfg, 0)
    rows = {r["behaviour"]: r for r in measure(problem, cfg, path, 2)}
    assert rows["on_policy"]["ratio_to_on_policy"] == 1.0 and rows["on_policy"]["kl_q_to_pi"] == 0.0
    assert rows["optimal"]["ratio_to_on_policy"] < 1.0
    assert set(rows) == {"on_policy", "optimal", "defensive_0.5", *(f"lag_{k}" for k in cfg.lags),
                         *(f"temp_{t:g}" for t in cfg.temperatures)}  # fmt: skip
    for r in rows.values():
        assert r["trace_var_group"] == pytest.approx(r["trace_var_sample"] / cfg.group_size, rel=1e-15)


def test_cli_runs_a_tiny_study_and_writes_its_files(tmp_path, capsys) -> None:
    out = tmp_path / "active_is"
    rc = main(["lab", "active_is", "--vocab", "3", "--max-len", "3", "--iterations", "3", "--measure-at", "1,3",
               "--seeds", "0,1", "--lags", "1,2", "--temperatures", "1.5",
               "--no-progress", "--out", str(out)])  # fmt: skip
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    behaviour_names = ("on_policy", "optimal", "defensive_0.5", "lag_1", "lag_2", "temp_1.5")
    assert {(e["reward"], e["behaviour"]) for e in results["summary"]} == {
        (r, b) for r in ("target", "first") for b in behaviour_names
    }
    assert all(e["ratio_to_on_policy"]["mean"] < 1 for e in results["summary"] if e["behaviour"] == "optimal")
    assert (out / "report.md").read_text().startswith("# lab active_is")
    assert (out / "active_is_variance.png").stat().st_size > 0
    assert "tr Var(q*)/tr Var(on-policy)" in capsys.readouterr().out
