"""Advantage estimators (spec §1) and KL estimators (spec §2) against hand computations."""

from __future__ import annotations

import dataclasses
import math
import statistics

import pytest
import torch

from ticgrpo.core.advantages import ADVANTAGES, compute_advantages, make_advantage_options
from ticgrpo.core.kl import token_kl
from ticgrpo.core.options import option_names

REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [0.0, 0.2, 0.9, 0.3]], dtype=torch.float64)
LENGTHS = torch.tensor([[4, 8, 2, 10], [3, 3, 5, 1], [6, 6, 2, 9]], dtype=torch.float64)


def per_group(fn):
    return torch.tensor([fn(row, lens) for row, lens in zip(REWARDS.tolist(), LENGTHS.tolist(), strict=True)],
                        dtype=torch.float64)


def test_group_norm():
    def expected(row, _):
        mean, std = statistics.mean(row), statistics.stdev(row)
        return [(r - mean) / (std + 1e-4) if std > 0 else 0.0 for r in row]
    result = compute_advantages("group_norm", REWARDS)
    torch.testing.assert_close(result.advantages, per_group(expected), rtol=1e-12, atol=1e-12)
    assert result.num_zero_std == 1 and result.frac_zero_std == pytest.approx(1 / 3)


def test_length_corrected():
    def expected(row, lens):
        scaled = [r / n for r, n in zip(row, lens, strict=True)]
        if len(set(row)) == 1:
            return [0.0] * len(row)
        mean, std = statistics.mean(scaled), statistics.stdev(scaled)
        return [(s - mean) / (std + 1e-4) for s in scaled]
    result = compute_advantages("length_corrected", REWARDS, LENGTHS)
    torch.testing.assert_close(result.advantages, per_group(expected), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="needs the completion lengths"):
        compute_advantages("length_corrected", REWARDS)


def test_mean_only_and_rloo():
    mean_only = compute_advantages("mean_only", REWARDS).advantages
    torch.testing.assert_close(mean_only, REWARDS - REWARDS.mean(1, keepdim=True))
    def loo(row, _):
        return [r - (sum(row) - r) / (len(row) - 1) for r in row]
    torch.testing.assert_close(compute_advantages("rloo", REWARDS).advantages, per_group(loo))
    # RLOO is the mean-only advantage scaled by G/(G−1)
    torch.testing.assert_close(compute_advantages("rloo", REWARDS).advantages, mean_only * 4 / 3)


def test_batch_std():
    std = statistics.stdev(REWARDS.flatten().tolist())
    expected = (REWARDS - REWARDS.mean(1, keepdim=True)) / (std + 1e-4)
    expected[1] = 0.0
    torch.testing.assert_close(compute_advantages("batch_std", REWARDS).advantages, expected)


@pytest.mark.parametrize("name", ["group_norm", "length_corrected", "mean_only", "rloo", "batch_std"])
def test_constant_groups_get_exactly_zero(name):
    rewards = torch.tensor([[0.1, 0.1, 0.1], [3.0, 3.0, 3.0], [0.0, 1.0, 0.0]])
    lengths = torch.tensor([[1.0, 5.0, 9.0], [2.0, 2.0, 7.0], [3.0, 3.0, 3.0]])
    result = compute_advantages(name, rewards, lengths)
    assert torch.equal(result.advantages[:2], torch.zeros(2, 3))
    assert result.num_zero_std == 2
    assert torch.count_nonzero(result.advantages[2]) == 3


def test_advantage_errors():
    assert {"group_norm", "length_corrected", "mean_only", "rloo", "batch_std"} <= set(ADVANTAGES.names())
    with pytest.raises(ValueError, match="unknown advantage 'zscore'"):
        compute_advantages("zscore", REWARDS)
    with pytest.raises(ValueError, match="group size must be at least 2"):
        compute_advantages("group_norm", REWARDS[:, :1])
    with pytest.raises(ValueError, match=r"rewards must be \[num_groups, group_size\]"):
        compute_advantages("group_norm", REWARDS.flatten())


