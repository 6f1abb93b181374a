"""The contract every registered objective meets, parametrised over `OBJECTIVES.names()`.

Registering an objective is what gets it tested here: its naive loop oracle (ORACLES in
tests/naive_variants.py), padding and micro-batch invariance, finite loss and gradient at
extreme log-ratios, the on-policy gradient its spec declares (`on_policy_weights`), its options
class, and the TRL and verl adapters — each adapter test skipped only where the adapter's
`unsupported_reason`, read off the spec's capabilities, refuses the objective. The last test
registers a new objective in a copy of the registry and runs all of it on that objective.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import pytest
import torch
from naive_variants import ORACLES
from pydantic import Field
from pydantic.dataclasses import dataclass as pydantic_dataclass
from random_batches import L_MAX, B, T, random_batch

from ticgrpo.config.algorithms import objective_option_sets
from ticgrpo.core.aggregation import only_real, sequence_mean
from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.objectives import OBJECTIVES, compute_loss, make_objective_config, register_objective
from ticgrpo.core.objectives._common import sequence_reinforce_weights, without_padded_values
from ticgrpo.core.options import OPTIONS_CONFIG, option_names
from ticgrpo.integrations import verl as verl_adapter


def contract_names() -> list[str]:
    """The objectives under contract: every registered one, at collection time."""
    return OBJECTIVES.names()


def option_sets() -> list[tuple[str, str | None]]:
    """(objective, variant): the defaults and each ALGORITHMS entry that is only this objective
    with other options (the option sets the verl and TRL adapters serve)."""
    return [(name, variant) for name in contract_names() for variant in (None, *objective_option_sets(name))]


# ---------------------------------------------------------------- batches
def random_inputs(seed: int, spread: float = 0.4) -> dict[str, torch.Tensor]:
    """Float64 tensors of one step (tests/random_batches.py)."""
    return random_batch(seed, spread)


def policy_batch(d: dict[str, torch.Tensor], logprobs: torch.Tensor, name: str | None = None) -> PolicyBatch:
    """The batch of `d`; the pool's mixture log-probs where objective `name`'s spec reads them."""
    mixture = d["mixture"] if name is not None and OBJECTIVES.spec(name).reads_mixture_logprobs else None
    hidden = d["hidden"] if name is not None and OBJECTIVES.spec(name).needs_hidden_states else None
    return PolicyBatch(logprobs, d["mask"], d["adv"], old_logprobs=d["old"], ref_logprobs=d["ref"],
                       token_ids=d["tokens"], group_ids=d["groups"], entropies=d["entropies"],
                       mixture_logprobs=mixture, hidden_states=hidden)


def step_norms(d: dict[str, torch.Tensor]) -> StepNormalizers:
    return StepNormalizers(num_sequences=B, num_tokens=float(d["mask"].sum()), max_new_tokens=L_MAX)


def counts(d: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {"n_seq": B, "n_tok": float(d["mask"].sum()), "l_max": L_MAX}


def options_of(name: str, variant: str | None = None, **wanted: Any) -> Any:
    """The objective's options (a variant's, if named) with those of `wanted` it has (e.g. beta)."""
    values = objective_option_sets(name)[variant] if variant else {}
    values.update({key: value for key, value in wanted.items() if key in option_names(OBJECTIVES.spec(name).options)})
    return make_objective_config(name, values)


def loss_and_grad(name: str, d: dict[str, torch.Tensor], options: Any, norms: StepNormalizers | None):
    leaf = d["logp"].clone().requires_grad_(True)
    loss, metrics = compute_loss(name, policy_batch(d, leaf, name), options, norms)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad, metrics


# ---------------------------------------------------------------- the checks
def check_matches_naive_oracle(name: str) -> None:
    if name not in ORACLES:
        pytest.fail(f"objective {name!r} has no naive oracle: add one to ORACLES in tests/naive_variants.py")
    for seed in range(3):
        for beta in (0.0, 0.05):
            d = random_inputs(seed)
            options = options_of(name, beta=beta)
            loss, grad, metrics = loss_and_grad(name, d, options, step_norms(d))
            leaf = d["logp"].clone().requires_grad_(True)
            expected = ORACLES[name]({**d, "logp": leaf}, options, counts(d))
            (expected_grad,) = torch.autograd.grad(expected, leaf)
            torch.testing.assert_close(loss, expected.detach(), rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)
            assert all(torch.isfinite(value) for value in metrics.values()), metrics


def _padded(d: dict[str, torch.Tensor], fill) -> dict[str, torch.Tensor]:
    """`d` with 3 padded columns and 2 fully padded rows whose float values come from fill(rows, cols);
    the padded positions inside the original width get fill's values too."""
    def pad(x: torch.Tensor) -> torch.Tensor:
        x = torch.where(d["mask"].bool(), x, fill(B, T).to(x.dtype)) if x.shape == (B, T) else x
        x = torch.cat([x, fill(B, 3).to(x.dtype)], dim=1)
        return torch.cat([x, fill(2, T + 3).to(x.dtype)], dim=0)
    p = {key: pad(d[key]) for key in ("logp", "old", "ref", "entropies")}
    p["tokens"] = torch.cat([torch.cat([d["tokens"], torch.zeros(B, 3, dtype=torch.long)], 1),
                             torch.zeros(2, T + 3, dtype=torch.long)], 0)
    p["mask"] = torch.cat([torch.cat([d["mask"], torch.zeros(B, 3, dtype=torch.float64)], 1),
                           torch.zeros(2, T + 3, dtype=torch.float64)], 0)
    p["adv"] = pad(d["adv"]) if d["adv"].dim() == 2 else torch.cat([d["adv"], fill(2, 1)[:, 0]])
    p["mixture"] = torch.cat([d["mixture"], fill(2, 1)[:, 0]])
    p["groups"] = torch.cat([d["groups"], torch.tensor([0, 1])])
    width = d["hidden"].shape[2]  # [B, T, H]: the same fill in every padded position's hidden state
    hidden = torch.where(d["mask"].bool()[..., None], d["hidden"], fill(B, T * width).reshape(B, T, width))
    hidden = torch.cat([hidden, fill(B, 3 * width).reshape(B, 3, width)], dim=1)
    p["hidden"] = torch.cat([hidden, fill(2, (T + 3) * width).reshape(2, T + 3, width)], dim=0)
    return p


