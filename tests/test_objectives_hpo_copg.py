"""`hpo` (Hinge Policy Optimization) and `copg` (Clipped-Objective Policy Gradient) beyond the contract.

- both against their naive loops (tests/naive_variants.py) over options the contract test leaves at
  their defaults: every HPO classifier, other ε, other aggregations, β, [B, T] advantages;
- HPO with f = ρ − 1 has PPO-clip's gradient: `grpo` with ε_low = ε_high = ε and the same
  aggregation, bit for bit, on batches with ratios inside and outside the clip range and both
  advantage signs; its value is `grpo`'s plus the aggregated constant A + ε|A|; and where the
  identity breaks (a rounding error from the kink ρ = 1 ± ε);
- COPG keeps exactly `grpo`'s unclipped tokens, each with the gradient A in place of ρA;
- bad options give one-line errors naming the option.
"""

from __future__ import annotations

import math

import pytest
import torch
from naive_variants import naive_copg, naive_hpo
from random_batches import L_MAX, B, random_batch

from ticgrpo.core.aggregation import aggregate
from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.objectives import compute_loss, make_objective_config

CLASSIFIERS = ("ratio_minus_one", "log_ratio", "sqrt_ratio_minus_one")
AGGREGATIONS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum")
SPREAD = 0.5  # std of ℓ^old − ℓ: ratios from about e^−1 to e^1, so ε = 0.2 binds on many tokens


def _batch(d: dict[str, torch.Tensor], logprobs: torch.Tensor, token_advantages: bool = False) -> PolicyBatch:
    adv = d["adv"][:, None] * (1 + d["entropies"]) if token_advantages else d["adv"]  # [B, T]: per token
    return PolicyBatch(logprobs, d["mask"], adv, old_logprobs=d["old"], ref_logprobs=d["ref"])


def _norms(d: dict[str, torch.Tensor]) -> StepNormalizers:
    return StepNormalizers(num_sequences=B, num_tokens=float(d["mask"].sum()), max_new_tokens=L_MAX)


def _counts(d: dict[str, torch.Tensor]) -> dict[str, float]:
    return {"n_seq": B, "n_tok": float(d["mask"].sum()), "l_max": L_MAX}


def _loss_and_grad(name: str, batch: PolicyBatch, options, norms: StepNormalizers):
    loss, metrics = compute_loss(name, batch, options, norms)
    (grad,) = torch.autograd.grad(loss, batch.logprobs)
    return loss.detach(), grad, metrics


def _leaf(d: dict[str, torch.Tensor]) -> torch.Tensor:
    return d["logp"].clone().requires_grad_(True)


# ---------------------------------------------------------------- the naive loops, over the options
@pytest.mark.parametrize("classifier", CLASSIFIERS)
def test_hpo_matches_its_naive_loop_for_every_classifier(classifier):
    checked_beyond_margin = 0.0
    for seed, (epsilon, aggregation, beta, per_token) in enumerate(
            [(0.2, "seq-mean-token-mean", 0.0, False), (0.1, "token-mean", 0.05, True),
             (0.35, "seq-mean-token-sum", 0.05, False), (1.5, "token-mean", 0.0, True)]):
        d = random_batch(seed, SPREAD)
        options = make_objective_config("hpo", {"classifier": classifier, "epsilon": epsilon,
                                                "aggregation": aggregation, "beta": beta})
        batch = _batch(d, _leaf(d), per_token)
        loss, grad, metrics = _loss_and_grad("hpo", batch, options, _norms(d))
        leaf = _leaf(d)
        expected = naive_hpo(leaf, d["old"], d["ref"], d["mask"], batch.advantages, eps=epsilon,
                             classifier=classifier, beta=beta, kl="k3", aggregation=aggregation, **_counts(d))
        (expected_grad,) = torch.autograd.grad(expected, leaf)
        torch.testing.assert_close(loss, expected.detach(), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-14)
        checked_beyond_margin += float(metrics["clip_frac_low"] + metrics["clip_frac_high"])
    assert checked_beyond_margin > 0  # some tokens were past the margin: the hinge's flat side was checked


def test_copg_matches_its_naive_loop_over_options():
    clipped = 0.0
    for seed, (epsilon, aggregation, beta, per_token) in enumerate(
            [(0.2, "seq-mean-token-mean", 0.0, False), (0.1, "token-mean", 0.05, True),
             (0.5, "seq-mean-token-sum", 0.05, False), (0.9, "seq-mean-token-mean", 0.0, True)]):
        d = random_batch(seed, SPREAD)
        options = make_objective_config("copg", {"epsilon": epsilon, "aggregation": aggregation, "beta": beta})
        batch = _batch(d, _leaf(d), per_token)
        loss, grad, metrics = _loss_and_grad("copg", batch, options, _norms(d))
        leaf = _leaf(d)
        expected = naive_copg(leaf, d["old"], d["ref"], d["mask"], batch.advantages, eps=epsilon, beta=beta,
                              kl="k3", aggregation=aggregation, **_counts(d))
        (expected_grad,) = torch.autograd.grad(expected, leaf)
        torch.testing.assert_close(loss, expected.detach(), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-14)
        clipped += float(metrics["clip_frac_low"] + metrics["clip_frac_high"])
    assert clipped > 0


