"""The lab: enumeration, exact J/∇J, and what each objective's estimator estimates (spec §6)."""

from __future__ import annotations

import json
import time

import pytest
import torch

from ticgrpo.cli import main
from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.objectives import OBJECTIVES, compute_loss
from ticgrpo.lab import (
    FIXED,
    VARIANTS,
    Problem,
    Variant,
    compare,
    enumerate_trajectories,
    exact_gradient,
    exact_objective,
    expected_gradient_exact,
    get_variant,
    group_advantages,
    group_gradients,
    make_policy,
    make_rewards,
    monte_carlo_gradient,
    num_trajectories,
    sample_groups,
)
from ticgrpo.lab.cli import EXPERIMENTS
from ticgrpo.lab.converge import inner_loop, make_optimizer

TOL = 1e-10
POLICIES = ("tabular", "neural")


def make_problem(policy: str = "tabular", vocab: int = 3, max_len: int = 4, reward: str = "target") -> Problem:
    space = enumerate_trajectories(vocab, max_len)
    return Problem(space, make_policy(policy, space), make_rewards(reward, space))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def thetas_away(problem: Problem, theta_old: torch.Tensor) -> list[torch.Tensor]:
    """Several θ ≠ θ_old: random directions at growing distance, and grpo's own inner iterates."""
    gen = torch.Generator().manual_seed(123)
    out = [
        theta_old + scale * torch.randn(theta_old.shape, generator=gen, dtype=torch.float64)
        for scale in (0.05, 0.3, 1.0)
    ]
    grpo = VARIANTS["grpo"]
    idx = sample_groups(problem, theta_old, 4, 8, gen)
    adv = group_advantages(problem, idx, "group_norm")
    param = theta_old.clone().requires_grad_(True)
    out += inner_loop(problem, grpo, param, make_optimizer("adam", param, 0.1), idx, adv, 3)[1:]
    return out


# --- enumeration, J, ∇J ---------------------------------------------------------------------


@pytest.mark.parametrize(("vocab", "max_len"), [(2, 1), (2, 5), (3, 4), (4, 3)])
def test_enumeration_is_complete_and_well_formed(vocab: int, max_len: int) -> None:
    space = enumerate_trajectories(vocab, max_len)
    assert space.num_trajectories == num_trajectories(vocab, max_len)
    rows = {tuple(t[: int(n)].tolist()) for t, n in zip(space.tokens, space.lengths, strict=True)}
    assert len(rows) == space.num_trajectories  # all distinct
    for seq in rows:
        assert 0 not in seq[:-1]  # EOS only at the end
        assert seq[-1] == 0 or len(seq) == max_len
    assert torch.equal(space.mask.sum(dim=1), space.lengths)


@pytest.mark.parametrize("policy", POLICIES)
def test_probabilities_sum_to_one(policy: str) -> None:
    problem = make_problem(policy, vocab=4, max_len=4)
    for seed in (0, 1):
        total = problem.probabilities(problem.policy.init(seed)).sum()
        assert abs(float(total) - 1.0) < 1e-12


def test_token_logprobs_match_a_per_trajectory_loop() -> None:
    problem = make_problem("neural", vocab=3, max_len=4)
    theta = problem.policy.init(0)
    table = problem.policy.log_prob_table(theta)
    space = problem.space
    fast = problem.sequence_logprobs(theta)
    for i in range(space.num_trajectories):
        total = 0.0
        for t in range(int(space.lengths[i])):
            total += float(table[space.prefix_ids[i, t], space.tokens[i, t]])
        assert abs(total - float(fast[i])) < 1e-12


@pytest.mark.parametrize("policy", POLICIES)
def test_exact_gradient_matches_finite_differences(policy: str) -> None:
    problem = make_problem(policy, vocab=3, max_len=4, reward="count_short")
    theta = problem.policy.init(3)
    value, grad = exact_gradient(problem, theta)
    assert abs(value - float(exact_objective(problem, theta))) < 1e-15
    gen = torch.Generator().manual_seed(0)
    h = 1e-5
    for _ in range(4):
        u = torch.randn(theta.shape, generator=gen, dtype=torch.float64)
        u /= u.norm()
        fd = (exact_objective(problem, theta + h * u) - exact_objective(problem, theta - h * u)) / (2 * h)
        assert abs(float(fd) - float(grad @ u)) < 1e-9 * max(1.0, float(grad.norm()))


