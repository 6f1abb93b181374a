"""The §4.4 variants (gspo, gmpo, dr_grpo, dapo, cispo, dppo_tv/kl, gtpo) and the `beta_norm`
advantage: against naive loops over option grids, padding and micro-batch
invariance under non-default options, and the reductions stated in the literature. What every
objective must satisfy under its defaults (non-finite padding never read, ...) is in
test_objective_contract.py."""

from __future__ import annotations

import itertools
import math
import statistics
import sys

import pytest
import torch
from naive import naive_grpo
from naive_variants import naive_cispo, naive_conflicts, naive_dppo, naive_gmpo, naive_gspo, naive_gtpo
from random_batches import L_MAX, VOCAB, B, T, random_batch

from ticgrpo.core.advantages import ADVANTAGES, compute_advantages
from ticgrpo.core.aggregation import AGGREGATIONS
from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.objectives import OBJECTIVES, compute_loss, make_objective_config
from ticgrpo.core.objectives.gtpo import conflict_tokens


def make_batch(d, leaf, old="old"):
    return PolicyBatch(leaf, d["mask"], d["adv"], old_logprobs=d[old] if old else None, ref_logprobs=d["ref"],
                       token_ids=d["tokens"], group_ids=d["groups"], entropies=d["entropies"])


def loss_and_grad(name, d, config, norms, old="old"):
    leaf = d["logp"].clone().requires_grad_(True)
    loss, metrics = compute_loss(name, make_batch(d, leaf, old), config, norms)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad, metrics


def step_norms(d):
    return StepNormalizers(num_sequences=B, num_tokens=float(d["mask"].sum()), max_new_tokens=L_MAX)


def counts(d):
    return {"n_seq": B, "n_tok": float(d["mask"].sum()), "l_max": L_MAX}


def check(name, options, naive_call, spread=0.4):
    """Loss and gradient of objective `name` equal naive_call(leaf, d) on 3 random batches."""
    for seed in range(3):
        d = random_batch(seed, spread)
        config = make_objective_config(name, options)
        loss, grad, metrics = loss_and_grad(name, d, config, step_norms(d))
        leaf = d["logp"].clone().requires_grad_(True)
        ref_loss = naive_call(leaf, d)
        (ref_grad,) = torch.autograd.grad(ref_loss, leaf)
        torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)
        assert all(torch.isfinite(v) for v in metrics.values()), metrics


PENALTIES = [(0.0, "k3"), (0.05, "k2"), (0.05, "k3")]


# ---------------------------------------------------------------- naive comparisons
@pytest.mark.parametrize(("eps", "penalty"), list(itertools.product(
    [(3e-4, 4e-4), (0.05, 0.1), (None, None), (0.1, None)], PENALTIES)))
def test_gspo_matches_naive(eps, penalty):
    (lo, hi), (beta, kl) = eps, penalty
    options = {"epsilon_low": lo, "epsilon_high": hi, "beta": beta, "kl_estimator": kl}
    check("gspo", options, lambda leaf, d: naive_gspo(
        leaf, d["old"], d["ref"], d["mask"], d["adv"], eps_low=lo, eps_high=hi, beta=beta, kl=kl, n_seq=B),
        spread=0.3)


def test_gspo_cases_exercise_every_branch():
    """With ε (0.05, 0.1) the batches above hold clipped-high, clipped-low and unclipped sequences."""
    seen = set()
    for seed in range(3):
        d = random_batch(seed, spread=0.3)
        _, _, metrics = loss_and_grad("gspo", d, make_objective_config(
            "gspo", {"epsilon_low": 0.05, "epsilon_high": 0.1}), step_norms(d))
        seen |= {key for key in ("clip_frac_low", "clip_frac_high") if metrics[key] > 0}
        seen |= {"unclipped"} if metrics["clip_frac_low"] + metrics["clip_frac_high"] < 1 else set()
    assert seen == {"clip_frac_low", "clip_frac_high", "unclipped"}


@pytest.mark.parametrize(("eps", "penalty"), list(itertools.product([0.4, 0.1, None], PENALTIES)))
def test_gmpo_matches_naive(eps, penalty):
    beta, kl = penalty
    check("gmpo", {"epsilon": eps, "beta": beta, "kl_estimator": kl}, lambda leaf, d: naive_gmpo(
        leaf, d["old"], d["ref"], d["mask"], d["adv"], eps=eps, beta=beta, kl=kl, n_seq=B))


