"""`ppo_rpe` (PPO with the relative density ratio, arXiv 2010.03290; a reconstruction): the naive
loop over an option grid, the exact identities of r = π/(b π + (1−b) π_old) (plain ratio at b = 0,
reflection r(ρ) + r(1/ρ) = 2 at b = ½, the bound 1/b), `grpo` as the b = 0, κ = 0 case, the
gradient (1 − b)·grpo's at θ_old, where the regularised surrogate is stationary, and one-line
errors for bad options. The contract (padding, micro-batches, extreme ratios, adapters) is in
test_objective_contract.py."""

from __future__ import annotations

import math

import pytest
import torch
from naive_variants import naive_ppo_rpe
from random_batches import L_MAX, B, random_batch

from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.objectives import compute_loss, make_objective_config
from ticgrpo.core.objectives.ppo_rpe import relative_log_ratio


def step_norms(d):
    return StepNormalizers(num_sequences=B, num_tokens=float(d["mask"].sum()), max_new_tokens=L_MAX)


def loss_and_grad(name, d, options, logprobs=None, advantages=None):
    leaf = (d["logp"] if logprobs is None else logprobs).clone().requires_grad_(True)
    batch = PolicyBatch(leaf, d["mask"], d["adv"] if advantages is None else advantages,
                        old_logprobs=d["old"], ref_logprobs=d["ref"])
    loss, metrics = compute_loss(name, batch, make_objective_config(name, options), step_norms(d))
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad, metrics


def naive_loss_and_grad(d, options, advantages=None):
    o = make_objective_config("ppo_rpe", options)
    leaf = d["logp"].clone().requires_grad_(True)
    loss = naive_ppo_rpe(leaf, d["old"], d["ref"], d["mask"], d["adv"] if advantages is None else advantages,
                         relative_beta=o.relative_beta, eps=o.epsilon, rpe_coef=o.rpe_coef, beta=o.beta,
                         kl=o.kl_estimator, aggregation=o.aggregation, n_seq=B, n_tok=float(d["mask"].sum()),
                         l_max=L_MAX)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad


GRID = [
    {},  # the defaults: b 0.5, ε 0.1, κ 1, seq-mean-token-mean
    {"relative_beta": 0.0, "epsilon": 0.2},
    {"relative_beta": 0.3, "epsilon": 0.05, "rpe_coef": 2.5, "aggregation": "token-mean"},
    {"relative_beta": 0.9, "epsilon": 0.02, "aggregation": "seq-mean-token-sum"},
    {"relative_beta": 0.5, "epsilon": 0.3, "rpe_coef": 0.0, "aggregation": "seq-mean-token-sum-norm"},
    {"relative_beta": 0.5, "beta": 0.05, "kl_estimator": "k2"},
    {"relative_beta": 0.1, "epsilon": 0.15, "rpe_coef": 0.5, "beta": 0.05},
]


@pytest.mark.parametrize("options", GRID)
def test_matches_naive_loop(options):
    clipped = 0.0
    for seed in range(3):
        d = random_batch(seed)
        loss, grad, metrics = loss_and_grad("ppo_rpe", d, options)
        expected_loss, expected_grad = naive_loss_and_grad(d, options)
        torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-12)
        assert all(torch.isfinite(value) for value in metrics.values()), metrics
        clipped += float(metrics["clip_frac_low"]) + float(metrics["clip_frac_high"])
    assert clipped > 0  # the batches reach the clipped branches, not only the inner region


def test_matches_naive_loop_with_token_advantages():
    d = random_batch(4)
    token_advantages = d["adv"][:, None] * torch.linspace(-1.0, 2.0, d["mask"].shape[1], dtype=torch.float64)
    loss, grad, _ = loss_and_grad("ppo_rpe", d, {"rpe_coef": 1.5}, advantages=token_advantages)
    expected_loss, expected_grad = naive_loss_and_grad(d, {"rpe_coef": 1.5}, advantages=token_advantages)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-12)


def test_relative_ratio_identities():
    x = torch.linspace(-6.0, 6.0, 241, dtype=torch.float64)
    rho = torch.exp(x)
    for b in (0.0, 0.25, 0.5, 0.9):
        direct = rho / (b * rho + (1 - b))
        torch.testing.assert_close(torch.exp(relative_log_ratio(x, b)), direct, rtol=1e-13, atol=0)
    assert torch.equal(relative_log_ratio(x, 0.0), x)  # b = 0: the plain ratio, exactly
    half = torch.exp(relative_log_ratio(x, 0.5))
    # b = ½: swapping π_θ and π_old (x → −x) reflects r about 1
    torch.testing.assert_close(half + half.flip(0), torch.full_like(half, 2.0), rtol=0, atol=1e-14)


@pytest.mark.parametrize("b", [0.0, 0.1, 0.5, 0.9])
def test_relative_ratio_is_bounded_with_a_finite_gradient_in_float32(b):
    x = torch.tensor([-1e4, -80.0, -1.0, 0.0, 1.0, 80.0, 1e4], dtype=torch.float32, requires_grad=True)
    log_r = relative_log_ratio(x, b)
    (grad,) = torch.autograd.grad(log_r.sum(), x)
    log_r = log_r.detach()
    assert torch.isfinite(log_r).all() and torch.isfinite(grad).all()
    if b > 0:
        assert float(log_r.max()) <= -math.log(b) + 1e-6  # r ≤ 1/b
        assert abs(float(log_r[-1]) + math.log(b)) < 1e-5  # and reaches it as π_θ/π_old → ∞


