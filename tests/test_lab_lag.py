"""`ticgrpo lab lag`: exact identities of the stale-sample estimators, the length sweep, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ticgrpo.cli import main
from ticgrpo.lab.bias import BiasConfig, run_bias
from ticgrpo.lab.converge import make_problem, train
from ticgrpo.lab.estimators import (
    FIXED,
    exact_moments,
    exact_objective,
    expected_gradient_exact,
    monte_carlo_gradient,
)
from ticgrpo.lab.lag import DEFAULT_ALGORITHMS, LagConfig, measure, perturbation_at_token_kl, run_lag
from ticgrpo.lab.variants import get_variant

TINY = {"vocab": 3, "max_len": 4, "group_size": 4, "groups": 2}


def _problem(policy: str = "tabular"):
    cfg = LagConfig(policy=policy, **TINY)
    return cfg, make_problem(cfg, cfg.reward)


def _moved(problem, seed: int = 0, scale: float = 0.4):
    theta_old = problem.policy.init(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    return theta_old, theta_old + scale * torch.randn(theta_old.numel(), generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("policy", ["tabular", "neural"])
def test_exact_moments_mean_is_the_exact_expected_gradient(policy: str) -> None:
    _, problem = _problem(policy)
    theta_old, theta = _moved(problem)
    b = float(exact_objective(problem, theta_old))
    for name in DEFAULT_ALGORITHMS:
        variant = get_variant(name)
        moments = exact_moments(problem, variant, theta, theta_old, b, group_size=4)
        expected = expected_gradient_exact(problem, variant, theta, theta_old, b)
        assert torch.allclose(moments.mean, expected, rtol=0, atol=1e-13 * float(expected.norm()) + 1e-15), name


def test_exact_trace_cov_matches_monte_carlo() -> None:
    _, problem = _problem()
    theta_old, theta = _moved(problem)
    b = float(exact_objective(problem, theta_old))
    for name in ("grpo", "tic_ratio_only"):
        variant = get_variant(name)
        exact = exact_moments(problem, variant, theta, theta_old, b, group_size=4).trace_cov
        gen = torch.Generator().manual_seed(5)
        mc = monte_carlo_gradient(problem, variant, theta, theta_old, 20_000, 4, FIXED, gen, b).trace_cov
        assert mc == pytest.approx(exact, rel=0.05), name


def test_lag_zero_equals_lab_bias_at_theta_old() -> None:
    bias = run_bias(BiasConfig(vocab=3, max_len=4, steps=(0,), objectives=DEFAULT_ALGORITHMS, mc_groups=2), False)
    _, problem = _problem()
    theta_old = problem.policy.init(0)  # lab bias's θ_old at seed 0
    for row in (r for r in bias["rows"] if r["estimate"] == "fixed (exact)"):
        ours = measure(problem, get_variant(row["variant"]), theta_old, theta_old, 8, 4)
        for key in ("rel_err_current", "rel_err_old", "cos_current", "cos_old", "norm_ratio_current"):
            assert ours[key] == pytest.approx(row[key], rel=1e-12, abs=1e-14), (row["variant"], key)


def test_train_records_every_optimizer_step() -> None:
    cfg, problem = _problem()
    cfg.iterations, cfg.inner_steps = 3, 2
    path: list[torch.Tensor] = []
    curve = train(problem, get_variant("grpo"), problem.policy.init(1), cfg, 1, steps_path=path)
    assert len(path) == 3 * 2 + 1
    assert torch.equal(path[0], problem.policy.init(1))
    assert float(exact_objective(problem, path[-1])) == pytest.approx(curve["J"][-1], abs=1e-15)
    assert float(exact_objective(problem, path[2])) == pytest.approx(curve["J"][1], abs=1e-15)


@pytest.fixture(scope="module")
def tiny_study() -> dict:
    cfg = LagConfig(
        **TINY, iterations=6, seeds=(0, 1), lags=(0, 1, 4), measure_at=(2, 6), mus=(1, 3), sweep_lengths=(2, 3)
    )
    return run_lag(cfg, progress=False)


def test_trajectory_ratio_is_unbiased_for_the_current_gradient_at_every_lag(tiny_study: dict) -> None:
    rows = [r for r in tiny_study["rows"] if r["variant"] == "tic_ratio_only"]
    assert {r["k"] for r in rows if r["study"] == "lag"} == {0, 1, 4}
    assert max(r["rel_err_current"] for r in rows) < 1e-12
    moved = [r for r in rows if r["kl_old_theta"] > 1e-6]
    assert moved and min(r["rel_err_old"] for r in moved) > 1e-4  # θ really moved: ∇J(θ_old) is another target


def test_frozen_no_is_is_its_estimator_at_theta_old() -> None:
    _, problem = _problem()
    theta_old, theta = _moved(problem)
    b = float(exact_objective(problem, theta_old))
    for name in ("no_is", "no_is_tokensum"):
        variant = get_variant(name)
        at_theta = exact_moments(problem, variant, theta, theta_old, b, 4)
        at_old = exact_moments(problem, variant, theta_old, theta_old, b, 4)
        assert torch.equal(at_theta.mean, at_old.mean) and at_theta.trace_cov == at_old.trace_cov
    assert measure(problem, get_variant("no_is_tokensum"), theta, theta_old, 4, 2)["rel_err_old"] < 1e-12


def test_lag_zero_rows_are_on_policy(tiny_study: dict) -> None:
    for row in tiny_study["rows"]:
        if row["k"] == (0 if row["study"] == "lag" else 1):
            assert row["kl_old_theta"] == 0.0
            assert row["rel_err_current"] == row["rel_err_old"]


def _per_position_kl(problem, theta_old, theta) -> float:
    """E_old Σ_t KL(π_old(·|o_<t) ‖ π_θ(·|o_<t)), written independently of kl_divergence."""
    old, new = problem.policy.log_prob_table(theta_old), problem.policy.log_prob_table(theta)
    per_prefix = (old.exp() * (old - new)).sum(dim=1)  # [P]
    space = problem.space
    per_traj = torch.where(space.mask, per_prefix[space.prefix_ids], torch.zeros(())).sum(dim=1)
    return float((problem.probabilities(theta_old) * per_traj).sum())


@pytest.mark.parametrize("policy", ["tabular", "neural"])
def test_sweep_perturbation_hits_the_per_token_kl(policy: str) -> None:
    _, problem = _problem(policy)
    theta_old = problem.policy.shift_eos_logit(problem.policy.init(3), -3.0)
    direction = torch.randn(theta_old.numel(), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    theta, token_kl = perturbation_at_token_kl(problem, theta_old, direction, 0.05)
    mean_len = float((problem.probabilities(theta_old) * problem.lengths).sum())
    assert token_kl == pytest.approx(0.05, rel=1e-9)
    assert _per_position_kl(problem, theta_old, theta) / mean_len == pytest.approx(0.05, rel=1e-9)


@pytest.mark.parametrize("policy", ["tabular", "neural"])
def test_eos_shift_lengthens_completions(policy: str) -> None:
    _, problem = _problem(policy)
    theta = problem.policy.init(0)

    def mean_len(t):
        return float((problem.probabilities(t) * problem.lengths).sum())

    assert mean_len(problem.policy.shift_eos_logit(theta, -3.0)) > mean_len(theta) + 0.5
    assert torch.equal(problem.policy.shift_eos_logit(theta, 0.0), theta)


def test_sweep_rows_hit_the_target_at_every_length(tiny_study: dict) -> None:
    rows = tiny_study["sweep_rows"]
    assert {r["L"] for r in rows} == {2, 3}
    assert all(abs(r["token_kl"] - 0.05) < 1e-9 for r in rows)
    assert max(r["rel_err_current"] for r in rows if r["variant"] == "tic_ratio_only") < 1e-12


def test_cli_runs_a_tiny_study_and_writes_its_files(tmp_path, capsys) -> None:
    out = tmp_path / "lag"
    rc = main(
        ["lab", "lag", "--vocab", "3", "--max-len", "3", "--iterations", "3", "--measure-at", "1,3",
         "--lags", "0,2", "--mus", "1,2", "--seeds", "0,1", "--sweep-lengths", "2,3",
         "--algorithms", "grpo,tic_ratio_only", "--no-progress", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert {(e["variant"], e["k"]) for e in results["summary"]["lag"]} == {
        (v, k) for v in ("grpo", "tic_ratio_only") for k in (0, 2)
    }
    assert len(results["summary"]["sweep"]) == 4 and len(results["summary"]["mu"]) == 4
    report = (out / "report.md").read_text()
    assert report.startswith("# lab lag")
    results = json.loads((out / "results.json").read_text())
    first = results["summary"]["sweep"][0]  # the growth-rate line is these means' log(1 + χ²)/E|o|
    rate = math.log1p(first["trajectory_ratio_variance"]["mean"]) / first["mean_length_old"]["mean"]
    assert f"L={first['L']}: {rate:.3f}" in report
    assert (out / "lag_bias.png").stat().st_size > 0 and (out / "length_sweep.png").stat().st_size > 0
    assert "lag k=2" in capsys.readouterr().out


def test_compare_arms_pairs_by_seed_and_corrects_with_holm() -> None:
    from ticgrpo.lab.lag import COMPARISONS, compare_arms

    rows = {"lag": [], "mu": [], "sweep": []}
    for seed in range(6):
        for t in (1, 2):  # two measurement steps per seed: averaged before pairing
            noise = 0.01 * ((seed * 7 + t) % 5)
            base = {"L": 4, "seed": seed}
            token = {"noise_to_signal": 1.0 + seed, "relative_mse_batch": 2.0 + noise}
            trajectory = {"noise_to_signal": 3.0 * (1.0 + seed) * (1 + noise), "relative_mse_batch": 2.0}
            rows["sweep"].append({**base, "variant": "grpo_tokensum", **token})
            rows["sweep"].append({**base, "variant": "tic_ratio_only", **trajectory})
    out = compare_arms(rows, ("grpo_tokensum", "tic_ratio_only"))
    nsr = next(r for r in out if "noise_to_signal" in r["comparison"])
    assert nsr["log_ratio"] and nsr["L"] == 4 and nsr["n"] == 6
    assert abs(nsr["mean"] - np.log(3.0)) < 0.05 and nsr["p_value"] < 1e-6  # ×3 whatever the seed's scale
    assert len(out) == 2 and all(r["p_holm"] >= r["p_value"] for r in out)
    assert {c.study for c in COMPARISONS} == {"lag", "mu", "sweep"}
