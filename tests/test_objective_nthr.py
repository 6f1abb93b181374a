"""`nthr` (ticgrpo/core/objectives/nthr.py): its token weights against the naive loop, which
tokens it leaves alone, the exact down-weighting, stop-gradient hidden states, and the trainer's
side (hidden states from the forward pass, whole groups per minibatch and micro-batch)."""

from __future__ import annotations

import pytest
import torch
from naive_variants import ORACLES, naive_nthr_advantages
from random_batches import L_MAX, B, random_batch

from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.objectives import compute_loss, make_objective_config
from ticgrpo.core.objectives.nthr import token_influence


def _batch(d, logprobs, hidden=None, advantages=None):
    return PolicyBatch(logprobs, d["mask"], d["adv"] if advantages is None else advantages, old_logprobs=d["old"],
                       ref_logprobs=d["ref"], group_ids=d["groups"],
                       hidden_states=d["hidden"] if hidden is None else hidden)


def _norms(d):
    return StepNormalizers(num_sequences=B, num_tokens=float(d["mask"].sum()), max_new_tokens=L_MAX)


def _grad(name, batch_of, d, options):
    leaf = d["logp"].clone().requires_grad_(True)
    loss, _ = compute_loss(name, batch_of(leaf), options, _norms(d))
    (grad,) = torch.autograd.grad(loss, leaf)
    return grad


@pytest.mark.parametrize(("threshold", "scale", "aggregation"), [
    (0.5, 0.2, "token-mean"), (0.95, 0.0, "seq-mean-token-sum"), (-1.0, 1.0, "seq-mean-token-mean")])
def test_matches_the_naive_loop_with_other_options(threshold, scale, aggregation):
    options = make_objective_config("nthr", {"similarity_threshold": threshold, "penalty_scale": scale,
                                             "aggregation": aggregation, "beta": 0.05})
    counts = {"n_seq": B, "n_tok": None, "l_max": L_MAX}
    for seed in range(3):
        d = random_batch(seed)
        counts["n_tok"] = float(d["mask"].sum())
        leaf = d["logp"].clone().requires_grad_(True)
        loss, _ = compute_loss("nthr", _batch(d, leaf), options, _norms(d))
        expected_leaf = d["logp"].clone().requires_grad_(True)
        expected = ORACLES["nthr"]({**d, "logp": expected_leaf}, options, counts)
        torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(torch.autograd.grad(loss, leaf)[0], torch.autograd.grad(expected, expected_leaf)[0],
                                   rtol=1e-10, atol=1e-12)
        weights = token_influence(_batch(d, d["logp"]), options).weights
        naive = naive_nthr_advantages(d["hidden"], d["mask"], d["adv"], d["groups"], threshold=threshold, scale=scale)
        adv = d["adv"][:, None].expand_as(weights)
        torch.testing.assert_close(weights * adv * d["mask"], torch.tensor(naive, dtype=torch.float64) * d["mask"])


def test_positive_tokens_and_groups_without_a_correct_response_are_untouched():
    """Against grpo on the same batch: rows with A ≥ 0 and every row of a group with no A > 0 get grpo's
    gradient exactly; some negative token of the other group does not (the test is not vacuous)."""
    d = random_batch(0)
    d["adv"] = torch.tensor([1.2, 0.0, -0.8, -0.5, -1.1, 0.0], dtype=torch.float64)  # group 1: no correct one
    options = make_objective_config("nthr", {"similarity_threshold": 0.5})
    grpo = make_objective_config("grpo")
    ours = _grad("nthr", lambda leaf: _batch(d, leaf), d, options)
    reference = _grad("grpo", lambda leaf: _batch(d, leaf), d, grpo)
    untouched = torch.tensor([0, 1, 3, 4, 5])
    torch.testing.assert_close(ours[untouched], reference[untouched], rtol=0, atol=0)
    assert not torch.equal(ours[2], reference[2])


