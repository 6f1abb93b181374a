"""Off-policy corrections (ticgrpo.core.corrections) and the π_old rules (ticgrpo.train.offpolicy).

Every correction against a naive loop written here (token by token, sequence by sequence), the
masks at their bounds, an all-masked batch through a real objective's loss, the ESS formula, the
π_old rules on a tiny in-process model with hand-built RolloutBatches, the config errors, and
real lagged training runs with every correction.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ticgrpo.cli import main
from ticgrpo.config import AlgorithmConfig, ConfigError, load_config
from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.corrections import (
    CORRECTIONS,
    CorrectionInputs,
    correct_advantages,
    effective_sample_size,
    make_correction_options,
    mismatch_metrics,
)
from ticgrpo.core.objectives import OBJECTIVES, compute_loss, make_objective_config
from ticgrpo.rollout import RolloutBatch
from ticgrpo.testing import make_tiny_model, make_tiny_tokenizer
from ticgrpo.train import Trainer
from ticgrpo.train.metrics import is_declared
from ticgrpo.train.offpolicy import prepare_old_logprobs
from ticgrpo.train.step import StepSettings, TrainingBatch, fixed_logprobs

ROOT = Path(__file__).resolve().parents[1]
B, T = 6, 5
DECOUPLED = [name for name in CORRECTIONS.names() if CORRECTIONS.spec(name).decoupled]


def inputs(seed: int = 0, spread: float = 0.4) -> CorrectionInputs:
    g = torch.Generator().manual_seed(seed)
    prox = -torch.rand(B, T, generator=g, dtype=torch.float64) * 2
    mu = prox + spread * torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = torch.ones(B, T)
    mask[1, 3:] = 0
    mask[3, 1:] = 0
    mask[5, :] = 0  # an empty row: no unit of its own
    advantages = torch.tensor([1.0, -0.5, 0.7, -1.2, -0.3, 0.4], dtype=torch.float64)
    staleness = torch.tensor([0, 1, 2, 3, 0, 2])
    return CorrectionInputs(prox, mu, mask, advantages, staleness)


# --------------------------------------------------------------------------- naive loops


def _tokens(x: CorrectionInputs, i: int) -> list[int]:
    return [t for t in range(T) if x.mask[i, t] > 0]


def _log_r(x: CorrectionInputs, i: int, t: int) -> float:
    return float(x.prox_logprobs[i, t]) - float(x.behavior_logprobs[i, t])


def _seq_log_r(x: CorrectionInputs, i: int) -> float:
    return sum(_log_r(x, i, t) for t in _tokens(x, i))


def naive_token_tis(x, o):
    return [[min(math.exp(_log_r(x, i, t)), o.cap) if x.mask[i, t] else 0.0 for t in range(T)] for i in range(B)]


def naive_sequence_tis(x, o):
    return [min(math.exp(_seq_log_r(x, i)), o.cap) if _tokens(x, i) else 0.0 for i in range(B)]


def naive_token_mask(x, o):
    return [[1.0 if x.mask[i, t] and o.lower <= math.exp(_log_r(x, i, t)) <= o.upper else 0.0 for t in range(T)]
            for i in range(B)]


def naive_sequence_mask(x, o):
    out = []
    for i in range(B):
        tokens = _tokens(x, i)
        if not tokens:
            out.append(0.0)
            continue
        log_rho = _seq_log_r(x, i) / (len(tokens) if o.ratio == "geometric_mean" else 1)
        out.append(1.0 if o.lower <= math.exp(log_rho) <= o.upper else 0.0)
    return out


def naive_offpolicy_sequence_mask(x, o):
    out = []
    for i in range(B):
        tokens = _tokens(x, i)
        if not tokens:
            out.append(0.0)
            continue
        kl = sum(float(x.behavior_logprobs[i, t]) - float(x.prox_logprobs[i, t]) for t in tokens) / len(tokens)
        out.append(0.0 if float(x.advantages[i]) < 0 and kl > o.delta else 1.0)
    return out


def naive_drop_stale(x, o):
    return [(0.0 if int(x.staleness[i]) > o.max_staleness else 1.0) if _tokens(x, i) else 0.0 for i in range(B)]


NAIVE = {
    "token_tis": naive_token_tis, "sequence_tis": naive_sequence_tis, "token_mask": naive_token_mask,
    "sequence_mask": naive_sequence_mask, "offpolicy_sequence_mask": naive_offpolicy_sequence_mask,
    "drop_stale": naive_drop_stale,
}
# options that make every entry bind on some rows of `inputs()` (and the defaults)
OPTIONS = [
    ("token_tis", {}), ("token_tis", {"cap": 1.2}), ("sequence_tis", {}), ("sequence_tis", {"cap": 1.5}),
    ("token_mask", {}), ("token_mask", {"lower": 0.8, "upper": 1.3}), ("sequence_mask", {}),
    ("sequence_mask", {"lower": 0.6, "upper": 1.6, "ratio": "geometric_mean"}),
    ("offpolicy_sequence_mask", {}), ("offpolicy_sequence_mask", {"delta": 0.0}), ("drop_stale", {}),
    ("drop_stale", {"max_staleness": 2}),
]


def test_every_decoupled_correction_has_a_naive_loop():
    assert sorted(NAIVE) == DECOUPLED and {name for name, _ in OPTIONS} == set(DECOUPLED)
    assert not CORRECTIONS.spec("none").decoupled


@pytest.mark.parametrize(("name", "overrides"), OPTIONS, ids=[f"{n}-{o}" for n, o in OPTIONS])
def test_weights_equal_the_naive_loop(name, overrides):
    x, options = inputs(seed=1), make_correction_options(name, overrides)
    correction = correct_advantages(name, x, options, sequence_advantages=False)
    expected = torch.tensor(NAIVE[name](x, options), dtype=torch.float64)
    assert correction.weights.dim() == (1 if CORRECTIONS.spec(name).sequence_level else 2)
    torch.testing.assert_close(correction.weights, expected, rtol=1e-12, atol=0)
    adv = x.advantages
    scaled = adv[:, None] * expected if expected.dim() == 2 else adv * expected
    torch.testing.assert_close(correction.advantages, scaled, rtol=1e-12, atol=0)
    assert not correction.weights.requires_grad
    assert 0.0 < correction.metrics["offpolicy/ess"] <= 1.0 + 1e-12  # some weight is non-zero here


@pytest.mark.parametrize(("name", "overrides"), [("token_tis", {}), ("token_tis", {"cap": 1.2}), ("token_mask", {}),
                                                 ("token_mask", {"lower": 0.8, "upper": 1.3})])
def test_token_weights_act_on_a_sequence_objective_through_their_product(name, overrides):
    """w_i = Π_t w_{i,t}: token_tis gives Π_t min(r_t, C) (not min(Π_t r_t, C)); token_mask keeps
    a sequence only when every token is inside the band."""
    x, options = inputs(seed=2), make_correction_options(name, overrides)
    correction = correct_advantages(name, x, options, sequence_advantages=True)
    token_weights = NAIVE[name](x, options)
    expected = []
    for i in range(B):
        product = 1.0
        for t in _tokens(x, i):
            product *= token_weights[i][t]
        expected.append(product if _tokens(x, i) else 0.0)  # a row without tokens: 0, like padding
    assert correction.weights.shape == (B,)
    torch.testing.assert_close(correction.weights, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(correction.advantages, x.advantages * torch.tensor(expected, dtype=torch.float64))
    if name == "token_tis" and overrides:
        tis = correct_advantages("sequence_tis", x, make_correction_options("sequence_tis", overrides), True)
        assert not torch.allclose(tis.weights, correction.weights)  # two different estimators


def test_metrics_by_hand():
    x = inputs(seed=3)
    options = make_correction_options("token_tis", {"cap": 1.2})
    metrics = correct_advantages("token_tis", x, options, sequence_advantages=False).metrics
    ratios = [math.exp(_log_r(x, i, t)) for i in range(B) for t in _tokens(x, i)]
    assert metrics["offpolicy/ratio_min"] == pytest.approx(min(ratios), rel=1e-12)
    assert metrics["offpolicy/ratio_max"] == pytest.approx(max(ratios), rel=1e-12)  # raw, before the cap
    assert metrics["offpolicy/truncated_frac"] == pytest.approx(sum(r > 1.2 for r in ratios) / len(ratios))
    assert metrics["offpolicy/masked_frac"] == 0
    assert metrics["offpolicy/kl_k3"] == pytest.approx(sum(r - 1 - math.log(r) for r in ratios) / len(ratios))
    weights = [min(r, 1.2) for r in ratios]
    assert metrics["offpolicy/weight_mean"] == pytest.approx(sum(weights) / len(weights))
    assert metrics["offpolicy/ess"] == pytest.approx(sum(weights) ** 2 / (len(weights) * sum(w * w for w in weights)))
    masked = correct_advantages("sequence_mask", x, make_correction_options("sequence_mask", {}), False).metrics
    kept = naive_sequence_mask(x, make_correction_options("sequence_mask", {}))
    real = [i for i in range(B) if _tokens(x, i)]
    assert masked["offpolicy/masked_frac"] == pytest.approx(sum(kept[i] == 0 for i in real) / len(real))


def test_ess_formula():
    g = torch.Generator().manual_seed(4)
    w = torch.rand(10, generator=g, dtype=torch.float64)
    counted = torch.ones(10, dtype=torch.float64)
    counted[7:] = 0
    ws = w[:7].tolist()
    assert effective_sample_size(w, counted) == pytest.approx(sum(ws) ** 2 / (7 * sum(v * v for v in ws)))
    assert effective_sample_size(torch.full((5,), 0.3), torch.ones(5)) == pytest.approx(1.0)
    one_hot = torch.zeros(4, dtype=torch.float64)
    one_hot[2] = 5.0
    assert effective_sample_size(one_hot, torch.ones(4)) == pytest.approx(0.25)
    assert effective_sample_size(torch.zeros(4), torch.ones(4)) == 0.0  # no sample counts


@pytest.mark.parametrize("name", ["token_mask", "sequence_mask"])
def test_masks_keep_ratios_exactly_at_their_bounds(name):
    """lower <= ρ <= upper keeps (bounds included); the next float outside masks."""
    lower, upper = 0.5, 2.0
    logs = [math.log(lower), math.log(upper), math.nextafter(math.log(lower), -1.0),
            math.nextafter(math.log(upper), 1.0), 0.0]
    prox = torch.tensor([[v] for v in logs], dtype=torch.float64)
    mu = torch.zeros_like(prox)  # log π_prox/μ = the values above, exactly
    ones = torch.ones(5, dtype=torch.float64)
    x = CorrectionInputs(prox, mu, torch.ones(5, 1), ones, torch.zeros(5, dtype=torch.long))
    correction = correct_advantages(name, x, make_correction_options(name, {"lower": lower, "upper": upper}), False)
    assert correction.weights.flatten().tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert correction.metrics["offpolicy/masked_frac"] == pytest.approx(2 / 5)


def test_offpolicy_sequence_mask_at_delta_and_drop_stale_at_max_staleness():
    # per-token KL(μ ‖ π_prox) estimate exactly δ keeps (the rule is KL > δ); A >= 0 always keeps
    prox = torch.tensor([[-0.5, -0.5], [-0.5, -0.5], [-0.6, -0.6]], dtype=torch.float64)
    mu = torch.tensor([[-0.25, -0.25], [-0.25, -0.25], [0.0, 0.0]], dtype=torch.float64)
    adv = torch.tensor([-1.0, 1.0, -1.0], dtype=torch.float64)
    x = CorrectionInputs(prox, mu, torch.ones(3, 2), adv, torch.tensor([0, 1, 2]))
    opsm = correct_advantages("offpolicy_sequence_mask", x, make_correction_options("offpolicy_sequence_mask",
                                                                                     {"delta": 0.25}), False)
    assert opsm.weights.tolist() == [1.0, 1.0, 0.0]
    stale = correct_advantages("drop_stale", x, make_correction_options("drop_stale", {"max_staleness": 1}), False)
    assert stale.weights.tolist() == [1.0, 1.0, 0.0]


@pytest.mark.parametrize("objective", ["grpo", "tic_grpo"])
def test_an_all_masked_batch_has_a_finite_loss_and_zero_gradient(objective):
    x = inputs(seed=5, spread=3.0)
    correction = correct_advantages("token_mask", x, make_correction_options("token_mask",
                                                                            {"lower": 1.0, "upper": 1.0}),
                                    OBJECTIVES.spec(objective).sequence_advantages)
    assert float(correction.weights.abs().sum()) == 0.0
    assert correction.metrics["offpolicy/masked_frac"] == 1.0 and correction.metrics["offpolicy/ess"] == 0.0
    assert all(math.isfinite(v) for v in correction.metrics.values())
    logp = (x.prox_logprobs + 0.1).requires_grad_(True)
    batch = PolicyBatch(logp, x.mask, correction.advantages, old_logprobs=x.prox_logprobs)
    loss, _ = compute_loss(objective, batch, make_objective_config(objective, {}), StepNormalizers.from_mask(x.mask))
    (grad,) = torch.autograd.grad(loss, logp)
    assert math.isfinite(float(loss.detach())) and float(grad.abs().max()) == 0.0


def test_agreeing_logprobs_give_unit_weights():
    x = inputs(seed=6)
    same = CorrectionInputs(x.prox_logprobs, x.prox_logprobs.clone(), x.mask, x.advantages, torch.zeros(B,
                                                                                                    dtype=torch.long))
    for name in DECOUPLED:
        c = correct_advantages(name, same, make_correction_options(name, {}), sequence_advantages=False)
        real = c.weights[x.mask.sum(1) > 0] if c.weights.dim() == 1 else c.weights[x.mask > 0]
        assert torch.equal(real, torch.ones_like(real)), name
        assert c.metrics["offpolicy/kl_k3"] == 0 and c.metrics["offpolicy/ess"] == pytest.approx(1.0), name


def test_mismatch_metrics_match_their_definition():
    x = inputs(seed=7)
    m = mismatch_metrics(x.prox_logprobs, x.behavior_logprobs, x.mask)
    d = (x.prox_logprobs - x.behavior_logprobs)[x.mask.bool()]
    assert m["mismatch/kl_k3"] == pytest.approx(float((d.exp() - 1 - d).mean()), rel=1e-12)
    assert m["mismatch/abs_diff_mean"] == pytest.approx(float(d.abs().mean()))
    assert m["mismatch/abs_diff_max"] == pytest.approx(float(d.abs().max()))


@pytest.mark.parametrize(("name", "overrides", "message"), [
    ("token_tis", {"cap": 0.5}, "token_tis.cap must be >= 1, got float 0.5"),
    ("token_tis", {"caps": 3.0}, "unknown option 'caps' for off-policy correction 'token_tis'; did you mean 'cap'?"),
    ("token_mask", {"lower": 1.5}, "the band must contain 1"),
    ("sequence_mask", {"ratio": "mean"}, "sequence_mask.ratio must be one of: product, geometric_mean"),
    ("drop_stale", {"max_staleness": -1}, "drop_stale.max_staleness must be >= 0"),
    ("tis", {}, "unknown off-policy correction 'tis'"),
])
def test_bad_options(name, overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        make_correction_options(name, overrides)


# --------------------------------------------------------------------------- the π_old rules on a tiny model

TOKENIZER = make_tiny_tokenizer()
STEP = 3


def rollout_and_batch(model, behavior: bool = False, versions: list[int] | None = None, sampler=None):
    g = torch.Generator().manual_seed(11)
    vocab = len(TOKENIZER)
    prompt = torch.randint(3, vocab, (B, 4), generator=g)
    completion = torch.randint(3, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 3:] = 0
    mask[4, 2:] = 0
    rollout = RolloutBatch(prompt_ids=prompt, prompt_mask=torch.ones_like(prompt), completion_ids=completion,
                           completion_mask=mask, truncated=torch.zeros(B, dtype=torch.bool),
                           group_ids=torch.tensor([0, 0, 0, 1, 1, 1]))
    if versions is not None:
        rollout.policy_version = torch.tensor(versions)
    advantages = torch.tensor([1.0, -0.5, -0.5, 0.8, -0.2, -0.6])
    batch = TrainingBatch.from_rollout(rollout, advantages)
    if behavior:
        rollout.behavior_logprobs = sampler_of(model, batch, seed=12) if sampler is None else sampler
    return rollout, batch


def sampler_of(model, batch, seed: int):
    """The log-probs of other weights (a copy of the model moved a little): 'the weights that sampled'."""
    other = make_tiny_model(seed=0, tokenizer=TOKENIZER)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for p in other.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return fixed_logprobs(other, batch, settings_for("grpo", 1)) * batch.completion_mask


def settings_for(objective: str, iterations: int) -> StepSettings:
    return StepSettings(objective=objective, objective_config=make_objective_config(objective, {}),
                        num_iterations=iterations)


def algorithm(correction) -> AlgorithmConfig:
    return AlgorithmConfig.model_validate({"offpolicy_correction": correction})


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_model(seed=0, tokenizer=TOKENIZER).eval()


@pytest.mark.parametrize("objective", OBJECTIVES.names())
def test_bypass_sets_pi_old_to_the_recorded_sampler_logprobs(tiny, objective):
    rollout, batch = rollout_and_batch(tiny, versions=[STEP - 2] * B)
    rollout.sampler_logprobs = sampler_of(tiny, batch, seed=13)
    before = batch.advantages.clone()
    metrics = prepare_old_logprobs(tiny, batch, rollout, settings_for(objective, 1), algorithm("none"), STEP)
    if OBJECTIVES.spec(objective).uses_old_logprobs:
        assert torch.equal(batch.old_logprobs, rollout.sampler_logprobs)  # even at μ = 1: the rows are stale
    else:
        assert batch.old_logprobs is None  # the objective forms no ratio
    assert torch.equal(batch.advantages, before)
    assert metrics["offpolicy/ess"] == 1.0 and metrics["offpolicy/masked_frac"] == 0.0
    assert not any(key.startswith("mismatch/") for key in metrics)  # no engine log-probs


def test_bypass_on_fresh_rows_is_the_classic_loop(tiny):
    rollout, batch = rollout_and_batch(tiny, versions=[STEP] * B)
    assert prepare_old_logprobs(tiny, batch, rollout, settings_for("grpo", 1), algorithm("none"), STEP) == {}
    assert batch.old_logprobs is None  # μ·M = 1: the ratio is 1, nothing recomputed
    rollout, batch = rollout_and_batch(tiny, versions=[STEP] * B)
    assert prepare_old_logprobs(tiny, batch, rollout, settings_for("grpo", 2), algorithm("none"), STEP) == {}
    assert torch.equal(batch.old_logprobs, fixed_logprobs(tiny, batch, settings_for("grpo", 2)))


def test_bypass_with_stale_rows_and_only_engine_logprobs_uses_the_engine(tiny):
    rollout, batch = rollout_and_batch(tiny, behavior=True, versions=[STEP - 1] * B)
    metrics = prepare_old_logprobs(tiny, batch, rollout, settings_for("tic_grpo", 1), algorithm("none"), STEP)
    assert torch.equal(batch.old_logprobs, rollout.behavior_logprobs)
    # the trainer has no numbers under the sampling weights: no engine/trainer mismatch to report
    assert not any(key.startswith("mismatch/") for key in metrics)


def test_engine_mismatch_is_reported_on_fresh_rows(tiny):
    rollout, batch = rollout_and_batch(tiny, behavior=True, versions=[STEP] * B)
    metrics = prepare_old_logprobs(tiny, batch, rollout, settings_for("grpo", 1), algorithm("none"), STEP)
    expected = mismatch_metrics(fixed_logprobs(tiny, batch, settings_for("grpo", 1)), rollout.behavior_logprobs,
                                batch.completion_mask)
    assert {k: metrics[k] for k in expected} == pytest.approx(expected) and expected["mismatch/kl_k3"] > 0


@pytest.mark.parametrize("objective", OBJECTIVES.names())
@pytest.mark.parametrize("name", DECOUPLED)
def test_decoupled_sets_pi_old_to_the_current_weights_and_scales_the_advantages(tiny, objective, name):
    versions = [STEP, STEP - 1, STEP - 2, STEP - 3, STEP, STEP - 1]
    rollout, batch = rollout_and_batch(tiny, versions=versions)
    rollout.sampler_logprobs = sampler_of(tiny, batch, seed=14)
    advantages = batch.advantages.clone()
    settings = settings_for(objective, 2)
    metrics = prepare_old_logprobs(tiny, batch, rollout, settings, algorithm(name), STEP)
    prox = fixed_logprobs(tiny, batch, settings)
    if settings.needs_old_logprobs:
        assert torch.equal(batch.old_logprobs, prox)
    else:
        assert batch.old_logprobs is None
    x = CorrectionInputs(prox, rollout.sampler_logprobs, batch.completion_mask, advantages,
                         torch.tensor([STEP - v for v in versions]))
    options = make_correction_options(name, {})
    token_weights = NAIVE[name](x, options)
    if isinstance(token_weights[0], list) and OBJECTIVES.spec(objective).sequence_advantages:
        weights = torch.tensor([math.prod(token_weights[i][t] for t in _tokens(x, i)) if _tokens(x, i) else 0.0
                                for i in range(B)],
                               dtype=torch.float64)
    else:
        weights = torch.tensor(token_weights, dtype=torch.float64)
    expected = advantages.double()[:, None] * weights if weights.dim() == 2 else advantages.double() * weights
    torch.testing.assert_close(batch.advantages.double(), expected, rtol=1e-6, atol=1e-7)
    assert set(metrics) == {"offpolicy/ess", "offpolicy/weight_mean", "offpolicy/ratio_min", "offpolicy/ratio_max",
                            "offpolicy/truncated_frac", "offpolicy/masked_frac", "offpolicy/kl_k3"}
    assert all(math.isfinite(v) for v in metrics.values())


def test_decoupled_with_an_engine_weighs_against_the_engine(tiny):
    """vLLM at lag 0 (the former behavior_correction: token): w = min(π_prox/μ, C), μ the engine's."""
    rollout, batch = rollout_and_batch(tiny, behavior=True, versions=[STEP] * B)
    advantages = batch.advantages.clone()
    metrics = prepare_old_logprobs(tiny, batch, rollout, settings_for("grpo", 1), algorithm("token_tis"), STEP)
    prox = fixed_logprobs(tiny, batch, settings_for("grpo", 1))
    ratio = (prox - rollout.behavior_logprobs).exp().clamp(max=2.0) * batch.completion_mask
    torch.testing.assert_close(batch.advantages, advantages[:, None] * ratio)
    assert "mismatch/kl_k3" in metrics and "offpolicy/ess" in metrics


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(("overrides", "message"), [
    (["algorithm.offpolicy_correction=token_tiss"],
     "algorithm.offpolicy_correction: unknown value 'token_tiss' (did you mean 'token_tis'?); choose one of: "),
    (["algorithm.offpolicy_correction=token_tis"],
     "nothing to correct: the hf engine samples every batch with the current weights; set rollout.lag, "
     "rollout.mode: async or rollout.engine: vllm"),
    (["rollout.lag=1", "algorithm.offpolicy_correction={name: token_tis, cap: 0.5}"],
     "algorithm.offpolicy_correction: token_tis.cap must be >= 1, got float 0.5"),
    (["rollout.lag=1", "algorithm.offpolicy_correction=drop_stale", "algorithm.offpolicy_correction.cap=2"],
     "unknown option 'cap' for off-policy correction 'drop_stale'"),
    (["algorithm.behavior_correction=token"],
     "algorithm.behavior_correction was replaced by algorithm.offpolicy_correction: write "
     "algorithm.offpolicy_correction: token_tis (token_tis and sequence_tis take a cap; docs/offpolicy.md)"),
    (["algorithm.behavior_correction=sequence", "algorithm.behavior_correction_cap=3.0"],
     "algorithm.behavior_correction and algorithm.behavior_correction_cap were replaced by "
     "algorithm.offpolicy_correction: write algorithm.offpolicy_correction: {name: sequence_tis, cap: 3.0}"),
    # a cap alone truncated nothing (behavior_correction was null): its faithful translation is none
    (["algorithm.behavior_correction_cap=3.0"], "write algorithm.offpolicy_correction: none (token_tis and "
                                                "sequence_tis take a cap"),
])
def test_config_errors(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config({"model": {"name": "tiny-test"}}, overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_config_forms():
    nested = load_config({"model": {"name": "tiny-test"}}, [
        "rollout.lag=2", "algorithm.offpolicy_correction=token_tis", "algorithm.offpolicy_correction.cap=3"])
    assert nested.algorithm.offpolicy_correction.name == "token_tis"
    assert nested.algorithm.offpolicy_correction.options == make_correction_options("token_tis", {"cap": 3.0})
    assert nested.to_dict()["algorithm"]["offpolicy_correction"] == {"name": "token_tis", "cap": 3.0}
    again = load_config(nested.to_dict())  # the written form loads back to the same config
    assert again.to_dict() == nested.to_dict()
    default = load_config({"model": {"name": "tiny-test"}})
    assert default.to_dict()["algorithm"]["offpolicy_correction"] == {"name": "none"}
    vllm = load_config({"model": {"name": "tiny-test"}}, [
        "rollout.engine=vllm", "algorithm.offpolicy_correction={name: sequence_mask, ratio: geometric_mean}"])
    assert vllm.algorithm.offpolicy_correction.options.ratio == "geometric_mean"


def test_the_cli_refuses_a_correction_with_nothing_to_correct(tmp_path, capsys):
    code = main(["train", "--config", str(ROOT / "configs" / "tiny.yaml"), "--output-dir", str(tmp_path / "out"),
                 "--set", "algorithm.offpolicy_correction=sequence_tis", "--set", "logging.progress_bar=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "nothing to correct" in err[0] and "rollout.lag" in err[0]
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


# --------------------------------------------------------------------------- lagged training runs

ROWS = [{"prompt": f"What is {i} + {j}?", "answer": str(i + j)} for i in range(10) for j in range(10)]


def sevens(prompts, completions, **kwargs):
    return [c.count("7") / max(len(c), 1) for c in completions]


RUNS = [("grpo", name) for name in CORRECTIONS.names()] + [("tic_grpo", name) for name in CORRECTIONS.names()]
RUNS += [("tic_grpo", {"name": "token_mask", "lower": 1.0, "upper": 1.0})]  # every stale row masked


@pytest.mark.parametrize(("objective", "correction"), RUNS, ids=[f"{o}-{c}" for o, c in RUNS])
def test_lagged_training_with_every_correction(tmp_path, objective, correction):
    cfg = {
        "output_dir": str(tmp_path / "run"), "max_steps": 4, "seed": 0,
        "model": {"name": "in-process", "chat_template": False},
        "rollout": {"prompts_per_step": 2, "num_generations": 4, "max_new_tokens": 6, "lag": 2},
        "algorithm": {"objective": objective, "num_iterations": 2, "offpolicy_correction": correction},
        "optim": {"lr": 3e-2},
        "eval": {"every_steps": 0, "at_start": False, "at_end": False},
        "logging": {"progress_bar": False, "plot": False},
        "checkpoint": {"every_steps": 0, "save_final": False},
    }
    trainer = Trainer(load_config(cfg), model=make_tiny_model(seed=0, tokenizer=TOKENIZER),
                      tokenizer=make_tiny_tokenizer(), train_rows=ROWS, eval_rows=ROWS[:4], reward_fns=[(sevens, 1.0)])
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 4 and [r["staleness_max"] for r in records] == [0, 1, 2, 2]
    assert [k for r in records for k in r if k != "step" and not is_declared(k)] == []
    for record in records:
        numbers = [v for v in record.values() if isinstance(v, (int, float))]
        assert all(math.isfinite(v) for v in numbers), record
        if record["staleness_max"] > 0 or correction != "none":  # step 1 of a lag-2 run is on-policy
            assert "offpolicy/ess" in record and "offpolicy/masked_frac" in record, record
    if CORRECTIONS.spec(correction if isinstance(correction, str) else correction["name"]).decoupled:
        assert all("offpolicy/kl_k3" in r and "offpolicy/ratio_max" in r for r in records)
    if isinstance(correction, dict):  # the band [1, 1]: the stale steps (t >= 1) are masked whole
        assert all(r["offpolicy/masked_frac"] == 1.0 and r["offpolicy/ess"] == 0.0 for r in records[2:])