def test_exact_gradient_is_fast_on_20k_trajectories() -> None:
    torch.set_num_threads(1)
    start = time.perf_counter()
    space = enumerate_trajectories(5, 7)
    problem = Problem(space, make_policy("tabular", space), make_rewards("target", space))
    _, grad = exact_gradient(problem, problem.policy.init(0))
    elapsed = time.perf_counter() - start
    assert space.num_trajectories >= 20_000
    assert torch.isfinite(grad).all()
    assert elapsed < 1.0, f"enumeration + exact ∇J took {elapsed:.3f} s"


# --- what the estimators estimate (exact, fixed baseline) -------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_tic_grpo_without_clip_is_unbiased_for_the_current_gradient(policy: str) -> None:
    problem = make_problem(policy)
    theta_old = problem.policy.init(0)
    baseline = float(exact_objective(problem, theta_old))
    variant = Variant("tic", "tic_grpo", {"epsilon_high": None})
    for theta in [theta_old, *thetas_away(problem, theta_old)]:
        _, grad = exact_gradient(problem, theta)
        for b in (baseline, 0.0, 0.7):  # any fixed baseline
            estimate = expected_gradient_exact(problem, variant, theta, theta_old, b)
            assert rel(estimate, grad) < TOL


@pytest.mark.parametrize("policy", POLICIES)
def test_no_is_frozen_estimates_the_old_gradient_whatever_theta(policy: str) -> None:
    problem = make_problem(policy)
    theta_old = problem.policy.init(1)
    baseline = float(exact_objective(problem, theta_old))
    _, grad_old = exact_gradient(problem, theta_old)
    variant = VARIANTS["no_is_tokensum"]  # frozen, no 1/|o|
    assert variant.is_frozen()
    for theta in thetas_away(problem, theta_old):
        estimate = expected_gradient_exact(problem, variant, theta, theta_old, baseline)
        assert rel(estimate, grad_old) < TOL
        _, grad = exact_gradient(problem, theta)
        assert rel(estimate, grad) > 1e-4  # and not the current gradient


def test_weighting_reproduces_the_one_over_length_gradient() -> None:
    """With 1/|o| (no_is default), E[ĝ] = Σ_o π_old(o) (r − b)/|o| ∇log π_old(o), computed independently."""
    problem = make_problem("neural")
    theta_old = problem.policy.init(2)
    b = 0.3
    th = theta_old.clone().requires_grad_(True)
    seq = problem.sequence_logprobs(th)
    weights = seq.detach().exp() * (problem.rewards - b) / problem.lengths
    (reference,) = torch.autograd.grad((weights * seq).sum(), th)
    estimate = expected_gradient_exact(problem, VARIANTS["no_is"], theta_old + 1.0, theta_old, b)
    assert rel(estimate, reference) < TOL


@pytest.mark.parametrize("policy", POLICIES)
def test_grpo_is_the_current_gradient_only_at_theta_old(policy: str) -> None:
    problem = make_problem(policy)
    theta_old = problem.policy.init(2)
    baseline = float(exact_objective(problem, theta_old))
    variant = Variant(
        "grpo_ts", "grpo", {"epsilon_low": None, "epsilon_high": None, "aggregation": "seq-mean-token-sum"}
    )
    _, grad_old = exact_gradient(problem, theta_old)
    assert rel(expected_gradient_exact(problem, variant, theta_old, theta_old, baseline), grad_old) < TOL
    # after k >= 1 inner steps of grpo: neither the current nor the old gradient
    gen = torch.Generator().manual_seed(5)
    idx = sample_groups(problem, theta_old, 4, 8, gen)
    adv = group_advantages(problem, idx, "group_norm")
    param = theta_old.clone().requires_grad_(True)
    path = inner_loop(problem, variant, param, make_optimizer("adam", param, 0.1), idx, adv, 3)
    for theta in path[1:]:
        _, grad = exact_gradient(problem, theta)
        estimate = expected_gradient_exact(problem, variant, theta, theta_old, baseline)
        assert rel(estimate, grad) > 1e-3
        assert rel(estimate, grad_old) > 1e-3
        # independent reference: Σ_o π_old(o)(r − b) Σ_t ρ_t ∇ℓ_t
        th = theta.clone().requires_grad_(True)
        lp = problem.token_logprobs(th)
        with torch.no_grad():
            old = problem.token_logprobs(theta_old)
        ratio_sum = ((lp - old).exp() * problem.space.mask).sum(dim=1)
        p_old = old.sum(dim=1).exp()
        (reference,) = torch.autograd.grad((p_old * (problem.rewards - baseline) * ratio_sum).sum(), th)
        assert rel(estimate, reference) < TOL