def _zeros(rows: int, cols: int) -> torch.Tensor:
    return torch.zeros(rows, cols, dtype=torch.float64)


def _non_finite(rows: int, cols: int) -> torch.Tensor:
    """nan, inf and −inf in turn."""
    pattern = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=torch.float64)
    return pattern[torch.arange(rows * cols) % 3].reshape(rows, cols)


def check_padding_invariance(name: str, token_advantages: bool = False) -> None:
    """nan/±inf in padded positions and in extra padded columns and rows give the loss, gradient
    and metrics of zeros there, and of the unpadded batch; padded positions get gradient 0."""
    d = random_inputs(5)
    if token_advantages:
        g = torch.Generator().manual_seed(3)
        d["adv"] = d["adv"][:, None] + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    options = options_of(name, beta=0.05)
    norms = step_norms(d)
    loss, grad, _ = loss_and_grad(name, d, options, norms)
    z_loss, z_grad, z_metrics = loss_and_grad(name, _padded(d, _zeros), options, norms)
    g_loss, g_grad, g_metrics = loss_and_grad(name, _padded(d, _non_finite), options, norms)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    torch.testing.assert_close(z_loss, loss, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(z_grad[:B, :T], grad, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(g_loss, z_loss, rtol=0, atol=0)
    torch.testing.assert_close(g_grad, z_grad, rtol=0, atol=0)
    padded = torch.ones_like(g_grad, dtype=torch.bool)
    padded[:B, :T] = ~d["mask"].bool()
    assert torch.count_nonzero(g_grad[padded]) == 0
    assert g_metrics.keys() == z_metrics.keys()
    for key in z_metrics:
        torch.testing.assert_close(g_metrics[key], z_metrics[key], rtol=0, atol=0, msg=key)


def _with_environment_columns(d: dict[str, torch.Tensor], at: int = 2, width: int = 3) -> dict[str, torch.Tensor]:
    """`d` with `width` columns of environment tokens inserted at position `at` of every row, as a
    multi-turn episode has between two agent turns: mask 0, and nan/±inf in every value there."""
    def insert(x: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, :at], fill.to(x.dtype), x[:, at:]], dim=1)
    e = {key: insert(d[key], _non_finite(B, width)) for key in ("logp", "old", "ref", "entropies")}
    e["mask"] = insert(d["mask"], _zeros(B, width))
    e["tokens"] = insert(d["tokens"], torch.zeros(B, width, dtype=torch.long))
    e["adv"] = insert(d["adv"], _non_finite(B, width)) if d["adv"].dim() == 2 else d["adv"]
    h = d["hidden"].shape[2]
    e["hidden"] = torch.cat([d["hidden"][:, :at], _non_finite(B, width * h).reshape(B, width, h), d["hidden"][:, at:]],
                            dim=1)
    e["mixture"], e["groups"] = d["mixture"], d["groups"]
    return e