@pytest.mark.parametrize("x", [-2.0, -0.3, 0.0, 0.7, 3.0])
def test_kl_estimators(x):
    logp = torch.tensor([-1.0], dtype=torch.float64)
    ref = logp + x
    assert token_kl("k1", logp, ref).item() == pytest.approx(-x)
    assert token_kl("k2", logp, ref).item() == pytest.approx(x * x / 2)
    assert token_kl("k3", logp, ref).item() == pytest.approx(math.exp(x) - x - 1)
    assert token_kl("k3", logp, ref).item() >= 0


def test_kl_estimators_are_unbiased_or_second_order():
    """E_{π}[k1] = E_{π}[k3] = KL(π‖π_ref) exactly, over an enumerated categorical."""
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.4, 0.4], dtype=torch.float64)
    kl = (p * (p.log() - q.log())).sum()
    for name in ("k1", "k3"):
        estimate = (p * token_kl(name, p.log(), q.log())).sum()
        torch.testing.assert_close(estimate, kl, rtol=1e-12, atol=1e-12)


def test_every_estimator_has_an_options_class_with_defaults():
    for spec in ADVANTAGES.specs():
        defaults = spec.options()
        assert dataclasses.is_dataclass(defaults) and not isinstance(defaults, type)
        assert make_advantage_options(spec.name) == {}  # only given keys come back; the class fills the rest
        keys = option_names(spec.options)
        assert make_advantage_options(spec.name, dataclasses.asdict(defaults)) == dataclasses.asdict(defaults)
        result = compute_advantages(spec.name, REWARDS, LENGTHS, **{k: getattr(defaults, k) for k in keys})
        torch.testing.assert_close(result.advantages, compute_advantages(spec.name, REWARDS, LENGTHS).advantages)


def test_make_advantage_options_validates_with_one_line_errors():
    assert make_advantage_options("beta_norm", {"reward_min": -1, "max_weight": 10}) == {
        "reward_min": -1.0, "max_weight": 10.0}
    assert make_advantage_options("beta_norm", {"fixed_alpha": None, "unbiased_variance": False}) == {
        "fixed_alpha": None, "unbiased_variance": False}
    cases: list[tuple[str, dict[str, object], str]] = [
        ("beta_norm", {"reward_mn": 0}, r"unknown option 'reward_mn' for advantage 'beta_norm'; did you mean "),
        ("rloo", {"delta": 0.1}, r"unknown option 'delta' for advantage 'rloo'; allowed: none"),
        ("group_norm", {"delta": "x"}, r"group_norm\.delta must be a number, got str 'x'"),
        ("group_norm", {"delta": True}, r"group_norm\.delta must be a number, got bool True"),
        ("group_norm", {"delta": float("nan")}, r"group_norm\.delta must be a finite number"),
        ("group_norm", {"delta": -1}, r"group_norm\.delta must be >= 0, got int -1"),
        ("beta_norm", {"fixed_beta": 0}, r"beta_norm\.fixed_beta must be > 0"),
        ("beta_norm", {"reward_min": 2.0}, r"beta_norm needs reward_max > reward_min, got \[2\.0, 1\.0\]"),
    ]
    for name, overrides, message in cases:
        with pytest.raises(ValueError, match=message):
            make_advantage_options(name, overrides)
    rewards = torch.tensor([[1.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match=r"group_norm\.delta must be >= 0"):  # the same check when computing
        compute_advantages("group_norm", rewards, delta=-1.0)
    # rewards in [-1, 1] with their bounds declared: the advantages of the same rewards mapped to [0, 1]
    shifted = compute_advantages("beta_norm", rewards * 2 - 1, reward_min=-1.0).advantages
    torch.testing.assert_close(shifted, compute_advantages("beta_norm", rewards).advantages)