@pytest.mark.parametrize(("name", "options", "expected"), [
    ("dr_grpo", {}, {"eps_low": 0.2, "eps_high": 0.2, "aggregation": "seq-mean-token-sum-norm"}),
    ("dr_grpo", {"beta": 0.05}, {"eps_low": 0.2, "eps_high": 0.2, "aggregation": "seq-mean-token-sum-norm"}),
    ("dapo", {}, {"eps_low": 0.2, "eps_high": 0.28, "aggregation": "token-mean"}),
    ("dapo", {"aggregation": "seq-mean-token-mean", "beta": 0.05},
     {"eps_low": 0.2, "eps_high": 0.28, "aggregation": "seq-mean-token-mean"}),
])
def test_dr_grpo_and_dapo_are_grpo_with_their_defaults(name, options, expected):
    beta = options.get("beta", 0.0)
    check(name, options, lambda leaf, d: naive_grpo(
        leaf, d["old"], d["ref"], d["mask"], d["adv"], beta=beta, kl="k3", **expected,
        n_seq=B, n_tok=float(d["mask"].sum()), l_max=L_MAX))
    assert OBJECTIVES.spec(name).loss is OBJECTIVES.spec("grpo").loss  # one function, no copied formula
    assert OBJECTIVES.spec("dr_grpo").default_advantage == "mean_only"
    assert make_objective_config("dapo").beta == 0.0


@pytest.mark.parametrize(("eps", "penalty", "aggregation"), list(itertools.product(
    [(None, 0.28), (0.2, 0.2), (None, None), (0.1, 5.0)], PENALTIES[:2], ["token-mean", "seq-mean-token-mean"])))
def test_cispo_matches_naive(eps, penalty, aggregation):
    (lo, hi), (beta, kl) = eps, penalty
    options = {"epsilon_low": lo, "epsilon_high": hi, "beta": beta, "kl_estimator": kl, "aggregation": aggregation}
    check("cispo", options, lambda leaf, d: naive_cispo(
        leaf, d["old"], d["ref"], d["mask"], d["adv"], eps_low=lo, eps_high=hi, beta=beta, kl=kl,
        aggregation=aggregation, **counts(d)))


@pytest.mark.parametrize(("name", "delta", "cap", "penalty", "aggregation"), [
    (name, delta, cap, penalty, agg)
    for name, delta in [("dppo_tv", 0.15), ("dppo_tv", 0.05), ("dppo_kl", 0.05), ("dppo_kl", 0.2)]
    for cap, penalty, agg in [(20.0, (0.0, "k3"), "token-mean"), (1.5, (0.05, "k3"), "token-mean"),
                              (None, (0.0, "k3"), "seq-mean-token-sum")]
])
def test_dppo_matches_naive(name, delta, cap, penalty, aggregation):
    beta, kl = penalty
    options = {"delta": delta, "is_cap": cap, "beta": beta, "kl_estimator": kl, "aggregation": aggregation}
    check(name, options, lambda leaf, d: naive_dppo(
        leaf, d["old"], d["ref"], d["mask"], d["adv"], divergence=name[-2:], delta=delta, cap=cap, beta=beta,
        kl=kl, aggregation=aggregation, **counts(d)))


def test_dppo_random_batches_drop_some_tokens_but_not_all():
    for name in ("dppo_tv", "dppo_kl"):
        d = random_batch(0)
        _, _, metrics = loss_and_grad(name, d, make_objective_config(name), step_norms(d))
        assert 0 < metrics["masked_frac"].item() < 0.5


GTPO_CASES = [
    {"entropy_threshold": 0.7, "entropy_penalty": 0.1, "conflict_weight_positive": 2.0,
     "conflict_weight_negative": 0.0, "normalize_by_conflicts": True},
    {"entropy_threshold": None, "entropy_penalty": 0.0, "conflict_weight_positive": 1.5,
     "conflict_weight_negative": 0.5, "normalize_by_conflicts": False},
    {"entropy_threshold": 0.5, "entropy_penalty": 0.3, "conflict_weight_positive": 2.0,
     "conflict_weight_negative": 0.0, "normalize_by_conflicts": True, "beta": 0.05,
     "aggregation": "token-mean"},
]