# ---------------------------------------------------------------- HPO with f = ρ − 1 is PPO-clip's gradient
def _regions(d: dict[str, torch.Tensor], epsilon: float) -> dict[str, int]:
    """Real tokens per (advantage sign, where the ratio lies against the clip range)."""
    ratio, real = torch.exp(d["logp"] - d["old"]), d["mask"].bool()
    positive, negative = (d["adv"] > 0)[:, None] & real, (d["adv"] < 0)[:, None] & real
    return {"A>0 inside": int((positive & (ratio < 1 + epsilon)).sum()),
            "A>0 above": int((positive & (ratio > 1 + epsilon)).sum()),
            "A<0 inside": int((negative & (ratio > 1 - epsilon)).sum()),
            "A<0 below": int((negative & (ratio < 1 - epsilon)).sum())}


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_hpo_ratio_minus_one_has_exactly_the_ppo_clip_gradient(aggregation):
    covered = dict.fromkeys(("A>0 inside", "A>0 above", "A<0 inside", "A<0 below"), 0)
    for seed in range(6):
        epsilon, beta = (0.2, 0.28, 0.1)[seed % 3], (0.0, 0.05)[seed % 2]
        d = random_batch(100 + seed, SPREAD)
        hpo = make_objective_config("hpo", {"epsilon": epsilon, "aggregation": aggregation, "beta": beta})
        ppo = make_objective_config("grpo", {"epsilon_low": epsilon, "epsilon_high": epsilon,
                                             "aggregation": aggregation, "beta": beta})
        hinge_loss, hinge_grad, hinge_metrics = _loss_and_grad("hpo", _batch(d, _leaf(d)), hpo, _norms(d))
        ppo_loss, ppo_grad, ppo_metrics = _loss_and_grad("grpo", _batch(d, _leaf(d)), ppo, _norms(d))
        assert torch.equal(hinge_grad, ppo_grad), (seed, (hinge_grad - ppo_grad).abs().max())
        # the values are not equal: they differ by the aggregated constant A + ε|A| (0 where A = 0)
        adv = d["adv"][:, None].expand_as(d["mask"])
        offset = aggregate(adv + epsilon * adv.abs(), d["mask"], aggregation, _norms(d))
        torch.testing.assert_close(hinge_loss - ppo_loss, offset, rtol=1e-12, atol=1e-14)
        assert abs(float(offset)) > 1e-3  # a real difference in value, not a rounding error
        for key in ("clip_frac_low", "clip_frac_high"):
            assert torch.equal(hinge_metrics[key], ppo_metrics[key]), key
        for region, count in _regions(d, epsilon).items():
            covered[region] += count
    assert all(count > 0 for count in covered.values()), covered  # every region of the clip was exercised


def _one_token_gradients(log_ratio: float, advantage: float, epsilon: float) -> tuple[float, float]:
    """∂loss/∂ℓ of hpo (f = ρ − 1) and of grpo (symmetric ε) on one token at ℓ − ℓ^old = log_ratio."""
    old = torch.tensor([[0.0]], dtype=torch.float64)  # ℓ − ℓ^old is then log_ratio itself, no rounding
    grads = []
    for name, overrides in (("hpo", {"epsilon": epsilon}),
                            ("grpo", {"epsilon_low": epsilon, "epsilon_high": epsilon})):
        leaf = (old + log_ratio).requires_grad_(True)
        batch = PolicyBatch(leaf, torch.ones(1, 1, dtype=torch.float64),
                            torch.tensor([advantage], dtype=torch.float64), old_logprobs=old)
        loss, _ = compute_loss(name, batch, make_objective_config(name, overrides))
        (grad,) = torch.autograd.grad(loss, leaf)
        grads.append(float(grad))
    return grads[0], grads[1]


