"""The objectives against naive loop implementations, and the invariances the trainer
relies on (padding, micro-batching), the on-policy identities and the clipping branches."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from naive import naive_grpo, naive_tic_grpo

from ticgrpo.core.aggregation import AGGREGATIONS
from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.objectives import OBJECTIVES, compute_loss, make_objective_config

B, T, L_MAX = 6, 7, 9


def random_batch(seed: int, spread: float = 0.4, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    old = logp + spread * torch.randn(B, T, generator=g, dtype=torch.float64)
    ref = logp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(torch.float64)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    adv[1] = 0.0
    return logp.to(dtype), old.to(dtype), ref.to(dtype), mask, adv.to(dtype)


def loss_and_grad(name, logp, old, ref, mask, adv, config, norms):
    leaf = logp.clone().requires_grad_(True)
    batch = PolicyBatch(leaf, mask, adv, old_logprobs=old, ref_logprobs=ref)
    loss, metrics = compute_loss(name, batch, config, norms)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad, metrics


def naive_loss_and_grad(fn, logp, *args, **kwargs):
    leaf = logp.clone().requires_grad_(True)
    loss = fn(leaf, *args, **kwargs)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad


GRPO_CASES = [
    {"aggregation": agg, "epsilon_low": lo, "epsilon_high": hi, "beta": beta, "kl_estimator": kl}
    for agg, (lo, hi), (beta, kl) in itertools.product(
        AGGREGATIONS,
        [(0.2, 0.2), (0.2, 0.28), (None, None), (0.1, None)],
        [(0.0, "k3"), (0.05, "k1"), (0.05, "k2"), (0.05, "k3")],
    )
]


@pytest.mark.parametrize("options", GRPO_CASES, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_grpo_matches_naive(options):
    for seed in range(3):
        logp, old, ref, mask, adv = random_batch(seed)
        norms = StepNormalizers(num_sequences=B, num_tokens=float(mask.sum()), max_new_tokens=L_MAX)
        config = make_objective_config("grpo", options)
        loss, grad, _ = loss_and_grad("grpo", logp, old, ref, mask, adv, config, norms)
        ref_loss, ref_grad = naive_loss_and_grad(
            naive_grpo, logp, old, ref, mask, adv,
            eps_low=options["epsilon_low"], eps_high=options["epsilon_high"], beta=options["beta"],
            kl=options["kl_estimator"], aggregation=options["aggregation"],
            n_seq=B, n_tok=float(mask.sum()), l_max=L_MAX,
        )
        torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_no_is_matches_naive(aggregation, beta):
    for seed in range(3):
        logp, old, ref, mask, adv = random_batch(seed)
        norms = StepNormalizers(num_sequences=B, num_tokens=float(mask.sum()), max_new_tokens=L_MAX)
        config = make_objective_config("no_is", {"aggregation": aggregation, "beta": beta})
        loss, grad, _ = loss_and_grad("no_is", logp, old, ref, mask, adv, config, norms)
        ref_loss, ref_grad = naive_loss_and_grad(
            naive_grpo, logp, old, ref, mask, adv, eps_low=None, eps_high=None, beta=beta, kl="k3",
            aggregation=aggregation, n_seq=B, n_tok=float(mask.sum()), l_max=L_MAX, no_ratio=True,
        )
        torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)


TIC_CASES = [
    {"epsilon_high": hi, "epsilon_low": lo, "ratio_cap": cap, "length_normalize": ln, "beta": beta,
     "kl_estimator": kl}
    for hi, lo, cap, ln, (beta, kl) in itertools.product(
        [0.2, 0.5, None], [None, 0.2], [None, 1.5], [False, True], [(0.0, "k3"), (0.05, "k2"), (0.05, "k3")]
    )
]


@pytest.mark.parametrize("options", TIC_CASES, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_tic_grpo_matches_naive(options):
    for seed in range(3):
        # spread 0.15 per token keeps log w within a few units so every branch occurs
        logp, old, ref, mask, adv = random_batch(seed, spread=0.15)
        norms = StepNormalizers(num_sequences=B, num_tokens=float(mask.sum()), max_new_tokens=L_MAX)
        config = make_objective_config("tic_grpo", options)
        loss, grad, _ = loss_and_grad("tic_grpo", logp, old, ref, mask, adv, config, norms)
        ref_loss, ref_grad = naive_loss_and_grad(
            naive_tic_grpo, logp, old, ref, mask, adv,
            eps_low=options["epsilon_low"], eps_high=options["epsilon_high"], ratio_cap=options["ratio_cap"],
            length_normalize=options["length_normalize"], beta=options["beta"], kl=options["kl_estimator"],
            n_seq=B,
        )
        torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)


def test_tic_grpo_cases_exercise_every_branch():
    """The random batches above really hit clipped and unclipped sequences of both signs."""
    seen = set()
    for seed in range(3):
        logp, old, _, mask, adv = random_batch(seed, spread=0.15)
        log_w = ((logp - old) * mask).sum(1)
        for a, lw in zip(adv.tolist(), log_w.tolist(), strict=True):
            seen.add((a > 0, lw > torch.log1p(torch.tensor(0.2)).item(), lw < torch.log1p(torch.tensor(-0.2)).item()))
    assert (True, True, False) in seen  # A > 0 clipped above
    assert (True, False, False) in seen or (True, False, True) in seen  # A > 0 not clipped
    assert any(not a for a, _, _ in seen)  # A < 0 present


ALL_CONFIGS = [("grpo", {"aggregation": a}) for a in AGGREGATIONS] + [
    ("no_is", {"aggregation": a}) for a in AGGREGATIONS
] + [("tic_grpo", {}), ("tic_grpo", {"length_normalize": True, "epsilon_low": 0.2, "beta": 0.1})]


@pytest.mark.parametrize(("name", "options"), ALL_CONFIGS)
def test_padding_invariance(name, options):
    logp, old, ref, mask, adv = random_batch(7)
    config = make_objective_config(name, {"beta": 0.05, **options})
    norms = StepNormalizers(num_sequences=B, num_tokens=float(mask.sum()), max_new_tokens=L_MAX)
    loss, grad, _ = loss_and_grad(name, logp, old, ref, mask, adv, config, norms)

    # three extra padded columns filled with garbage, and two fully padded rows
    g = torch.Generator().manual_seed(99)
    def pad(x, fill_rows):
        x = torch.cat([x, torch.randn(B, 3, generator=g, dtype=x.dtype)], dim=1)
        return torch.cat([x, fill_rows(2, T + 3)], dim=0)
    noise = lambda r, c: torch.randn(r, c, generator=g, dtype=torch.float64)
    p_logp, p_old, p_ref = pad(logp, noise), pad(old, noise), pad(ref, noise)
    p_mask = torch.cat([torch.cat([mask, torch.zeros(B, 3, dtype=mask.dtype)], 1), torch.zeros(2, T + 3)], 0)
    p_adv = torch.cat([adv, torch.tensor([5.0, -3.0], dtype=torch.float64)])
    p_loss, p_grad, _ = loss_and_grad(name, p_logp, p_old, p_ref, p_mask.double(), p_adv, config, norms)
    torch.testing.assert_close(p_loss, loss, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(p_grad[:B, :T], grad, rtol=1e-13, atol=1e-13)
    assert torch.count_nonzero(p_grad[B:]) == 0 and torch.count_nonzero(p_grad[:, T:]) == 0
    # default normalisers ignore padding as well
    d_loss, _, _ = loss_and_grad(name, logp, old, ref, mask, adv, config, None)
    dp_loss, _, _ = loss_and_grad(name, p_logp, p_old, p_ref, p_mask.double(), p_adv, config, None)
    torch.testing.assert_close(dp_loss, d_loss, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize(("name", "options"), ALL_CONFIGS)
@pytest.mark.parametrize("split", [[1, 5], [2, 2, 2], [3, 1, 1, 1], [1] * B])
def test_micro_batch_invariance(name, options, split):
    logp, old, ref, mask, adv = random_batch(11)
    config = make_objective_config(name, {"beta": 0.05, **options})
    norms = StepNormalizers(num_sequences=B, num_tokens=float(mask.sum()), max_new_tokens=L_MAX)
    whole_loss, whole_grad, _ = loss_and_grad(name, logp, old, ref, mask, adv, config, norms)
    total_loss = torch.zeros((), dtype=torch.float64)
    grads = []
    start = 0
    for size in split:
        rows = slice(start, start + size)
        part_loss, part_grad, _ = loss_and_grad(
            name, logp[rows], old[rows], ref[rows], mask[rows], adv[rows], config, norms
        )
        total_loss += part_loss
        grads.append(part_grad)
        start += size
    torch.testing.assert_close(total_loss, whole_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.cat(grads), whole_grad, rtol=1e-12, atol=1e-12)


def test_on_policy_identities():
    """At θ = θ_old: ∇ tic_grpo surrogate_i = A_i Σ_t ∇ℓ, ∇ grpo = A_i (1/|o_i|) Σ_t ∇ℓ."""
    logp, _, ref, mask, adv = random_batch(3)
    lengths = mask.sum(1, keepdim=True)
    norms = StepNormalizers(num_sequences=B, num_tokens=float(mask.sum()), max_new_tokens=L_MAX)
    for old in (logp.clone(), None):  # explicit θ_old, and the on-policy shortcut
        _, tic_grad, _ = loss_and_grad("tic_grpo", logp, old, ref, mask, adv, make_objective_config("tic_grpo"), norms)
        _, grpo_grad, _ = loss_and_grad("grpo", logp, old, ref, mask, adv, make_objective_config("grpo"), norms)
        # loss = −(1/N_seq) Σ_i surrogate_i, so ∂loss/∂ℓ_{i,t} = −A_i m_{i,t} / N_seq (× 1/|o_i| for grpo)
        torch.testing.assert_close(tic_grad, -adv[:, None] * mask / B, rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(grpo_grad, -adv[:, None] * mask / lengths / B, rtol=1e-14, atol=1e-14)


def _single_sequence(log_w: float, advantage: float, length: int = 4, dtype=torch.float64):
    logp = torch.full((1, length), -1.0, dtype=dtype)
    old = logp - log_w / length
    mask = torch.ones(1, length, dtype=torch.float64)
    return logp, old, mask, torch.tensor([advantage], dtype=dtype)


def test_tic_clipping_branches():
    config = make_objective_config("tic_grpo", {"epsilon_high": 0.2})
    norms = StepNormalizers(1, 4, 4)
    # A > 0, w > 1 + ε: clipped, zero gradient, value −(1+ε)A
    logp, old, mask, adv = _single_sequence(0.5, 2.0)
    loss, grad, metrics = loss_and_grad("tic_grpo", logp, old, None, mask, adv, config, norms)
    assert torch.count_nonzero(grad) == 0
    assert loss.item() == pytest.approx(-1.2 * 2.0)
    assert metrics["clip_frac_high"].item() == 1.0
    # A > 0, w < 1 + ε: unclipped, ∂/∂ℓ_t = −A w
    logp, old, mask, adv = _single_sequence(0.1, 2.0)
    _, grad, _ = loss_and_grad("tic_grpo", logp, old, None, mask, adv, config, norms)
    torch.testing.assert_close(grad, torch.full_like(grad, -2.0 * float(torch.exp(torch.tensor(0.1)))))
    # A < 0, large w: the upper-only clip never binds
    logp, old, mask, adv = _single_sequence(2.0, -1.0)
    loss, grad, _ = loss_and_grad("tic_grpo", logp, old, None, mask, adv, config, norms)
    w = float(torch.exp(torch.tensor(2.0, dtype=torch.float64)))
    assert loss.item() == pytest.approx(w)
    torch.testing.assert_close(grad, torch.full_like(grad, w))
    # ... unless ratio_cap is set: bounded at cap·A, zero gradient
    capped = make_objective_config("tic_grpo", {"ratio_cap": 3.0})
    loss, grad, _ = loss_and_grad("tic_grpo", logp, old, None, mask, adv, capped, norms)
    assert loss.item() == pytest.approx(3.0) and torch.count_nonzero(grad) == 0
    # A < 0, small w: no lower clip by default, gradient flows
    logp, old, mask, adv = _single_sequence(-1.0, -1.0)
    _, grad, _ = loss_and_grad("tic_grpo", logp, old, None, mask, adv, config, norms)
    assert torch.count_nonzero(grad) == 4
    lower = make_objective_config("tic_grpo", {"epsilon_low": 0.2})
    _, grad, metrics = loss_and_grad("tic_grpo", logp, old, None, mask, adv, lower, norms)
    assert torch.count_nonzero(grad) == 0 and metrics["clip_frac_low"].item() == 1.0


def test_tic_clamp_freezes_the_term_and_is_counted():
    """log w > max_log_ratio on an unbounded branch: term e^M·A, zero gradient, counted as clamped."""
    norms = StepNormalizers(1, 4, 4)
    default = make_objective_config("tic_grpo")  # ε_high = 0.2, no ratio_cap, M = 20
    unclipped = make_objective_config("tic_grpo", {"epsilon_high": None})
    # (log w, A, config, clamped, gradient flows): the clamp binds only where no clip binds first
    cases = [
        (25.0, -1.0, default, True, False),  # A < 0: the upper-only clip never binds, the clamp does
        (25.0, 1.0, unclipped, True, False),  # A > 0 without ε_high
        (25.0, 1.0, default, False, False),  # A > 0: clipped at 1+ε first (clip_frac_high)
        (25.0, -1.0, make_objective_config("tic_grpo", {"ratio_cap": 3.0}), False, False),  # cap first
        (19.0, -1.0, default, False, True),  # below the clamp
        (25.0, -1.0, make_objective_config("tic_grpo", {"max_log_ratio": 30.0}), False, True),
    ]
    for log_w, advantage, config, clamped, gradient_flows in cases:
        logp, old, mask, adv = _single_sequence(log_w, advantage)
        loss, grad, metrics = loss_and_grad("tic_grpo", logp, old, None, mask, adv, config, norms)
        assert metrics["clamped_log_ratio_frac"].item() == float(clamped), (log_w, advantage, config)
        assert torch.count_nonzero(grad) == (4 if gradient_flows else 0), (log_w, advantage, config)
        if clamped:
            assert loss.item() == pytest.approx(-advantage * math.exp(20.0))
    # the fraction is over real sequences: 2 of 4 clamped (one fully padded row ignored)
    logp = torch.full((5, 4), -1.0, dtype=torch.float64)
    old = logp - torch.tensor([25.0, 25.0, 1.0, -3.0, 40.0], dtype=torch.float64)[:, None] / 4
    mask = torch.ones(5, 4, dtype=torch.float64)
    mask[4] = 0.0
    adv = torch.tensor([-1.0, 0.5, -1.0, 2.0, -1.0], dtype=torch.float64)
    _, _, metrics = loss_and_grad("tic_grpo", logp, old, None, mask, adv, unclipped, None)
    assert metrics["clamped_log_ratio_frac"].item() == 0.5


@pytest.mark.parametrize(
    ("name", "options"),
    [("grpo", {}), ("grpo", {"ratio_cap": 5.0}), ("tic_grpo", {}), ("tic_grpo", {"ratio_cap": 5.0}), ("no_is", {})],
)
@pytest.mark.parametrize("log_ratio", [1e4, -1e4, 300.0, -300.0])
def test_no_nan_or_inf_for_extreme_ratios(name, log_ratio, options):
    config = make_objective_config(name, {"beta": 0.1, **options})
    for advantage in (1.5, -1.5):
        for dtype in (torch.float32, torch.bfloat16):
            logp, old, mask, adv = _single_sequence(log_ratio, advantage, length=8, dtype=dtype)
            ref = logp.detach() + 50.0
            loss, grad, metrics = loss_and_grad(name, logp, old, ref, mask, adv, config, None)
            assert torch.isfinite(loss), (loss, advantage, dtype)
            assert torch.isfinite(grad).all(), (grad, advantage, dtype)
            for key, value in metrics.items():
                if not key.startswith("ratio_"):  # the raw ratio statistic may legitimately be inf
                    assert torch.isfinite(value), key


@pytest.mark.parametrize("name", ["grpo", "tic_grpo", "no_is"])
def test_long_bf16_completions_are_finite(name):
    g = torch.Generator().manual_seed(0)
    n_tokens = 16_384
    logp = (-torch.rand(4, n_tokens, generator=g) * 5).to(torch.bfloat16)
    old = (logp.float() + 0.3 * torch.randn(4, n_tokens, generator=g)).to(torch.bfloat16)
    mask = torch.ones(4, n_tokens)
    mask[2, 9000:] = 0
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5], dtype=torch.bfloat16)
    leaf = logp.clone().requires_grad_(True)
    batch = PolicyBatch(leaf, mask, adv, old_logprobs=old, ref_logprobs=old)
    loss, _ = compute_loss(name, batch, make_objective_config(name, {"beta": 0.04}))
    loss.backward()
    assert loss.dtype == torch.float32  # ratios are formed in float32 whatever the inputs
    assert leaf.grad is not None
    assert torch.isfinite(loss) and torch.isfinite(leaf.grad.float()).all()


def test_registry_and_config_errors():
    assert {"grpo", "no_is", "tic_grpo"} <= set(OBJECTIVES.names())
    assert OBJECTIVES.spec("tic_grpo").default_advantage == "length_corrected"
    with pytest.raises(KeyError, match=r"choose one of: .*tic_grpo"):
        OBJECTIVES.spec("tic-grpo")
    with pytest.raises(ValueError, match=r"unknown option 'eps' for objective 'grpo'; allowed: .*epsilon_high"):
        make_objective_config("grpo", {"eps": 0.2})
    typo = r"unknown option 'epsilon_hgh' for objective 'grpo'; did you mean 'epsilon_high'\? \(allowed: "
    with pytest.raises(ValueError, match=typo):
        make_objective_config("grpo", {"epsilon_hgh": 0.2})
    with pytest.raises(ValueError, match=r"grpo\.epsilon_high must be a number or null, got str 'big'"):
        make_objective_config("grpo", {"epsilon_high": "big"})
    with pytest.raises(ValueError, match=r"grpo\.aggregation must be one of: seq-mean-token-mean, .*; got str 'mean'"):
        make_objective_config("grpo", {"aggregation": "mean"})
    with pytest.raises(ValueError, match="unknown kl estimator 'k4'"):
        make_objective_config("tic_grpo", {"kl_estimator": "k4"})
    with pytest.raises(ValueError, match=r"no_is\.mode must be one of: frozen, stale; got str 'lazy'"):
        make_objective_config("no_is", {"mode": "lazy"})
    with pytest.raises(ValueError, match=r"tic_grpo\.ratio_cap must be > 1"):
        make_objective_config("tic_grpo", {"ratio_cap": 0.5})
    with pytest.raises(ValueError, match=r"tic_grpo\.beta must be >= 0"):
        make_objective_config("tic_grpo", {"beta": -1})
    logp, old, _, mask, adv = random_batch(0)
    with pytest.raises(ValueError, match="beta > 0 needs ref_logprobs"):
        compute_loss("grpo", PolicyBatch(logp, mask, adv, old), make_objective_config("grpo", {"beta": 0.1}))
    with pytest.raises(ValueError, match="one advantage per sequence"):
        compute_loss("tic_grpo", PolicyBatch(logp, mask, adv[:, None].expand(B, T), old))
    with pytest.raises(ValueError, match="mask shape"):
        PolicyBatch(logp, mask[:, :3], adv)
    with pytest.raises(ValueError, match="advantages must be"):
        PolicyBatch(logp, mask, adv[:3])


def test_token_level_advantages_in_grpo():
    """[B, T] advantages (GTPO-style token weights) equal the naive per-token loop."""
    logp, old, ref, mask, adv = random_batch(5)
    token_adv = adv[:, None] * torch.linspace(0.5, 1.5, T, dtype=torch.float64)[None, :]
    config = make_objective_config("grpo")
    norms = StepNormalizers(B, float(mask.sum()), L_MAX)
    loss, _, _ = loss_and_grad("grpo", logp, old, ref, mask, token_adv, config, norms)
    expected = torch.zeros((), dtype=torch.float64)
    for i in range(B):
        n = int(mask[i].sum())
        for t in range(n):
            rho = torch.exp(logp[i, t] - old[i, t])
            a = token_adv[i, t]
            expected -= torch.minimum(rho * a, rho.clamp(0.8, 1.2) * a) / n / B
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