def test_clipping_makes_tic_grpo_biased_away_from_theta_old() -> None:
    problem = make_problem("tabular")
    theta_old = problem.policy.init(0)
    baseline = float(exact_objective(problem, theta_old))
    theta = thetas_away(problem, theta_old)[2]
    _, grad = exact_gradient(problem, theta)
    estimate = expected_gradient_exact(problem, VARIANTS["tic_grpo"], theta, theta_old, baseline)
    assert rel(estimate, grad) > 1e-3


# --- Monte Carlo --------------------------------------------------------------------------------


def test_vectorised_group_gradients_match_a_loop_over_groups() -> None:
    problem = make_problem("neural")
    theta_old = problem.policy.init(0)
    theta = thetas_away(problem, theta_old)[1]
    gen = torch.Generator().manual_seed(9)
    idx = sample_groups(problem, theta_old, 6, 5, gen)
    names = ["grpo", "tic_grpo", "no_is", "dapo_loss"]  # dapo_loss: token-mean (per-group N_tok)
    for name in names:
        variant = get_variant(name)
        adv = group_advantages(problem, idx, variant.advantage_name)
        fast = group_gradients(problem, variant, theta, theta_old, idx, adv, chunk=4)
        eval_at = theta_old if variant.is_frozen() else theta
        for g in range(idx.shape[0]):
            th = eval_at.clone().requires_grad_(True)
            rows = idx[g]
            mask = problem.space.mask[rows]
            with torch.no_grad():
                old = problem.token_logprobs(theta_old, rows)
            batch = PolicyBatch(problem.token_logprobs(th, rows), mask, adv[g], old_logprobs=old)
            norms = StepNormalizers.from_mask(mask, max_new_tokens=problem.space.max_len)
            loss, _ = compute_loss(variant.objective, batch, variant.config(), norms)
            (slow,) = torch.autograd.grad(loss, th)
            assert float((fast[g] + slow).norm()) <= TOL * max(1.0, float(slow.norm()))