def test_a_negative_token_equal_to_a_correct_one_is_scaled_by_exactly_the_scale():
    d = random_batch(1)
    d["adv"] = torch.tensor([1.0, -1.0, 0.5, 0.7, -0.4, -0.9], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(B, d["mask"].shape[1], 64, generator=g, dtype=torch.float64)  # wide: random cosines ≈ 0
    assert d["mask"][1, :2].all() and d["mask"][0, 3]
    hidden[1, 0] = hidden[0, 3]  # token 0 of the negative row 1 = token 3 of the correct row 0
    for scale in (0.0, 0.3, 0.5):
        options = make_objective_config("nthr", {"penalty_scale": scale})
        influence = token_influence(_batch(d, d["logp"], hidden), options)
        assert influence.similarity[1, 0] == pytest.approx(1.0, abs=1e-12)
        assert influence.weights[1, 0] == scale and influence.weights[1, 1] == 1.0
        ours = _grad("nthr", lambda leaf: _batch(d, leaf, hidden), d, options)
        plain = _grad("nthr", lambda leaf: _batch(d, leaf, hidden), d,
                      make_objective_config("nthr", {"penalty_scale": 1.0}))  # λ = 1 is grpo
        torch.testing.assert_close(ours[1, 0], scale * plain[1, 0], rtol=1e-14, atol=0)
        torch.testing.assert_close(ours[1, 1], plain[1, 1], rtol=0, atol=0)


def test_hidden_states_never_get_a_gradient():
    d = random_batch(2)
    hidden = d["hidden"].clone().requires_grad_(True)
    leaf = d["logp"].clone().requires_grad_(True)
    loss, metrics = compute_loss("nthr", _batch(d, leaf, hidden), make_objective_config("nthr"), _norms(d))
    grads = torch.autograd.grad(loss, [leaf, hidden], allow_unused=True)
    assert grads[1] is None and torch.count_nonzero(grads[0]) > 0
    assert 0 < float(metrics["nthr_downweighted_frac"]) < 1 and float(metrics["nthr_similarity_mean"]) > 0


def test_bad_input_is_one_line():
    d = random_batch(0)
    with pytest.raises(ValueError, match=r"nthr needs hidden_states in the batch"):
        compute_loss("nthr", PolicyBatch(d["logp"], d["mask"], d["adv"], group_ids=d["groups"]))
    with pytest.raises(ValueError, match=r"hidden_states must be \[B, T, H\]"):
        PolicyBatch(d["logp"], d["mask"], d["adv"], hidden_states=d["hidden"][:, :3])
    with pytest.raises(ValueError, match=r"nthr.similarity_threshold must be <= 1"):
        make_objective_config("nthr", {"similarity_threshold": 1.5})
    with pytest.raises(ValueError, match=r"nthr.penalty_scale must be <= 1"):
        make_objective_config("nthr", {"penalty_scale": 2.0})


# ---------------------------------------------------------------- the trainer's side
@pytest.mark.parametrize("path", ["fast", "fallback"])
def test_forward_pass_returns_the_detached_hidden_states_the_head_reads(path, monkeypatch):
    from ticgrpo.core import logprobs as logprobs_module
    from ticgrpo.core.logprobs import completion_logprobs, completion_scores
    from ticgrpo.testing import make_tiny_model

    if path == "fallback":  # the path of models whose logits are not plain lm_head(hidden)
        monkeypatch.setattr(logprobs_module, "_resolve_decoder_and_head", lambda model: None)

    model = make_tiny_model(seed=0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 50, (3, 9), generator=g)
    attention = torch.ones_like(ids)
    attention[0, :2] = 0  # a left-padded prompt
    completion_mask = torch.ones(3, 5, dtype=torch.long)
    completion_mask[1, 3:] = 0  # a right-padded completion
    attention[1, -2:] = 0
    scores = completion_scores(model, ids, attention, ids[:, -5:], completion_mask, with_hidden_states=True)
    logp, _ = completion_logprobs(model, ids, attention, ids[:, -5:], completion_mask)
    torch.testing.assert_close(scores.logprobs, logp, rtol=0, atol=0)
    assert scores.hidden_states is not None and not scores.hidden_states.requires_grad
    from ticgrpo.core.logprobs import position_ids_from_mask

    out = model(input_ids=ids, attention_mask=attention, position_ids=position_ids_from_mask(attention),
                output_hidden_states=True)
    expected = out.hidden_states[-1][:, -6:-1]  # position P-1+t predicts completion token t
    real = completion_mask.bool()
    torch.testing.assert_close(scores.hidden_states[real], expected[real].detach(), rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(scores.hidden_states[~real]) == 0
    assert completion_scores(model, ids, attention, ids[:, -5:], completion_mask).hidden_states is None


def test_minibatches_keep_groups_whole_and_micro_batches_are_checked():
    from ticgrpo.train.inner_loop import minibatches
    from ticgrpo.train.step import check_whole_groups

    group_ids = torch.arange(6).repeat_interleave(4)  # 6 groups of 4
    torch.manual_seed(0)
    parts = list(minibatches(24, 3, group_ids))
    assert sorted(torch.cat(parts).tolist()) == list(range(24))
    for part in parts:
        assert len(part) == 8
        for group in group_ids[part].unique():
            assert int((group_ids[part] == group).sum()) == 4
    check_whole_groups(group_ids[:8], group_ids)
    with pytest.raises(ValueError, match=r"micro-batch holds part of a group: set algorithm.micro_batch_size"):
        check_whole_groups(group_ids[:6], group_ids)


def test_config_refuses_micro_batches_that_split_groups(tmp_path):
    from ticgrpo.config.loading import load_config

    base = {"output_dir": str(tmp_path / "run"), "rollout": {"prompts_per_step": 2, "num_generations": 4},
            "algorithm": {"objective": "nthr", "micro_batch_size": 2}}
    with pytest.raises(ValueError, match=r"micro_batch_size=2 splits groups of rollout.num_generations=4"):
        load_config(base)
    base["algorithm"]["micro_batch_size"] = 4
    assert load_config(base).algorithm.objective.name == "nthr"


def test_the_plug_ins_and_the_lab_outside_monte_carlo_refuse_it_in_one_line():
    from ticgrpo.core.objectives import OBJECTIVES
    from ticgrpo.integrations import verl
    from ticgrpo.lab.variants import get_variant

    with pytest.raises(ValueError, match=r"not available in verl.*hidden states"):
        verl.make_policy_loss("nthr")
    with pytest.raises(ValueError, match=r"the lab cannot run 'nthr'.*reads hidden states"):
        get_variant("nthr")
    trl = pytest.importorskip("ticgrpo.integrations.trl")
    reason = trl.unsupported_reason(OBJECTIVES.spec("nthr"), make_objective_config("nthr"))
    assert reason is not None and "hidden states" in reason


# ---------------------------------------------------------------- the lab: Monte Carlo rows only
def test_lab_bias_gives_nthr_monte_carlo_rows_and_no_exact_one():
    from ticgrpo.lab.bias import BiasConfig, run_bias
    from ticgrpo.lab.enumerate import enumerate_trajectories
    from ticgrpo.lab.estimators import Problem, expected_gradient_exact, prefix_features
    from ticgrpo.lab.policies import make_policy
    from ticgrpo.lab.rewards import make_rewards
    from ticgrpo.lab.variants import get_variant

    result = run_bias(BiasConfig(vocab=3, max_len=3, steps=(0, 2), objectives=("grpo", "nthr"), mc_groups=200), False)
    rows = [row for row in result["rows"] if row["variant"] == "nthr"]
    assert sorted({row["estimate"] for row in rows}) == ["fixed (MC)", "group_norm (MC)"]
    assert all(row["noise_floor_current"] > 0 and row["rel_err_current"] == row["rel_err_current"] for row in rows)
    grpo_estimates = {row["estimate"] for row in result["rows"] if row["variant"] == "grpo"}
    assert "fixed (exact)" in grpo_estimates  # the other rows keep their exact path
    space = enumerate_trajectories(3, 3)
    problem = Problem(space, make_policy("tabular", space, 1.0), make_rewards("target", space))
    theta = problem.policy.init(0)
    with pytest.raises(ValueError, match=r"'nthr' couples the completions of a group: its E\[ĝ\] has no exact path"):
        expected_gradient_exact(problem, get_variant("nthr", monte_carlo=True), theta, theta, 0.5)
    rows_idx = torch.arange(space.num_trajectories)
    features = prefix_features(space, rows_idx)
    # position 0 of every trajectory is produced by the empty prefix: one shared state
    torch.testing.assert_close(features[:, 0], features[:1, 0].expand_as(features[:, 0]), rtol=0, atol=0)
    assert torch.count_nonzero(features[~space.mask.bool()]) == 0