def check_environment_tokens_never_read(name: str, token_advantages: bool = False) -> None:
    """Masked columns inside the sequences (a multi-turn episode's environment tokens, whatever
    their log-probs, advantages or hidden states) change neither the loss, nor the gradient at the
    agent's tokens, nor the metrics; they get gradient 0."""
    d = random_inputs(7)
    if token_advantages:
        g = torch.Generator().manual_seed(4)
        d["adv"] = d["adv"][:, None] + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    options, norms = options_of(name, beta=0.05), step_norms(d)
    loss, grad, metrics = loss_and_grad(name, d, options, norms)
    e_loss, e_grad, e_metrics = loss_and_grad(name, _with_environment_columns(d), options, norms)
    torch.testing.assert_close(e_loss, loss, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(torch.cat([e_grad[:, :2], e_grad[:, 5:]], dim=1), grad, rtol=1e-12, atol=1e-13)
    assert torch.count_nonzero(e_grad[:, 2:5]) == 0
    assert e_metrics.keys() == metrics.keys()
    for key in metrics:
        torch.testing.assert_close(e_metrics[key], metrics[key], rtol=1e-12, atol=1e-13, msg=key)


def _rows(d: dict[str, torch.Tensor], rows: slice) -> dict[str, torch.Tensor]:
    return {key: value[rows] for key, value in d.items()}


def check_micro_batch_invariance(name: str) -> None:
    """Micro-batches with the step's normalisers sum to the whole step's loss and gradient
    (whole groups per micro-batch where the objective couples a group)."""
    d = random_inputs(11)
    options = options_of(name, beta=0.05)
    norms = step_norms(d)
    whole_loss, whole_grad, _ = loss_and_grad(name, d, options, norms)
    splits = [[3, 3]] if OBJECTIVES.spec(name).couples_group else [[1, 5], [2, 1, 3], [1] * B]
    for split in splits:
        total, grads, start = torch.zeros((), dtype=torch.float64), [], 0
        for size in split:
            part_loss, part_grad, _ = loss_and_grad(name, _rows(d, slice(start, start + size)), options, norms)
            total, start = total + part_loss, start + size
            grads.append(part_grad)
        torch.testing.assert_close(total, whole_loss, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(torch.cat(grads), whole_grad, rtol=1e-12, atol=1e-13)


def check_extreme_log_ratios(name: str) -> None:
    """Log-ratios of ±1e4 against ℓ^old and ℓ^ref, in float32: finite loss and gradient."""
    d = random_inputs(2)
    sign = torch.where(torch.arange(B * T).reshape(B, T) % 2 == 0, 1.0, -1.0).to(torch.float64)
    d = {**d, "old": d["logp"] + 1e4 * sign, "ref": d["logp"] - 1e4 * sign}
    d["adv"] = torch.tensor([1.5, -2.0, 0.7, -0.3, 2.5, -1.0], dtype=torch.float64)
    d = {key: value.float() if value.is_floating_point() else value for key, value in d.items()}
    for beta in (0.0, 0.05):
        loss, grad, _ = loss_and_grad(name, d, options_of(name, beta=beta), step_norms(d))
        assert torch.isfinite(loss), (name, beta, loss)
        assert torch.isfinite(grad).all(), (name, beta)


def check_on_policy_gradient(name: str) -> None:
    """At ℓ = ℓ^old (float64, β = 0): ∂loss/∂ℓ = −on_policy_weights(batch, options, norms)."""
    spec = OBJECTIVES.spec(name)
    if spec.on_policy_weights is None:
        pytest.fail(f"objective {name!r} declares no on_policy_weights (its gradient at θ = θ_old)")
    for seed in range(3):
        d = random_inputs(seed)
        d["old"] = d["logp"].clone()
        options = options_of(name, beta=0.0)
        norms = step_norms(d)
        _, grad, _ = loss_and_grad(name, d, options, norms)
        weights = spec.on_policy_weights(without_padded_values(policy_batch(d, d["logp"], name)), options, norms)
        assert weights.shape == (B, T)
        torch.testing.assert_close(grad, -only_real(weights, d["mask"]), rtol=1e-12, atol=1e-14)
        assert torch.count_nonzero(grad) > 0  # the identity was not checked on zeros


def check_options_class(name: str) -> None:
    """The options class builds with its defaults, round-trips through its own keys (what a
    config file holds) and rejects an unknown key by name."""
    spec = OBJECTIVES.spec(name)
    defaults = make_objective_config(name)
    assert isinstance(defaults, spec.options) and dataclasses.is_dataclass(defaults)
    assert not isinstance(defaults, type)
    assert make_objective_config(name, dataclasses.asdict(defaults)) == defaults
    with pytest.raises(ValueError, match=rf"unknown option 'no_such_option' for objective '{name}'; allowed: "):
        make_objective_config(name, {"no_such_option": 1.0})


def check_trl_adapter(name: str, variant: str | None) -> None:
    """The TRL loss (`trl_policy_loss`, the body of TicGRPOTrainer._compute_loss) on TRL-shaped inputs."""
    pytest.importorskip("trl")
    from ticgrpo.integrations import trl as trl_adapter

    options = options_of(name, variant, beta=0.0)
    reason = trl_adapter.unsupported_reason(OBJECTIVES.spec(name), options)
    if reason is not None:
        pytest.skip(f"TRL refuses {name!r}: {reason}")
    d = {key: value.float() if value.is_floating_point() else value for key, value in random_inputs(4).items()}
    tool_mask = torch.ones(B, T, dtype=torch.long)
    tool_mask[0, 2:4] = 0  # tokens a tool wrote: not the policy's, never in the loss
    inputs = {"completion_ids": d["tokens"], "completion_mask": d["mask"].long(), "tool_mask": tool_mask,
              "advantages": d["adv"], "old_per_token_logps": d["old"]}
    norms = step_norms(d)
    leaf = d["logp"].clone().requires_grad_(True)
    loss, metrics = trl_adapter.trl_policy_loss(name, options, inputs, leaf, d["entropies"], norms)
    (grad,) = torch.autograd.grad(loss, leaf)
    expected_leaf = d["logp"].clone().requires_grad_(True)
    mask = d["mask"] * tool_mask
    expected, _ = compute_loss(name, PolicyBatch(expected_leaf, mask, d["adv"], old_logprobs=d["old"],
                                                 token_ids=d["tokens"], entropies=d["entropies"]), options, norms)
    (expected_grad,) = torch.autograd.grad(expected, expected_leaf)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, expected_grad)
    assert torch.isfinite(grad).all() and torch.count_nonzero(grad) > 0
    assert torch.count_nonzero(grad[0, 2:4]) == 0
    assert all(torch.isfinite(value) for value in metrics.values()), metrics


def check_verl_adapter(name: str, variant: str | None) -> None:
    """`make_policy_loss` with verl's call (advantages broadcast over response tokens), without verl."""
    spec = OBJECTIVES.spec(name)
    values = objective_option_sets(name)[variant] if variant else {}
    options = make_objective_config(name, values)
    reason = verl_adapter.unsupported_reason(spec, options)
    if reason is not None:
        with pytest.raises(ValueError, match="not available in verl"):
            verl_adapter.make_policy_loss(name, values)
        pytest.skip(f"verl refuses {name!r}: {reason}")
    loss_name = f"{verl_adapter.PREFIX}{variant or name}"
    assert loss_name in verl_adapter.default_losses()
    d = {key: value.float() if value.is_floating_point() else value for key, value in random_inputs(6).items()}
    policy_loss = verl_adapter.make_policy_loss(name, values)
    leaf = d["logp"].clone().requires_grad_(True)
    loss, metrics = policy_loss(d["old"], leaf, d["adv"][:, None] * d["mask"], d["mask"], "token-mean", None)
    (grad,) = torch.autograd.grad(loss, leaf)
    advantages = d["adv"] if spec.sequence_advantages else d["adv"][:, None] * d["mask"]
    expected_leaf = d["logp"].clone().requires_grad_(True)
    expected, _ = compute_loss(name, PolicyBatch(expected_leaf, d["mask"], advantages, old_logprobs=d["old"]),
                               options, verl_adapter.step_normalizers(d["mask"]))
    (expected_grad,) = torch.autograd.grad(expected, expected_leaf)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, expected_grad)
    assert torch.isfinite(grad).all() and torch.count_nonzero(grad) > 0
    assert all(key.startswith("actor/ticgrpo/") and isinstance(value, float) for key, value in metrics.items())


