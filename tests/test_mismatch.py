"""Behaviour-log-prob mismatch: TIS weights, their statistics, and that scaling the advantage
is the same as scaling each token's (or sequence's) policy-gradient term."""

from __future__ import annotations

import math

import pytest
import torch

from ticgrpo.config import ConfigError, load_config
from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.mismatch import CORRECTIONS, MODES, behavior_correction, mismatch_metrics
from ticgrpo.core.objectives import compute_loss, make_objective_config


def batch(seed: int = 0, b: int = 4, t: int = 5):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g, dtype=torch.float64) * 2
    behavior = old + 0.3 * torch.randn(b, t, generator=g, dtype=torch.float64)
    mask = torch.ones(b, t)
    mask[1, 3:] = 0
    mask[3, 1:] = 0
    return old, behavior, mask


def test_token_and_sequence_weights_by_hand():
    old, behavior, mask = batch()
    token = behavior_correction(old, behavior, mask, "token", cap=2.0)
    for i in range(4):
        for j in range(5):
            expect = min(math.exp(old[i, j] - behavior[i, j]), 2.0) if mask[i, j] else 0.0
            assert float(token.weights[i, j]) == pytest.approx(expect, rel=1e-6)
    seq = behavior_correction(old, behavior, mask, "sequence", cap=2.0)
    for i in range(4):
        log_w = sum(float(old[i, j] - behavior[i, j]) for j in range(5) if mask[i, j])
        assert float(seq.weights[i]) == pytest.approx(min(math.exp(log_w), 2.0), rel=1e-6)
    raw = [math.exp(sum(float(old[i, j] - behavior[i, j]) for j in range(5) if mask[i, j])) for i in range(4)]
    assert seq.metrics["mismatch/truncated_frac"] == pytest.approx(sum(r > 2.0 for r in raw) / 4)


def test_agreeing_logprobs_give_unit_weights_and_zero_mismatch():
    old, _, mask = batch()
    for mode in ("token", "sequence"):
        c = behavior_correction(old, old.clone(), mask, mode, cap=1.5)
        ones = mask if mode == "token" else torch.ones(4)
        assert torch.equal(c.weights.float(), ones.float())
        assert c.metrics["mismatch/kl_k3"] == 0 and c.metrics["mismatch/abs_diff_max"] == 0
        assert c.metrics["mismatch/weight_mean"] == 1 and c.metrics["mismatch/truncated_frac"] == 0


def test_kl_k3_is_nonnegative_and_matches_definition():
    old, behavior, mask = batch(seed=3)
    m = mismatch_metrics(old, behavior, mask)
    log_r = (old - behavior)[mask.bool()]
    assert m["mismatch/kl_k3"] == pytest.approx(float((log_r.exp() - 1 - log_r).mean()), rel=1e-9)
    assert m["mismatch/kl_k3"] > 0 and m["mismatch/abs_diff_mean"] == pytest.approx(float(log_r.abs().mean()))


@pytest.mark.parametrize("objective", ["grpo", "cispo", "dapo"])
def test_token_weights_scale_each_tokens_policy_gradient(objective):
    """∇ loss(A·w) = Σ_t w_t ∇ loss_t(A): the weighted loss's gradient equals the gradient of
    the per-token weighted surrogate, whatever the clip branch (w > 0 keeps A's sign)."""
    old, behavior, mask = batch(seed=1)
    correction = behavior_correction(old, behavior, mask, "token", cap=2.0)
    adv = torch.tensor([1.0, -0.5, 0.7, -1.2], dtype=torch.float64)
    config = make_objective_config(objective, {})
    norms = StepNormalizers.from_mask(mask)

    def grad(advantages, token_weight=None):
        logp = (old + 0.15 * torch.randn(old.shape, generator=torch.Generator().manual_seed(7),
                                         dtype=torch.float64)).requires_grad_(True)
        if token_weight is None:
            loss, _ = compute_loss(objective, PolicyBatch(logp, mask, advantages, old_logprobs=old), config, norms)
        else:  # Σ_t w_t · (the loss of a batch whose only unmasked token is t)
            loss = torch.zeros((), dtype=torch.float64)
            for i, j in mask.nonzero().tolist():
                single = torch.zeros_like(mask)
                single[i, j] = 1
                lt, _ = compute_loss(objective, PolicyBatch(logp, single, advantages, old_logprobs=old), config,
                                     norms)
                # a one-token batch divides by a 1-token length; rescale to the row's real length
                length = float(mask[i].sum()) if "seq-mean" in config.aggregation else 1.0
                loss = loss + token_weight[i, j] * lt / length
        (g,) = torch.autograd.grad(loss, logp)
        return g

    if "seq-mean-token-mean" not in config.aggregation and "token-mean" not in config.aggregation:
        pytest.skip(f"{objective}: aggregation {config.aggregation}")
    weighted = grad(correction.apply(adv).double())
    by_token = grad(adv, correction.weights.double())
    torch.testing.assert_close(weighted, by_token, rtol=1e-9, atol=1e-12)