@pytest.mark.parametrize("options", GTPO_CASES)
def test_gtpo_matches_naive(options):
    def naive(leaf, d):
        return naive_gtpo(
            leaf, d["ref"], d["mask"], d["adv"], d["tokens"], d["entropies"], d["groups"],
            threshold=options["entropy_threshold"], penalty=options["entropy_penalty"],
            w_pos=options["conflict_weight_positive"], w_neg=options["conflict_weight_negative"],
            normalize=options["normalize_by_conflicts"], beta=options.get("beta", 0.0), kl="k3",
            aggregation=options.get("aggregation", "seq-mean-token-mean"), **counts(d))
    check("gtpo", options, naive)


def test_gtpo_random_batches_have_conflicts_and_filtered_rows():
    seen_conflicts = seen_filtered = 0
    for seed in range(3):
        d = random_batch(seed)
        flags = conflict_tokens(d["tokens"], d["mask"], d["adv"], d["groups"])
        expected = naive_conflicts(d["tokens"], d["mask"], d["adv"], d["groups"])
        assert {tuple(x) for x in flags.nonzero().tolist()} == expected
        seen_conflicts += len(expected)
        _, _, metrics = loss_and_grad("gtpo", d, make_objective_config("gtpo"), step_norms(d))
        seen_filtered += metrics["entropy_filtered_frac"].item() > 0
    assert seen_conflicts > 0 and seen_filtered > 0


# ---------------------------------------------------------------- invariances
ALL_CONFIGS = [
    ("gspo", {"epsilon_low": 0.05, "epsilon_high": 0.1}),
    ("gmpo", {}),
    ("dr_grpo", {}),
    ("dapo", {}),
    ("cispo", {}),
    ("dppo_tv", {}),
    ("dppo_kl", {"is_cap": 1.5}),
    ("gtpo", {}),
    ("gtpo", {"aggregation": "token-mean", "conflict_weight_negative": 0.5}),
]