@pytest.mark.parametrize("epsilon", [0.1, 0.25])
@pytest.mark.parametrize("aggregation", ["seq-mean-token-mean", "token-mean"])
def test_relative_beta_zero_without_regulariser_is_grpo(epsilon, aggregation):
    for seed in range(3):
        d = random_batch(seed)
        rpe = loss_and_grad("ppo_rpe", d, {"relative_beta": 0.0, "rpe_coef": 0.0, "epsilon": epsilon,
                                           "aggregation": aggregation, "beta": 0.05})
        grpo = loss_and_grad("grpo", d, {"epsilon_low": epsilon, "epsilon_high": epsilon,
                                         "aggregation": aggregation, "beta": 0.05})
        torch.testing.assert_close(rpe[0], grpo[0], rtol=1e-13, atol=1e-14)
        torch.testing.assert_close(rpe[1], grpo[1], rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("b", [0.0, 0.5, 0.9, 1 - 1e-6])
def test_gradient_at_theta_old_is_one_minus_b_times_grpo(b):
    """∂r/∂ℓ = 1 − b at r = 1 and the regulariser is flat there; b → 1 sends the gradient to 0."""
    d = random_batch(1)
    on_policy = d["old"]
    _, rpe_grad, _ = loss_and_grad("ppo_rpe", d, {"relative_beta": b}, logprobs=on_policy)
    _, grpo_grad, _ = loss_and_grad("grpo", d, {}, logprobs=on_policy)
    assert float(grpo_grad.abs().max()) > 0
    torch.testing.assert_close(rpe_grad, (1 - b) * grpo_grad, rtol=1e-12, atol=1e-15)


def _one_token(relative: float, advantage: float, b: float) -> dict[str, torch.Tensor]:
    """A one-token batch whose relative ratio is `relative`: x = −log((1/r − b)/(1 − b))."""
    x = -math.log((1 / relative - b) / (1 - b))
    old = torch.tensor([[-1.0]], dtype=torch.float64)
    return {"logp": old + x, "old": old, "ref": old, "mask": torch.ones(1, 1, dtype=torch.float64),
            "adv": torch.tensor([advantage], dtype=torch.float64)}


def _token_grad(relative: float, advantage: float, b: float, epsilon: float, kappa: float) -> float:
    d = _one_token(relative, advantage, b)
    options = {"relative_beta": b, "epsilon": epsilon, "rpe_coef": kappa}
    _, grad, metrics = loss_and_grad("ppo_rpe", d, options)
    assert abs(float(metrics["relative_ratio_mean"]) - relative) < 1e-6  # metrics are float32
    return float(grad[0, 0])


@pytest.mark.parametrize("b", [0.3, 0.5])
@pytest.mark.parametrize("advantage", [1.3, -0.7])
def test_regularised_surrogate_is_stationary_at_one_plus_sign_a_epsilon_over_kappa(b, advantage):
    epsilon, sign = 0.2, math.copysign(1.0, advantage)
    # κ = 2: the stationary point 1 ± ε/2 lies inside the clip range, so only the two terms meet there
    assert abs(_token_grad(1 + sign * epsilon / 2, advantage, b, epsilon, 2.0)) < 1e-12
    # κ = 1: inside the threshold the surrogate still pushes r away from 1 (the loss falls as r moves on) ...
    assert sign * _token_grad(1 + sign * 0.5 * epsilon, advantage, b, epsilon, 1.0) < 0
    # ... and past it the clipped term is flat and the regulariser pulls r back
    assert sign * _token_grad(1 + sign * 1.5 * epsilon, advantage, b, epsilon, 1.0) > 0
    assert _token_grad(1 + sign * 1.5 * epsilon, advantage, b, epsilon, 0.0) == 0.0  # PPO's clip alone: flat


@pytest.mark.parametrize(("options", "message"), [
    ({"relative_beta": 1.0}, "ppo_rpe.relative_beta must be < 1, got float 1.0"),
    ({"relative_beta": -0.1}, "ppo_rpe.relative_beta must be >= 0, got float -0.1"),
    ({"relative_beta": "half"}, "ppo_rpe.relative_beta must be a number, got str 'half'"),
    ({"epsilon": 0.0}, "ppo_rpe.epsilon must be > 0, got float 0.0"),
    ({"epsilon": 1.0}, "ppo_rpe.epsilon must be < 1, got float 1.0"),
    ({"rpe_coef": -1.0}, "ppo_rpe.rpe_coef must be >= 0, got float -1.0"),
    ({"relative_b": 0.3}, "unknown option 'relative_b' for objective 'ppo_rpe'; did you mean 'relative_beta'?"),
])
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(ValueError) as error:
        make_objective_config("ppo_rpe", options)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_relative_beta_is_not_the_kl_penalty_beta():
    options = make_objective_config("ppo_rpe", {"beta": 0.05})
    assert (options.beta, options.relative_beta, options.epsilon, options.rpe_coef) == (0.05, 0.5, 0.1, 1.0)
    d = random_batch(2)
    batch = PolicyBatch(d["logp"], d["mask"], d["adv"], old_logprobs=d["old"])  # no reference model
    with pytest.raises(ValueError, match="beta > 0 needs ref_logprobs"):
        compute_loss("ppo_rpe", batch, options)