def test_sequence_weights_scale_each_sequences_term_for_tic_grpo():
    old, behavior, mask = batch(seed=2)
    correction = behavior_correction(old, behavior, mask, "sequence", cap=2.0)
    adv = torch.tensor([1.0, -0.5, 0.7, -1.2], dtype=torch.float64)
    config = make_objective_config("tic_grpo", {"epsilon_high": 0.2})
    norms = StepNormalizers.from_mask(mask)
    logp = (old + 0.1).requires_grad_(True)
    loss_w, _ = compute_loss("tic_grpo", PolicyBatch(logp, mask, correction.apply(adv).double(), old_logprobs=old),
                             config, norms)
    total = torch.zeros((), dtype=torch.float64)
    for i in range(4):  # each sequence alone (others' advantage 0), weighted
        only = torch.zeros_like(adv)
        only[i] = adv[i]
        li, _ = compute_loss("tic_grpo", PolicyBatch(logp, mask, only, old_logprobs=old), config, norms)
        total = total + correction.weights[i].double() * li
    (g1,) = torch.autograd.grad(loss_w, logp)
    (g2,) = torch.autograd.grad(total, logp)
    torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-12)


def test_bad_modes_and_caps():
    old, behavior, mask = batch()
    with pytest.raises(ValueError, match=r"unknown behavior correction mode 'tokens'; choose one of: sequence, token"):
        behavior_correction(old, behavior, mask, "tokens")
    with pytest.raises(ValueError, match="cap must be >= 1"):
        behavior_correction(old, behavior, mask, "token", cap=0.5)


@pytest.mark.parametrize(("overrides", "message"), [
    (["algorithm.behavior_correction=token"], "hf engine samples from the training model"),
    (["rollout.engine=vllm", "algorithm.behavior_correction=token", "algorithm.objective=tic_grpo"],
     "use sequence"),
    (["rollout.engine=vllm", "algorithm.behavior_correction=tis"], "choose one of: sequence, token"),
    (["algorithm.behavior_correction_cap=0.9"], "behavior_correction_cap must be >= 1"),
])
def test_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config({"model": {"name": "tiny-test"}}, overrides)


def test_config_accepts_sequence_tis_with_vllm():
    cfg = load_config({"model": {"name": "tiny-test"}}, [
        "rollout.engine=vllm", "algorithm.behavior_correction=sequence", "rollout.vllm={mode: colocate}"])
    assert cfg.algorithm.behavior_correction == "sequence" and cfg.rollout.vllm == {"mode": "colocate"}


def test_corrections_registry_states_the_weight_level():
    assert MODES == tuple(CORRECTIONS.names()) == ("sequence", "token")
    old, behavior, mask = batch(seed=1)
    for spec in CORRECTIONS.specs():
        weights = behavior_correction(old, behavior, mask, spec.name).weights
        assert weights.dim() == (1 if spec.sequence_level else 2), spec.name
    # the config's rule "token weights need a token-level objective" reads these two flags
    assert not CORRECTIONS.spec("token").sequence_level and CORRECTIONS.spec("sequence").sequence_level