@pytest.mark.parametrize(
    ("policy", "name"), [("tabular", "tic_grpo"), ("neural", "tic_ratio_lenadv"), ("tabular", "grpo")]
)
def test_monte_carlo_agrees_with_exact_within_four_standard_errors(policy: str, name: str) -> None:
    problem = make_problem(policy)
    theta_old = problem.policy.init(4)
    baseline = float(exact_objective(problem, theta_old))
    theta = thetas_away(problem, theta_old)[4]
    variant = VARIANTS[name]
    exact = expected_gradient_exact(problem, variant, theta, theta_old, baseline)
    gen = torch.Generator().manual_seed(11)
    idx = sample_groups(problem, theta_old, 3000, 8, gen)
    grads = group_gradients(problem, variant, theta, theta_old, idx, group_advantages(problem, idx, FIXED, baseline))
    # projections on fixed directions: the exact estimate and 5 random unit vectors
    dirs = [exact / exact.norm()] + [
        (lambda u: u / u.norm())(torch.randn(exact.shape, generator=gen, dtype=torch.float64)) for _ in range(5)
    ]
    for u in dirs:
        proj = grads @ u
        se = float(proj.std(unbiased=True)) / proj.numel() ** 0.5
        assert abs(float(proj.mean()) - float(exact @ u)) < 4 * se
    mc = monte_carlo_gradient(problem, variant, theta, theta_old, 3000, 8, FIXED, gen, baseline)
    assert compare(mc.mean, exact)["cos"] > 0.99


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_bias_and_converge_write_outputs(tmp_path, capsys) -> None:
    out = tmp_path / "bias"
    rc = main(
        ["lab", "bias", "--vocab", "3", "--max-len", "3", "--steps", "0,2", "--objectives", "grpo,tic_grpo",
         "--mc-groups", "50", "--no-progress", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert {r["variant"] for r in results["rows"]} == {"grpo", "tic_grpo"}
    assert (out / "report.md").exists() and (out / "bias_rel_error.png").exists()
    out = tmp_path / "conv"
    rc = main(
        ["lab", "converge", "--vocab", "3", "--max-len", "3", "--algorithms", "grpo,no_is", "--seeds", "0,1",
         "--iterations", "3", "--inner-steps", "2", "--no-progress", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["summary"]["no_is"]["J_mean"]) == 4
    assert (out / "converge_J.png").exists()


def test_cli_rejects_unknown_objective(tmp_path, capsys) -> None:
    rc = main(["lab", "bias", "--objectives", "nope", "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("grpo", "one_over_len"),
        ("no_is", "one_over_len"),
        ("gspo", "one_over_len"),
        ("gmpo", "one_over_len"),
        ("dapo_loss", "over_mean_len"),
        ("cispo", "over_mean_len"),
        ("dppo_tv", "over_mean_len"),
        ("dr_grpo", "over_max_len"),
        ("tic_grpo", "grad"),
    ],
)
def test_every_objective_on_policy_estimates_its_documented_gradient(name: str, target: str) -> None:
    """At θ = θ_old, fixed baseline: E[ĝ] is ∇J up to each aggregation's length weighting (spec §3)."""
    problem = make_problem("neural")
    theta_old = problem.policy.init(0)
    b = float(exact_objective(problem, theta_old))
    _, grad = exact_gradient(problem, theta_old)
    probs = problem.probabilities(theta_old)
    th = theta_old.clone().requires_grad_(True)
    seq = problem.sequence_logprobs(th)
    (one_over_len,) = torch.autograd.grad((probs * (problem.rewards - b) / problem.lengths * seq).sum(), th)
    expected = {
        "grad": grad,
        "one_over_len": one_over_len,
        "over_mean_len": grad / float((probs * problem.lengths).sum()),  # token-mean, G → ∞
        "over_max_len": grad / problem.space.max_len,
    }[target]
    estimate = expected_gradient_exact(problem, get_variant(name), theta_old, theta_old, b)
    assert rel(estimate, expected) < TOL


def test_group_coupled_objectives_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"gtpo.*couples the completions of a group"):
        get_variant("gtpo")


def test_the_lab_reads_capabilities_not_names() -> None:
    """Every registered objective runs in the lab iff its spec allows; trainer mechanisms never do."""
    from ticgrpo.config.algorithms import ALGORITHMS

    blocked = [s.name for s in OBJECTIVES.specs() if s.couples_group or s.needs_token_ids or s.needs_entropies]
    assert blocked  # gtpo today
    for name in blocked:
        with pytest.raises(ValueError, match="the lab cannot run"):
            get_variant(name)
    with pytest.raises(ValueError, match="dynamic_sampling, overlong_reward"):
        get_variant("dapo")  # the full method: its loss alone is dapo_loss
    assert get_variant("dapo_loss").objective == "dapo"
    for name, entry in ALGORITHMS.items():
        if name in VARIANTS:
            assert not entry.trainer_mechanisms()
    # the frozen schedule is the spec's, given the options
    assert get_variant("no_is").is_frozen() and not get_variant("no_is_stale").is_frozen()
    assert not any(get_variant(n).is_frozen() for n in ("grpo", "tic_grpo", "cispo"))


def test_all_is_every_supported_objective_with_its_defaults() -> None:
    from ticgrpo.core.objectives import make_objective_config
    from ticgrpo.lab.variants import all_objectives, expand_objectives

    names = all_objectives()
    variants = [get_variant(n) for n in names]
    supported = {s.name for s in OBJECTIVES.specs() if not (s.couples_group or s.needs_token_ids or s.needs_entropies)}
    assert [v.objective for v in variants][:3] == ["grpo", "no_is", "tic_grpo"]
    assert {v.objective for v in variants} == supported
    for v in variants:
        assert v.config() == make_objective_config(v.objective)
        assert v.advantage_name == OBJECTIVES.spec(v.objective).default_advantage
    assert expand_objectives(("grpo", "all", "tic_ratio_only")) == (*names, "tic_ratio_only")


@pytest.mark.parametrize("command", list(EXPERIMENTS))
def test_cli_defaults_are_the_dataclass_defaults(command: str) -> None:
    import argparse
    import dataclasses

    from ticgrpo.lab.cli import add_parser, config_from_args
    from ticgrpo.lab.options import flag

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["lab", command])
    config_cls = EXPERIMENTS[command].config
    for spec in dataclasses.fields(config_cls):
        assert getattr(args, spec.name) == spec.default, spec.name
    assert config_from_args(config_cls, args) == config_cls()
    # and every field is a flag: a value given on the command line reaches the config
    flags = {f.name: f for f in dataclasses.fields(config_cls)}
    ints = [f for f in dataclasses.fields(config_cls) if isinstance(f.default, int) and not isinstance(f.default, bool)]
    changed = {f.name: f.default + 1 for f in ints[:2]}  # e.g. vocab and max_len; checkpoint_lag: step and groups
    given = parser.parse_args(["lab", command, *(x for name, v in changed.items() for x in (flag(name), str(v)))])
    assert {name: getattr(config_from_args(config_cls, given), name) for name in changed} == changed
    assert len(changed) == 2 and set(flags) <= set(vars(given))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bias", "--vocab", "1"], "--vocab must be >= 2, got 1"),
        (["bias", "--steps", "0,-1"], "--steps must be >= 0, got -1"),
        (["bias", "--lr", "0"], "--lr must be > 0, got 0.0"),
        (["converge", "--iterations", "0"], "--iterations must be >= 1, got 0"),
        (["converge", "--reward", "nope"], "--reward must be one of: "),
        (["converge", "--optimizer", "lbfgs"], "--optimizer must be one of: adam, sgd; got 'lbfgs'"),
        (["converge", "--algorithms", "dapo"], "the lab cannot run 'dapo'"),
        (["factorial", "--ratios", "token,bogus"], "--ratios must be one of: token, trajectory, none; got 'bogus'"),
        (["factorial", "--lrs", "0.1,0"], "--lrs must be > 0, got 0.0"),
        (["factorial", "--seeds", "0,100"], "tuning_seeds must not be verdict seeds; both have [100]"),
        (["factorial", "--ratios", "trajectory", "--aggregations", "token_mean"],
         "no cell of the chosen levels can be run"),
        (["lag", "--lags", "0,-1"], "--lags must be >= 0, got -1"),
        (["lag", "--iterations", "5", "--measure-at", "3,9"], "measure_at [9] is past the path's last step"),
        (["lag", "--algorithms", "grpo,bogus"], "bogus"),
        (["lag", "--algorithms", "dapo_loss"], "token-mean"),
        (["lag", "--target-token-kl", "0"], "--target-token-kl must be > 0"),
        (["active_is", "--defensive", "0.5,2"], "defensive weights α must be <= 1"),
        (["active_is", "--defensive", "0"], "--defensive must be > 0, got 0.0"),
        (["active_is", "--temperatures", "0"], "--temperatures must be > 0, got 0.0"),
        (["active_is", "--lags", "0"], "--lags must be >= 1, got 0"),
        (["active_is", "--baseline", "mean"], "--baseline must be one of: value, zero; got 'mean'"),
        (["active_is", "--rewards", "target,bogus"], "--rewards must be one of: "),
        (["active_is", "--algorithm", "bogus"], "bogus"),
        (["active_is", "--iterations", "5", "--measure-at", "3,9"], "measure_at [9] is past the path's last step"),
        (["baselines", "--baselines", "none,bogus"],
         "--baselines must be one of: none, mean, rloo, value, mean_std; got 'bogus'"),
        (["baselines", "--damping", "0"], "--damping must be > 0, got 0.0"),
        (["baselines", "--commit-threshold", "1.5"], "commit_threshold must be < 1"),
        (["baselines", "--group-size", "1"], "--group-size must be >= 2, got 1"),
        (["ope", "--bandwidths", "0.5,0"], "--bandwidths must be > 0, got 0.0"),
        (["ope", "--batch-size", "1"], "--batch-size must be >= 2, got 1"),
        (["ope", "--lags", "0,-1"], "--lags must be >= 0, got -1"),
        (["ope", "--mc-batches", "1"], "--mc-batches must be >= 2, got 1"),
        (["ope", "--rewards", "nope"], "--rewards must be one of: "),
        (["ope", "--iterations", "5", "--measure-at", "3,9"], "measure_at [9] is past the path's last step"),
        (["ustat", "--group-sizes", "2,1"], "--group-sizes must be >= 2, got 1"),
        (["ustat", "--budget", "8"], "group sizes [16, 32] exceed the budget 8"),
        (["ustat", "--estimators", "rloo,mean"], "estimators must include 'value'"),
        (["ustat", "--estimators", "value,nope"], "--estimators must be one of: "),
    ],
)
def test_cli_bad_values_are_one_line(tmp_path, capsys, argv: list[str], message: str) -> None:
    rc = main(["lab", *argv, "--out", str(tmp_path / "out")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