@pytest.mark.parametrize(("name", "options"), ALL_CONFIGS)
def test_padding_invariance(name, options):
    d = random_batch(7)
    config = make_objective_config(name, {"beta": 0.05, **options})
    loss, grad, _ = loss_and_grad(name, d, config, step_norms(d))

    # three extra padded columns filled with garbage, and two fully padded rows
    g = torch.Generator().manual_seed(99)
    def pad(x, fill):
        x = torch.cat([x, fill(B, 3)], dim=1)
        return torch.cat([x, fill(2, T + 3)], dim=0)
    noise = lambda r, c: -torch.rand(r, c, generator=g, dtype=torch.float64) * 4
    ids = lambda r, c: torch.randint(0, VOCAB, (r, c), generator=g)
    p = {k: pad(d[k], noise) for k in ("logp", "old", "ref", "entropies")}
    p["tokens"] = pad(d["tokens"], ids)
    p["mask"] = torch.cat([torch.cat([d["mask"], torch.zeros(B, 3, dtype=torch.float64)], 1),
                           torch.zeros(2, T + 3, dtype=torch.float64)], 0)
    p["adv"] = torch.cat([d["adv"], torch.tensor([5.0, -3.0], dtype=torch.float64)])
    p["groups"] = torch.cat([d["groups"], torch.tensor([0, 1])])
    p_loss, p_grad, _ = loss_and_grad(name, p, config, step_norms(d))
    torch.testing.assert_close(p_loss, loss, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(p_grad[:B, :T], grad, rtol=1e-13, atol=1e-13)
    assert torch.count_nonzero(p_grad[B:]) == 0 and torch.count_nonzero(p_grad[:, T:]) == 0
    d_loss, _, _ = loss_and_grad(name, d, config, None)  # default normalisers ignore padding too
    dp_loss, _, _ = loss_and_grad(name, p, config, None)
    torch.testing.assert_close(dp_loss, d_loss, rtol=1e-13, atol=1e-13)


# GTPO finds conflicts within a group, so its micro-batches must hold whole groups
SPLITS = [[1, 5], [3, 3], [2, 1, 3], [1] * B]
MICRO_CASES = [(name, options, split) for name, options in ALL_CONFIGS
               for split in (SPLITS if not OBJECTIVES.spec(name).couples_group else [[3, 3], [6]])]


@pytest.mark.parametrize(("name", "options", "split"), MICRO_CASES)
def test_micro_batch_invariance(name, options, split):
    d = random_batch(11)
    config = make_objective_config(name, {"beta": 0.05, **options})
    norms = step_norms(d)
    whole_loss, whole_grad, _ = loss_and_grad(name, d, config, norms)
    total, grads, start = torch.zeros((), dtype=torch.float64), [], 0
    for size in split:
        rows = slice(start, start + size)
        part = {k: v[rows] for k, v in d.items()}
        part_loss, part_grad, _ = loss_and_grad(name, part, config, norms)
        total += part_loss
        grads.append(part_grad)
        start += size
    torch.testing.assert_close(total, whole_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.cat(grads), whole_grad, rtol=1e-12, atol=1e-12)


def test_gtpo_micro_batch_invariance_with_group_ids_over_several_micro_batches():
    d = random_batch(5)
    d["groups"] = torch.tensor([0, 0, 1, 1, 2, 2])
    config = make_objective_config("gtpo")
    norms = step_norms(d)
    whole_loss, whole_grad, _ = loss_and_grad("gtpo", d, config, norms)
    for split in ([2, 4], [2, 2, 2], [4, 2]):
        total, grads, start = torch.zeros((), dtype=torch.float64), [], 0
        for size in split:
            part = {k: v[start:start + size] for k, v in d.items()}
            part_loss, part_grad, _ = loss_and_grad("gtpo", part, config, norms)
            total += part_loss
            grads.append(part_grad)
            start += size
        torch.testing.assert_close(total, whole_loss, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(torch.cat(grads), whole_grad, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- reductions
@pytest.mark.parametrize("name", ["gspo", "gmpo"])
def test_on_policy_gradient_has_sequence_mean_token_weights(name):
    """GSPO (and GMPO) at θ = θ_old: ∂loss/∂ℓ_{i,t} = −A_i m_{i,t} / (|o_i| N_seq)."""
    d = random_batch(3)
    d["old"] = d["logp"].clone()
    lengths = d["mask"].sum(1, keepdim=True)
    expected = -d["adv"][:, None] * d["mask"] / lengths / B
    for old in ("old", None):  # explicit θ_old, and the on-policy shortcut
        _, grad, metrics = loss_and_grad(name, d, make_objective_config(name), step_norms(d), old=old)
        torch.testing.assert_close(grad, expected, rtol=1e-14, atol=1e-14)
        assert metrics["clip_frac_high"].item() == 0 and metrics["clip_frac_low"].item() == 0
    _, grpo_grad, _ = loss_and_grad("grpo", d, make_objective_config("grpo"), step_norms(d))
    torch.testing.assert_close(grpo_grad, expected, rtol=1e-14, atol=1e-14)


def test_on_policy_cispo_and_dppo_are_token_mean_reinforce():
    """At θ = θ_old every IS weight is 1 and no token is masked: ∂loss/∂ℓ = −A m / N_tok."""
    d = random_batch(4)
    expected = -d["adv"][:, None] * d["mask"] / d["mask"].sum()
    for name in ("cispo", "dppo_tv", "dppo_kl"):
        _, grad, metrics = loss_and_grad(name, d, make_objective_config(name), step_norms(d), old=None)
        torch.testing.assert_close(grad, expected, rtol=1e-14, atol=1e-14)
    assert metrics["masked_frac"].item() == 0


def test_gspo_one_ratio_one_clip_per_sequence():
    logp = torch.full((2, 4), -1.0, dtype=torch.float64)
    old = logp.clone()
    old[0] -= torch.tensor([0.5, -0.5, 0.5, -0.5], dtype=torch.float64)  # mean log-ratio 0: no clip
    old[1] -= 1e-3  # mean log-ratio 1e-3 > log(1 + 4e-4): the whole sequence is clipped
    d = {"logp": logp, "old": old, "ref": logp, "mask": torch.ones(2, 4, dtype=torch.float64),
         "adv": torch.tensor([1.0, 1.0], dtype=torch.float64), "tokens": torch.zeros(2, 4, dtype=torch.long),
         "entropies": torch.zeros(2, 4, dtype=torch.float64), "groups": torch.tensor([0, 0])}
    loss, grad, metrics = loss_and_grad("gspo", d, make_objective_config("gspo"), None)
    torch.testing.assert_close(grad[0], torch.full((4,), -1 / 8, dtype=torch.float64))  # s = 1, weight 1/|o|N
    assert torch.count_nonzero(grad[1]) == 0
    assert metrics["clip_frac_high"].item() == 0.5
    assert loss.item() == pytest.approx(-(1 + 1.0004) / 2)


def test_gmpo_sign_aware_token_clip():
    logp = torch.full((2, 2), -1.0, dtype=torch.float64)
    old = logp - torch.tensor([[1.0, 0.1], [-1.0, -0.1]], dtype=torch.float64)
    d = {"logp": logp, "old": old, "ref": logp, "mask": torch.ones(2, 2, dtype=torch.float64),
         "adv": torch.tensor([2.0, -2.0], dtype=torch.float64), "tokens": torch.zeros(2, 2, dtype=torch.long),
         "entropies": torch.zeros(2, 2, dtype=torch.float64), "groups": torch.tensor([0, 0])}
    loss, grad, metrics = loss_and_grad("gmpo", d, make_objective_config("gmpo"), None)
    s0, s1 = math.exp((0.4 + 0.1) / 2), math.exp((-0.4 - 0.1) / 2)
    assert loss.item() == pytest.approx((-2 * s0 + 2 * s1) / 2)
    # clipped tokens (x = 1 for A > 0, x = −1 for A < 0) have zero gradient, the others −A s/(|o| N)
    expected = torch.tensor([[0.0, -2 * s0 / 4], [0.0, 2 * s1 / 4]], dtype=torch.float64)
    torch.testing.assert_close(grad, expected)
    assert metrics["clip_frac_high"].item() == 0.25 and metrics["clip_frac_low"].item() == 0.25


def test_cispo_keeps_gradient_where_ppo_clipping_drops_it():
    logp = torch.full((1, 3), -1.0, dtype=torch.float64)
    old = logp - torch.tensor([[1.0, 0.0, -1.0]], dtype=torch.float64)  # ρ = e, 1, 1/e
    d = {"logp": logp, "old": old, "ref": logp, "mask": torch.ones(1, 3, dtype=torch.float64),
         "adv": torch.tensor([1.0], dtype=torch.float64), "tokens": torch.zeros(1, 3, dtype=torch.long),
         "entropies": torch.zeros(1, 3, dtype=torch.float64), "groups": torch.tensor([0])}
    _, grad, metrics = loss_and_grad("cispo", d, make_objective_config("cispo"), None)
    torch.testing.assert_close(grad, -torch.tensor([[1.28, 1.0, math.exp(-1)]], dtype=torch.float64) / 3)
    assert metrics["clip_frac_high"].item() == pytest.approx(1 / 3)
    _, ppo_grad, _ = loss_and_grad("dapo", d, make_objective_config("dapo"), None)
    assert ppo_grad[0, 0] == 0  # PPO clipping drops the token CISPO keeps


# Hand-built probability moves: (π_old, π, A) → dropped by dppo_tv (δ 0.15), by dppo_kl (δ 0.05)
DPPO_MOVES = [
    (0.5, 0.7, 1.0, True, True),     # up by 0.2 with A > 0: outside both regions
    (0.5, 0.6, 1.0, False, False),   # up by 0.1: TV 0.1 < 0.15, binary KL 0.020 < 0.05
    (0.5, 0.3, -1.0, True, True),    # down by 0.2 with A < 0
    (0.5, 0.7, -1.0, False, False),  # moved up, but A < 0 pushes it back down: kept
    (0.5, 0.3, 1.0, False, False),   # moved down, A > 0 pushes it back up: kept
    (0.01, 0.1, 1.0, False, True),   # rare token ×10: TV 0.09 keeps it, binary KL 0.071 drops it
    (0.9, 0.99, 1.0, False, True),   # confident token: TV 0.09, binary KL 0.088
    (0.99, 0.999, 1.0, False, False),  # TV 0.009, binary KL 0.0053
]


@pytest.mark.parametrize("name", ["dppo_tv", "dppo_kl"])
def test_dppo_masks_on_hand_built_moves(name):
    q = torch.tensor([[m[0] for m in DPPO_MOVES]], dtype=torch.float64)
    p = torch.tensor([[m[1] for m in DPPO_MOVES]], dtype=torch.float64)
    adv = torch.tensor([[m[2] for m in DPPO_MOVES]], dtype=torch.float64)  # token-level advantages
    dropped = torch.tensor([[m[3] if name == "dppo_tv" else m[4] for m in DPPO_MOVES]])
    n = len(DPPO_MOVES)
    d = {"logp": p.log(), "old": q.log(), "ref": p.log(), "mask": torch.ones(1, n, dtype=torch.float64),
         "adv": adv, "tokens": torch.zeros(1, n, dtype=torch.long),
         "entropies": torch.zeros(1, n, dtype=torch.float64), "groups": torch.tensor([0])}
    _, grad, metrics = loss_and_grad(name, d, make_objective_config(name), None)
    expected = torch.where(dropped, 0.0, -adv * (p / q).clamp(max=20.0) / n)
    torch.testing.assert_close(grad, expected, rtol=1e-14, atol=1e-14)
    assert metrics["masked_frac"].item() == pytest.approx(dropped.sum().item() / n)


def test_gtpo_conflict_tokens_and_entropy_filter_on_a_hand_built_group():
    # group 0: two correct (A > 0) and two wrong (A < 0) completions; group 1 elsewhere
    tokens = torch.tensor([
        [5, 6, 7, 8, 9, 0],   # + : prefix 5 6 with row 2; suffix 8 9 with row 2
        [5, 1, 2, 3, 0, 0],   # + : prefix 5 with row 2 ("5 6" ≠ "5 1"); suffix "2 3"? row 3 ends "2 3"
        [5, 6, 4, 8, 9, 0],   # − : prefix 5 6 (row 0), 5 (row 1); suffix 8 9 (row 0)
        [7, 7, 2, 3, 0, 0],   # − : suffix 2 3 with row 1
        [5, 6, 7, 8, 9, 0],   # + in group 1 (no opposite-sign completion there): no conflicts
        [1, 1, 1, 1, 0, 0],   # zero advantage: never a conflict
    ])
    lengths = torch.tensor([5, 4, 5, 4, 5, 4])
    mask = (torch.arange(6)[None, :] < lengths[:, None]).to(torch.float64)
    adv = torch.tensor([1.0, 0.5, -1.0, -0.5, 1.0, 0.0], dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    expected = torch.tensor([
        [1, 1, 0, 1, 1, 0],
        [1, 0, 1, 1, 0, 0],
        [1, 1, 0, 1, 1, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
    ], dtype=torch.bool)
    assert torch.equal(conflict_tokens(tokens, mask, adv, groups), expected)
    entropies = torch.full((6, 6), 0.5, dtype=torch.float64)
    entropies[1] = 0.9  # H = 0.9 > 0.7: row 1 filtered (A = 0)
    logp = -torch.rand(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d = {"logp": logp, "old": logp, "ref": logp, "mask": mask, "adv": adv, "tokens": tokens,
         "entropies": entropies, "groups": groups}
    _, grad, metrics = loss_and_grad("gtpo", d, make_objective_config("gtpo"), None)
    a_adj = adv - 0.1 * 0.5
    a_adj[1] = 0.0
    weights = torch.ones(6, 6, dtype=torch.float64)
    weights[[0, 1, 4]] = torch.where(expected[[0, 1, 4]], 2.0, 1.0).double()
    weights[[2, 3]] = torch.where(expected[[2, 3]], 0.0, 1.0).double()
    n_conflicts = expected.sum(1).clamp(min=1).to(torch.float64)
    want = -a_adj[:, None] * weights * mask / lengths[:, None] / n_conflicts[:, None] / 6
    torch.testing.assert_close(grad, want, rtol=1e-14, atol=1e-14)
    assert torch.count_nonzero(grad[1]) == 0  # entropy-filtered
    assert grad[2, 0] == 0 and grad[2, 2] != 0  # negative update skipped on conflict tokens only
    assert metrics["entropy_filtered_frac"].item() == pytest.approx(1 / 6)
    assert metrics["conflict_frac"].item() == pytest.approx(expected.sum().item() / mask.sum().item())
    # without group ids the batch is one group: row 4 now conflicts with row 2 too
    flags = conflict_tokens(tokens, mask, adv, None)
    assert flags[4].sum() == 4


def test_gtpo_needs_token_ids_and_entropies():
    d = random_batch(0)
    with pytest.raises(ValueError, match="gtpo needs token_ids and entropies"):
        compute_loss("gtpo", PolicyBatch(d["logp"], d["mask"], d["adv"]))


# ---------------------------------------------------------------- beta_norm (BNPO)
BINARY = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0],
                       [0.0, 1.0, 1.0, 0.0]], dtype=torch.float64)


def test_beta_norm_matches_the_formula():
    result = compute_advantages("beta_norm", BINARY)
    p = BINARY.mean(1).tolist()
    mu, var = statistics.mean(p), statistics.variance(p)  # Bessel-corrected [choice]
    a = (mu * (1 - mu) / var - 1) * mu
    b = (mu * (1 - mu) / var - 1) * (1 - mu)
    alpha, beta = max(1 + a / 3, 1), max(1 + b / 3, 1)
    log_b = math.lgamma(alpha) + math.lgamma(beta) - math.lgamma(alpha + beta)
    def pdf(x):
        return math.exp((alpha - 1) * math.log(x) + (beta - 1) * math.log(1 - x) - log_b)
    expected = torch.tensor([[(r - pg) / pdf(pg) if 0 < pg < 1 else 0.0 for r in row]
                             for row, pg in zip(BINARY.tolist(), p, strict=True)], dtype=torch.float64)
    torch.testing.assert_close(result.advantages, expected, rtol=1e-12, atol=1e-12)
    assert result.num_zero_std == 1 and alpha > 1 and beta > 1
    pop = compute_advantages("beta_norm", BINARY, unbiased_variance=False).advantages
    assert not torch.allclose(pop, result.advantages)


def test_beta_norm_alpha_beta_one_is_mean_baseline_reinforce():
    rewards = torch.tensor([[0.2, 0.9, 0.4], [0.0, 0.5, 1.0], [0.3, 0.3, 0.3]], dtype=torch.float64)
    forced = compute_advantages("beta_norm", rewards, fixed_alpha=1.0, fixed_beta=1.0).advantages
    expected = compute_advantages("mean_only", rewards).advantages
    torch.testing.assert_close(forced, expected, rtol=1e-14, atol=1e-14)
    # batch statistics that give α = β = 1 by themselves: group means 0, 1, 1/2 → μ = 1/2,
    # σ² = 1/4 (Bessel), μ(1−μ)/σ² − 1 = 0 ⇒ a = b = 0
    natural = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(compute_advantages("beta_norm", natural).advantages,
                               torch.tensor([[0.0, 0.0], [0.0, 0.0], [-0.5, 0.5]], dtype=torch.float64))


def test_beta_norm_three_halves_is_group_norm_for_binary_rewards():
    """Beta(3/2, 3/2) pdf = (8/π) sqrt(p(1−p)), so A = (π/8)(r − p)/sqrt(p(1−p)); group_norm
    (δ = 0, Bessel std sqrt(G/(G−1)) sqrt(p(1−p)) for binary rewards) differs by a constant."""
    beta_norm = compute_advantages("beta_norm", BINARY, fixed_alpha=1.5, fixed_beta=1.5).advantages
    group_norm = compute_advantages("group_norm", BINARY, delta=0.0).advantages
    group_size = BINARY.shape[1]
    torch.testing.assert_close(beta_norm, group_norm * math.pi / 8 * math.sqrt(group_size / (group_size - 1)),
                               rtol=1e-12, atol=1e-12)


def test_beta_norm_reward_mapping_and_errors():
    scaled = BINARY * 4 - 2  # rewards in [−2, 2]
    with pytest.raises(ValueError, match=r"beta_norm needs rewards in \[0.0, 1.0\].*reward_min"):
        compute_advantages("beta_norm", scaled)
    mapped = compute_advantages("beta_norm", scaled, reward_min=-2.0, reward_max=2.0).advantages
    torch.testing.assert_close(mapped, compute_advantages("beta_norm", BINARY).advantages)
    with pytest.raises(ValueError, match="reward_max > reward_min"):
        compute_advantages("beta_norm", BINARY, reward_min=1.0, reward_max=1.0)
    # one group: σ² cannot be estimated, α = β = 1; all-constant batch: zeros, no NaN
    one = compute_advantages("beta_norm", BINARY[:1]).advantages
    torch.testing.assert_close(one, BINARY[:1] - 0.5)
    flat = compute_advantages("beta_norm", torch.tensor([[0.0, 0.0], [1.0, 1.0]])).advantages
    assert torch.equal(flat, torch.zeros(2, 2))
    assert "beta_norm" in ADVANTAGES


def test_beta_norm_weight_is_capped_and_finite():
    # p close to 0 with a large α: 1/pdf would be astronomically large; capped at 1e6
    rewards = torch.zeros(40, 1000, dtype=torch.float64)
    rewards[:20, 0] = 1.0  # p = 1e-3 in half the groups
    rewards[20:, :] = torch.linspace(0, 1, 1000, dtype=torch.float64)  # p = 1/2
    adv = compute_advantages("beta_norm", rewards, fixed_alpha=40.0, fixed_beta=2.0).advantages
    assert torch.isfinite(adv).all()
    assert adv[0, 0].item() == pytest.approx(1e6 * (1 - 1e-3))


# ---------------------------------------------------------------- numerical safety
@pytest.mark.parametrize("name", ["gspo", "gmpo", "cispo", "dppo_tv", "dppo_kl", "dr_grpo", "dapo", "gtpo"])
@pytest.mark.parametrize("log_ratio", [1e4, -1e4, 300.0, -300.0])
def test_no_nan_or_inf_for_extreme_ratios(name, log_ratio):
    config = make_objective_config(name, {"beta": 0.1})
    for advantage in (1.5, -1.5):
        for dtype in (torch.float32, torch.bfloat16):
            logp = torch.full((2, 8), -1.0, dtype=dtype)
            old = logp - log_ratio / 8
            leaf = logp.clone().requires_grad_(True)
            batch = PolicyBatch(leaf, torch.ones(2, 8), torch.tensor([advantage, -advantage], dtype=dtype),
                                old_logprobs=old, ref_logprobs=logp + 50.0,
                                token_ids=torch.zeros(2, 8, dtype=torch.long), group_ids=torch.tensor([0, 0]),
                                entropies=torch.full((2, 8), 0.2, dtype=dtype))
            loss, metrics = compute_loss(name, batch, config)
            loss.backward()
            assert loss.dtype == torch.float32
            assert leaf.grad is not None
            assert torch.isfinite(loss) and torch.isfinite(leaf.grad.float()).all(), (name, advantage, dtype)
            for key, value in metrics.items():
                if not key.startswith("ratio_"):  # the raw ratio statistic may legitimately be inf
                    assert torch.isfinite(value), key


# ---------------------------------------------------------------- registry
def test_registry_entries_and_meta():
    expected = {"gspo": "group_norm", "gmpo": "group_norm", "dr_grpo": "mean_only", "dapo": "group_norm",
                "cispo": "group_norm", "dppo_tv": "group_norm", "dppo_kl": "group_norm", "gtpo": "group_norm"}
    for name, advantage in expected.items():
        spec = OBJECTIVES.spec(name)
        assert spec.default_advantage == advantage
        assert spec.uses_old_logprobs == (name != "gtpo")
        assert "arXiv" in (sys.modules[spec.loss.__module__].__doc__ or "")  # formula + paper reference
    defaults: dict[str, dict[str, object]] = {
        "gspo": {"epsilon_low": 3e-4, "epsilon_high": 4e-4, "beta": 0.0},
        "gmpo": {"epsilon": 0.4},
        "dr_grpo": {"epsilon_low": 0.2, "epsilon_high": 0.2, "aggregation": "seq-mean-token-sum-norm"},
        "dapo": {"epsilon_low": 0.2, "epsilon_high": 0.28, "aggregation": "token-mean", "beta": 0.0},
        "cispo": {"epsilon_low": None, "epsilon_high": 0.28, "aggregation": "token-mean"},
        "dppo_tv": {"delta": 0.15, "is_cap": 20.0, "aggregation": "token-mean"},
        "dppo_kl": {"delta": 0.05, "is_cap": 20.0, "aggregation": "token-mean"},
        "gtpo": {"entropy_threshold": 0.7, "entropy_penalty": 0.1, "conflict_weight_positive": 2.0,
                 "conflict_weight_negative": 0.0, "normalize_by_conflicts": True, "beta": 0.0},
    }
    for name, values in defaults.items():
        config = make_objective_config(name)
        for key, value in values.items():
            assert getattr(config, key) == value, (name, key)
    with pytest.raises(ValueError, match="unknown option 'eps' for objective 'gmpo'"):
        make_objective_config("gmpo", {"eps": 0.2})
    with pytest.raises(ValueError, match=r"dppo_kl\.delta must be >= 0"):
        make_objective_config("dppo_kl", {"delta": -1})
    with pytest.raises(ValueError, match=r"cispo\.aggregation must be one of: "):
        make_objective_config("cispo", {"aggregation": "mean"})


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_gtpo_and_cispo_accept_every_aggregation(aggregation):
    d = random_batch(2)
    for name in ("gtpo", "cispo", "dppo_tv"):
        loss, _, _ = loss_and_grad(name, d, make_objective_config(name, {"aggregation": aggregation}), step_norms(d))
        assert torch.isfinite(loss)