# ---------------------------------------------------------------- every registered objective
@pytest.mark.parametrize("name", contract_names())
def test_matches_its_naive_oracle(name):
    check_matches_naive_oracle(name)


@pytest.mark.parametrize("name", contract_names())
def test_padding_never_read(name):
    check_padding_invariance(name)


@pytest.mark.parametrize("name", [name for name in contract_names() if not OBJECTIVES.spec(name).sequence_advantages])
def test_padding_never_read_with_token_advantages(name):
    check_padding_invariance(name, token_advantages=True)


@pytest.mark.parametrize("name", contract_names())
def test_environment_tokens_never_read(name):
    check_environment_tokens_never_read(name)


@pytest.mark.parametrize("name", [name for name in contract_names() if not OBJECTIVES.spec(name).sequence_advantages])
def test_environment_tokens_never_read_with_token_advantages(name):
    check_environment_tokens_never_read(name, token_advantages=True)


@pytest.mark.parametrize("name", contract_names())
def test_micro_batch_invariance(name):
    check_micro_batch_invariance(name)


@pytest.mark.parametrize("name", contract_names())
def test_extreme_log_ratios_are_finite(name):
    check_extreme_log_ratios(name)


@pytest.mark.parametrize("name", contract_names())
def test_declared_on_policy_gradient(name):
    check_on_policy_gradient(name)