def test_where_the_hpo_ppo_gradient_identity_breaks_the_kink_in_two_spaces():
    """`grpo` keeps a token while x ≤ log(1+ε) (A > 0) or x ≥ log(1−ε) (A < 0); the hinge while
    ε − sgn(A)(eˣ − 1) ≥ 0. In exact arithmetic these are the same set, kink included (both take
    the active side there); in floating point eˣ − 1 at x = log(1 ± ε) need not round back to ±ε."""
    # where eˣ − 1 rounds back to ±ε exactly (ε = 0.25, 0.5), the two agree on the kink itself
    for epsilon in (0.25, 0.5):
        for advantage, kink in ((1.3, math.log1p(epsilon)), (-1.3, math.log1p(-epsilon))):
            hinge, ppo = _one_token_gradients(kink, advantage, epsilon)
            assert hinge == ppo != 0.0, (epsilon, advantage, hinge, ppo)
    # ε = 0.1, A > 0: exp(log1p(0.1)) − 1 = 0.1 + 8.3e-17 > ε, so the hinge is flat one rounding
    # error early — on the kink the PPO gradient is −ρA = −1.1·1.3 and the hinge's is 0
    kink = math.log1p(0.1)
    assert math.exp(kink) - 1 > 0.1
    hinge, ppo = _one_token_gradients(kink, 1.3, 0.1)
    assert hinge == 0.0 and ppo == pytest.approx(-1.1 * 1.3, rel=1e-12)
    # and the disagreement is confined to log-ratios within a few ulps of the kink
    for epsilon in (0.1, 0.2, 0.28):
        for advantage, kink in ((1.3, math.log1p(epsilon)), (-1.3, math.log1p(-epsilon))):
            for x in (kink - 1e-12, kink + 1e-12, kink - 1e-6, kink + 1e-6):
                hinge, ppo = _one_token_gradients(x, advantage, epsilon)
                assert hinge == ppo, (epsilon, advantage, x, hinge, ppo)


# ---------------------------------------------------------------- COPG: grpo's clip set, gradient A not ρA
def test_copg_keeps_grpos_tokens_with_the_plain_policy_gradient():
    for seed in range(4):
        epsilon = (0.2, 0.1)[seed % 2]
        d = random_batch(200 + seed, SPREAD)
        copg = make_objective_config("copg", {"epsilon": epsilon})
        ppo = make_objective_config("grpo", {"epsilon_low": epsilon, "epsilon_high": epsilon})
        _, copg_grad, copg_metrics = _loss_and_grad("copg", _batch(d, _leaf(d)), copg, _norms(d))
        _, ppo_grad, ppo_metrics = _loss_and_grad("grpo", _batch(d, _leaf(d)), ppo, _norms(d))
        ratio = torch.exp(d["logp"] - d["old"])
        torch.testing.assert_close(copg_grad * ratio, ppo_grad, rtol=1e-12, atol=1e-15)
        assert torch.equal(copg_grad == 0, ppo_grad == 0)
        assert float(ppo_metrics["clip_frac_low"] + ppo_metrics["clip_frac_high"]) > 0
        for key in ("clip_frac_low", "clip_frac_high"):
            assert torch.equal(copg_metrics[key], ppo_metrics[key]), key


@pytest.mark.parametrize(("name", "overrides", "expected_factor"),
                         [("hpo", {"classifier": "ratio_minus_one"}, 1.0), ("hpo", {"classifier": "log_ratio"}, 1.0),
                          ("hpo", {"classifier": "sqrt_ratio_minus_one"}, 0.5), ("copg", {}, 1.0)])
def test_on_policy_gradient_is_grpos_times_the_classifier_slope(name, overrides, expected_factor):
    """At θ = θ_old: f'(0) = 1 for ρ − 1 and log ρ, ½ for √ρ − 1; COPG's is grpo's."""
    d = random_batch(7)
    d["old"] = d["logp"].clone()
    _, grad, _ = _loss_and_grad(name, _batch(d, _leaf(d)), make_objective_config(name, overrides), _norms(d))
    _, ppo_grad, _ = _loss_and_grad("grpo", _batch(d, _leaf(d)), make_objective_config("grpo"), _norms(d))
    torch.testing.assert_close(grad, expected_factor * ppo_grad, rtol=1e-12, atol=1e-15)
    assert float(ppo_grad.abs().sum()) > 0


# ---------------------------------------------------------------- bad options
@pytest.mark.parametrize(("name", "overrides", "fragments"), [
    ("hpo", {"classifier": "cube"}, ("hpo.classifier", "ratio_minus_one", "log_ratio", "sqrt_ratio_minus_one")),
    ("hpo", {"epsilon": 0.0}, ("hpo.epsilon", "> 0")),
    ("hpo", {"epsilon": -0.2}, ("hpo.epsilon", "> 0")),
    ("hpo", {"aggregation": "sum"}, ("hpo.aggregation", "token-mean")),
    ("hpo", {"margin": 0.2}, ("margin", "hpo", "epsilon")),
    ("copg", {"epsilon": 1.0}, ("copg.epsilon", "< 1")),
    ("copg", {"epsilon": 0.0}, ("copg.epsilon", "> 0")),
    ("copg", {"epsilon_high": 0.28}, ("epsilon_high", "copg", "epsilon")),
])
def test_bad_options_give_one_line_errors(name, overrides, fragments):
    with pytest.raises(ValueError) as error:
        make_objective_config(name, overrides)
    message = str(error.value)
    assert "\n" not in message, message
    assert all(fragment in message for fragment in fragments), message