@pytest.mark.parametrize("name", contract_names())
def test_options_class(name):
    check_options_class(name)


@pytest.mark.parametrize(("name", "variant"), option_sets())
def test_trl_adapter(name, variant):
    check_trl_adapter(name, variant)


@pytest.mark.parametrize(("name", "variant"), option_sets())
def test_verl_adapter(name, variant):
    check_verl_adapter(name, variant)


# ---------------------------------------------------------------- a newly registered objective
@pydantic_dataclass(config=OPTIONS_CONFIG)
class _ScaledMeanOptions:
    scale: Annotated[float, Field(gt=0)] = 1.0


def _scaled_mean_loss(batch: PolicyBatch, options: _ScaledMeanOptions, norms: StepNormalizers):
    """−scale·(1/N_seq) Σ_i A_i · mean_t ℓ_{i,t}: a minimal sequence-level objective."""
    per_sequence = -batch.sequence_advantages() * sequence_mean(batch.current_logprobs(), batch.float_mask)
    metrics = {"mean_advantage": batch.sequence_advantages().mean()}
    return options.scale * per_sequence.sum() / norms.num_sequences, metrics


def _scaled_mean_weights(batch: PolicyBatch, options: _ScaledMeanOptions, norms: StepNormalizers):
    return options.scale * sequence_reinforce_weights(batch, norms, token_mean=True)


def _scaled_mean_oracle(d, options, counts):
    total = torch.zeros((), dtype=torch.float64)
    for i in range(d["logp"].shape[0]):
        tokens = [t for t in range(d["logp"].shape[1]) if d["mask"][i, t] > 0]
        if tokens:
            total = total - options.scale * d["adv"][i] * sum(d["logp"][i, t] for t in tokens) / len(tokens)
    return total / counts["n_seq"]


@pytest.fixture
def new_objective(monkeypatch):
    """`test_scaled_mean` registered for one test, in a copy of the registry, with its oracle."""
    monkeypatch.setattr(OBJECTIVES, "_specs", dict(OBJECTIVES._specs))
    register_objective("test_scaled_mean", options=_ScaledMeanOptions, default_advantage="group_norm",
                       uses_old_logprobs=False, sequence_advantages=True,
                       on_policy_weights=_scaled_mean_weights)(_scaled_mean_loss)
    monkeypatch.setitem(ORACLES, "test_scaled_mean", _scaled_mean_oracle)
    monkeypatch.delenv(verl_adapter.OPTIONS_ENV, raising=False)
    return "test_scaled_mean"


def test_a_registered_objective_is_under_contract_and_served_by_both_adapters(new_objective):
    assert new_objective in contract_names()
    assert (new_objective, None) in option_sets()
    check_matches_naive_oracle(new_objective)
    check_padding_invariance(new_objective)
    check_micro_batch_invariance(new_objective)
    check_extreme_log_ratios(new_objective)
    check_on_policy_gradient(new_objective)
    check_options_class(new_objective)
    check_verl_adapter(new_objective, None)
    check_trl_adapter(new_objective, None)
