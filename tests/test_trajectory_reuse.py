"""`trajectory_reuse` (RT-PG's pooled batches, balance-heuristic weights): the objective, the lab study
(`ticgrpo lab reuse`) and the trainer's `algorithm.reuse_window`."""

from __future__ import annotations

import json
import math

import pytest
import torch
from random_batches import L_MAX, B, random_batch

from ticgrpo.cli import main
from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.objectives import compute_loss, make_objective_config
from ticgrpo.lab.converge import make_problem
from ticgrpo.lab.estimators import exact_gradient, group_gradients
from ticgrpo.lab.reuse import Pool, ReuseConfig, pool_moments, window_pool
from ticgrpo.lab.variants import get_variant

# option sets that both objectives take: the window-one identity must hold for each
SHARED_OPTIONS = [
    {},
    {"epsilon_high": 0.2},
    {"epsilon_high": 0.2, "epsilon_low": 0.1, "ratio_cap": 3.0},
    {"epsilon_high": None, "length_normalize": True, "beta": 0.05},
]


def _loss_and_grad(name: str, d: dict, options: dict, mixture: torch.Tensor | None):
    leaf = d["logp"].clone().requires_grad_(True)
    batch = PolicyBatch(leaf, d["mask"], d["adv"], old_logprobs=d["old"], ref_logprobs=d["ref"],
                        mixture_logprobs=mixture)
    norms = StepNormalizers(num_sequences=B, num_tokens=float(d["mask"].sum()), max_new_tokens=L_MAX)
    loss, metrics = compute_loss(name, batch, make_objective_config(name, options), norms)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad, metrics


@pytest.mark.parametrize("options", SHARED_OPTIONS)
@pytest.mark.parametrize("explicit_window", [False, True])
def test_a_window_of_one_is_tic_grpo_exactly(options: dict, explicit_window: bool) -> None:
    """ω = 1: no mixture (the row's own ℓ^old), or the mixture of one policy with share 1, is tic_grpo's
    trajectory ratio: equal loss, gradient and metrics."""
    for seed in range(3):
        d = random_batch(seed, spread=0.6)
        mixture = None
        if explicit_window:  # logsumexp over one policy of log(1) + Σ_t m ℓ^old
            mixture = torch.logsumexp((d["old"] * d["mask"]).sum(dim=1, keepdim=True), dim=1)
        loss, grad, metrics = _loss_and_grad("trajectory_reuse", d, options, mixture)
        tic_loss, tic_grad, tic_metrics = _loss_and_grad("tic_grpo", d, {"epsilon_high": None, **options}, None)
        tolerance = {"rtol": 1e-14, "atol": 1e-15} if explicit_window else {"rtol": 0, "atol": 0}
        torch.testing.assert_close(loss, tic_loss, **tolerance)
        torch.testing.assert_close(grad, tic_grad, **tolerance)
        assert metrics.keys() == tic_metrics.keys()
        for key in metrics:
            torch.testing.assert_close(metrics[key], tic_metrics[key], **tolerance, msg=key)


def test_the_weight_is_the_balance_heuristic() -> None:
    """At θ equal to one of two window policies with shares 1/2, w = 2/(1 + P_other/P_θ) ≤ 2: the
    objective's log w (metrics) is log P_θ − log(½P_θ + ½P_other)."""
    d = random_batch(1)
    seq_current = (d["logp"] * d["mask"]).sum(dim=1)
    seq_other = (d["old"] * d["mask"]).sum(dim=1)
    mixture = torch.logsumexp(torch.stack([seq_current, seq_other]) + math.log(0.5), dim=0)
    _, _, metrics = _loss_and_grad("trajectory_reuse", {**d, "old": d["logp"]}, {}, mixture)
    expected = torch.log(2 / (1 + (seq_other - seq_current).exp()))
    torch.testing.assert_close(metrics["log_w_max"], expected.max())
    torch.testing.assert_close(metrics["log_w_min"], expected.min())
    assert float(expected.max()) < math.log(2)


def test_bad_mixture_shape_and_options_are_one_line() -> None:
    d = random_batch(0)
    with pytest.raises(ValueError, match=r"mixture_logprobs must be \[B\] \(one per sequence\), got shape \(6, 7\)"):
        PolicyBatch(d["logp"], d["mask"], d["adv"], mixture_logprobs=d["logp"])
    with pytest.raises(ValueError, match=r"trajectory_reuse\.epsilon_high must be >= 0"):
        make_objective_config("trajectory_reuse", {"epsilon_high": -0.1})


# ---------------------------------------------------------------- the lab
TINY = {"vocab": 3, "max_len": 4, "group_size": 4, "groups": 2}


def test_pooled_estimate_is_unbiased_and_its_variance_matches_sampling() -> None:
    """Unclipped, the pool of three versions estimates ∇J(θ) exactly; its exact tr Cov matches the
    spread of pooled estimates drawn by sampling each version's batch (stratified)."""
    cfg = ReuseConfig(**TINY)
    problem = make_problem(cfg, cfg.reward)
    gen = torch.Generator().manual_seed(0)
    theta = problem.policy.init(0)
    versions = [theta + 0.3 * torch.randn(theta.numel(), generator=gen, dtype=torch.float64) for _ in range(2)]
    pool = Pool((theta, *versions), (0.5, 0.25, 0.25), 4)
    b, grad = exact_gradient(problem, theta)
    variant = get_variant("trajectory_reuse")
    mean, trace_cov = pool_moments(problem, variant, theta, pool, b)
    torch.testing.assert_close(mean, grad, rtol=0, atol=1e-13 * float(grad.norm()))

    # sampling: per-trajectory gradients g(o), then 4000 pools of 2 + 1 + 1 draws
    n = problem.space.num_trajectories
    per_sequence = torch.stack([pool_moments_single(problem, variant, theta, pool, b, o) for o in range(n)])
    draws = [torch.multinomial(problem.probabilities(v), 4000 * k, replacement=True, generator=gen).view(4000, k)
             for v, k in zip(pool.thetas, (2, 1, 1), strict=True)]
    estimates = torch.cat([per_sequence[idx] for idx in draws], dim=1).mean(dim=1)
    assert float(estimates.var(dim=0).sum()) == pytest.approx(trace_cov, rel=0.08)


def pool_moments_single(problem, variant, theta, pool, b, o):
    """g(o) of one trajectory under the pool's mixture: the gradient of its own loss, one at a time."""
    mixture = pool.mixture_logprobs(problem)
    return group_gradients(problem, variant, theta, pool.thetas[0], torch.tensor([[o]]),
                           (problem.rewards[o] - b).view(1, 1), mixture_logprobs=mixture)[0]


def test_lab_reuse_identities_and_outputs(tmp_path, capsys) -> None:
    """ω = 1 is the fresh trajectory ratio; unclipped reuse is unbiased at every window; per-step reuse
    of ω·G samples has about 1/ω of the fresh variance; the CLI writes its three files."""
    out = tmp_path / "reuse"
    rc = main(["lab", "reuse", "--vocab", "3", "--max-len", "4", "--group-size", "4", "--groups", "2",
               "--iterations", "6", "--measure-at", "3,6", "--windows", "1,2,4", "--seeds", "0,1",
               "--no-progress", "--out", str(out)])
    assert rc == 0
    assert "relative MSE" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert {p.name for p in out.iterdir()} == {"results.json", "report.md", "reuse.png"}
    rows = results["rows"]

    def find(arm, budget, window, seed, t):
        return next(r for r in rows if (r["arm"], r["budget"], r["window"], r["seed"], r["t"])
                    == (arm, budget, window, seed, t))

    for seed in (0, 1):
        for t in (3, 6):
            fresh = find("tic_ratio_only", "fresh", 1, seed, t)
            for budget in ("pooled", "per_step"):
                assert find("trajectory_reuse", budget, 1, seed, t)["trace_cov"] == pytest.approx(
                    fresh["trace_cov"], rel=1e-12)
                for window in (1, 2, 4):
                    assert find("trajectory_reuse", budget, window, seed, t)["rel_err_current"] < 1e-12
            assert find("trajectory_reuse", "per_step", 4, seed, t)["pool_size"] == 16
            ratio = find("trajectory_reuse", "per_step", 4, seed, t)["trace_cov"] / fresh["trace_cov"]
            assert 0.1 < ratio < 0.5  # near 1/4: the versions differ little along a short path
    assert len(results["comparisons"]) == 2 * 2 * 2  # 2 reuse arms × 2 budgets × windows 2, 4


def test_lab_reuse_rejects_bad_settings_in_one_line(tmp_path, capsys) -> None:
    for argv, message in [
        (["--windows", "3"], "windows [3] do not divide group_size 8"),
        (["--reuse-algorithms", "tic_grpo"], "does not read mixture log-probs"),
        (["--reference", "grpo_tokensum"], "reference 'grpo_tokensum' is not among the fresh arms"),
        (["--windows", "0"], "--windows must be >= 1, got 0"),
    ]:
        assert main(["lab", "reuse", *argv, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_window_pool_reads_the_versions_back_from_t() -> None:
    path = [torch.full((2,), float(s)) for s in range(5)]
    pool = window_pool(path, 1, 3, 2)
    assert [float(th[0]) for th in pool.thetas] == [1.0, 0.0, 0.0] and pool.size == 6
    assert pool.shares == (1 / 3, 1 / 3, 1 / 3)


# ---------------------------------------------------------------- the trainer: algorithm.reuse_window
# Tiny in-process Llama models (ticgrpo.testing) with a reward that differs within every group, so that
# every step moves the weights and every policy version differs.
ROWS = [{"prompt": f"What is {i} + {j}?", "answer": str(i + j)} for i in range(10) for j in range(10)]
WINDOW = 3


def variety(prompts, completions, **kwargs):
    return [len(set(c)) / max(len(c), 1) for c in completions]


def reuse_trainer(out, max_steps: int, double: bool = False, **checkpoint):
    from ticgrpo.config import load_config
    from ticgrpo.testing import make_tiny_model, make_tiny_tokenizer
    from ticgrpo.train import Trainer

    cfg = {
        "output_dir": str(out), "max_steps": max_steps, "seed": 0,
        "model": {"name": "in-process", "chat_template": False},
        "rollout": {"prompts_per_step": 2, "num_generations": 4, "max_new_tokens": 6},
        "algorithm": {"objective": "trajectory_reuse", "reuse_window": WINDOW, "num_iterations": 2,
                      "num_minibatches": 2},
        "optim": {"lr": 3e-2, "schedule": "constant", "warmup_steps": 0},
        "eval": {"every_steps": 0, "at_start": False, "at_end": False},
        "logging": {"progress_bar": False, "plot": False},
        "checkpoint": {"every_steps": 0, "save_final": False, **checkpoint},
    }
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(seed=0, tokenizer=tokenizer)
    return Trainer(load_config(cfg), model=model.double() if double else model, tokenizer=tokenizer,
                   train_rows=ROWS, eval_rows=ROWS[:4], reward_fns=[(variety, 1.0)])


def _timeless(record: dict) -> dict:
    return {k: v for k, v in record.items() if not (k.startswith("time_") or k.endswith("_tokens_per_s"))}


def test_the_pool_holds_the_last_window_versions_with_exact_mixture_logprobs(tmp_path) -> None:
    """float64, ω = 3: step t trains on min(t+1, 3) batches of versions t, t−1, t−2; the stored batches'
    log P_θv, recomputed from the checkpoint of step v, equal the source's; the mixture is their
    balance-heuristic log-density; the weights' ESS and the window are logged."""
    from ticgrpo.testing import make_tiny_model, make_tiny_tokenizer
    from ticgrpo.train import checkpoint as ckpt
    from ticgrpo.train.reuse import ReusingSource
    from ticgrpo.train.sources import collected_from_state
    from ticgrpo.train.step import TrainingBatch, fixed_logprobs

    steps = 5
    run = reuse_trainer(tmp_path / "run", steps, double=True, every_steps=1, keep_last=0)
    assert isinstance(run.source, ReusingSource)
    run.train()
    history = run.history
    assert all(m["grad_norm"] > 0 for m in history)
    assert [m["reuse/window"] for m in history] == [1.0, 2.0, 3.0, 3.0, 3.0]
    assert [m["staleness_max"] for m in history] == [0.0, 1.0, 2.0, 2.0, 2.0]
    assert all(m["staleness/hist_0"] == 8.0 for m in history)
    assert history[0]["reuse/ess"] == pytest.approx(1.0)
    from ticgrpo.train.metrics import is_declared

    assert [k for m in history for k in m if k != "step" and not is_declared(k)] == []
    assert all(0 < m["reuse/ess"] <= 1 and 0 < m["reuse/weight_max"] <= m["reuse/window"] for m in history)
    # at step 0 the pool is the new batch; later reward_mean is the pool's, reuse/fresh_reward_mean the new batch's
    assert history[0]["reuse/fresh_reward_mean"] == pytest.approx(history[0]["reward_mean"])
    assert any(m["reuse/fresh_reward_mean"] != pytest.approx(m["reward_mean"]) for m in history[1:])

    out = tmp_path / "run"
    state = torch.load(out / "checkpoints" / f"step-{steps:04d}" / ckpt.SOURCE_FILE, weights_only=True)[0]
    assert [entry["version"] for entry in state["stored"]] == [4, 3] and sorted(state["snapshots"]) == ["3", "4"]
    for version in (3, 4):  # the snapshots are the weights after `version` steps
        saved_weights = ckpt.read_model_state(out / "checkpoints" / f"step-{version:04d}")
        for name, tensor in state["snapshots"][str(version)].items():
            assert torch.equal(tensor, saved_weights[name]), (version, name)
    tokenizer = make_tiny_tokenizer()
    for entry in state["stored"]:
        rollout = collected_from_state(entry, torch.device("cpu")).batch.rollout
        batch = TrainingBatch.from_rollout(rollout, torch.zeros(len(rollout)))
        recomputed = {}
        for version in (2, 3, 4):  # the last step's pool: versions 2, 3, 4, one batch of 8 rows each
            weights = make_tiny_model(seed=0, tokenizer=tokenizer).double()
            weights.load_state_dict(ckpt.read_model_state(out / "checkpoints" / f"step-{version:04d}"))
            tokens = fixed_logprobs(weights, batch, run.settings).double()
            recomputed[version] = (tokens * batch.completion_mask).sum(dim=1)
        assert sorted(int(v) for v in entry["sequence_logprobs"]) == [3, 4]  # version 2 left the window
        for version_text, saved in entry["sequence_logprobs"].items():
            torch.testing.assert_close(saved, recomputed[int(version_text)], rtol=1e-12, atol=1e-12)
        mixture = torch.logsumexp(torch.stack([lp + math.log(1 / 3) for lp in recomputed.values()]), dim=0)
        torch.testing.assert_close(rollout.mixture_logprobs, mixture, rtol=1e-12, atol=1e-12)


def test_a_resumed_reuse_run_logs_and_weights_equal_an_uninterrupted_one(tmp_path) -> None:
    """Stopped after 3 steps (the window full: its batches and snapshots in source.pt) and resumed to 6:
    the same metrics.jsonl (wall-clock fields aside) and bit-identical weights as one run of 6."""
    whole = reuse_trainer(tmp_path / "whole", 6)
    whole.train()
    first = reuse_trainer(tmp_path / "parts", 3, every_steps=3)
    first.train()
    second = reuse_trainer(tmp_path / "parts", 6, every_steps=3)
    second.train(resume=True)
    for (name, a), b in zip(whole.model.state_dict().items(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    read = [[_timeless(json.loads(line)) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
            for run in ("whole", "parts")]
    assert len(read[0]) == 6 and read[0] == read[1]
    assert read[1][3]["reuse/window"] == 3.0  # the resumed step pooled the restored batches


@pytest.mark.parametrize(("overrides", "message"), [
    (["algorithm.reuse_window=3"], "needs an objective that reads mixture log-probs (trajectory_reuse), got tic_grpo"),
    (["algorithm.reuse_window=3", "algorithm.objective=trajectory_reuse", "rollout.lag=1"],
     "does not support rollout.lag"),
    (["algorithm.reuse_window=3", "algorithm.objective=trajectory_reuse", "rollout.mode=async"],
     "does not support rollout.mode: async"),
    (["algorithm.reuse_window=0"], "reuse_window"),
])
def test_unsupported_reuse_settings_are_one_line(tmp_path, capsys, overrides: list[str], message: str) -> None:
    argv = ["train", "--config", "configs/tiny.yaml", "--output-dir", str(tmp_path / "run"), "--dry-run"]
    for item in overrides:
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


@pytest.mark.parametrize("options", [*SHARED_OPTIONS[:3], {"epsilon_high": 0.1, "length_normalize": True}])
def test_declared_on_policy_gradient_with_a_mixture_and_clips(options: dict) -> None:
    """At ℓ = ℓ^old with a two-policy mixture (weights P_old/q ≠ 1, so that the clips bind on some
    rows): autograd's ∂loss/∂ℓ is −on_policy_weights, the weight-scaled sequence REINFORCE."""
    from ticgrpo.core.objectives import OBJECTIVES
    from ticgrpo.core.objectives._common import without_padded_values

    clipped = []
    for seed in range(3):
        d = random_batch(seed, spread=0.8)
        d["old"] = d["logp"].clone()
        mixture = torch.logsumexp(d["shares"].log() + (torch.stack(
            [d["logp"], d["window"][:, 1]], dim=1) * d["mask"][:, None, :]).sum(dim=2), dim=1)
        _, grad, metrics = _loss_and_grad("trajectory_reuse", {**d, "ref": d["logp"]}, options, mixture)
        batch = PolicyBatch(d["logp"], d["mask"], d["adv"], old_logprobs=d["old"], mixture_logprobs=mixture)
        norms = StepNormalizers(num_sequences=B, num_tokens=float(d["mask"].sum()), max_new_tokens=L_MAX)
        config = make_objective_config("trajectory_reuse", {k: v for k, v in options.items() if k != "beta"})
        weights = OBJECTIVES.spec("trajectory_reuse").on_policy_weights(without_padded_values(batch), config, norms)
        torch.testing.assert_close(grad, -weights * d["mask"], rtol=1e-12, atol=1e-14)
        assert float(metrics["log_w_max"] - metrics["log_w_min"]) > 0.1  # the weights are not all one
        clipped.append(float(metrics["clip_frac_high"] + metrics["clip_frac_low"]))
    assert (max(clipped) > 0) == (options.get("epsilon_high") is not None)  # a clip bound on some row


def test_lab_reuse_cli_flags_reach_the_config() -> None:
    import argparse

    from ticgrpo.lab.cli import add_parser, config_from_args

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    given = config_from_args(ReuseConfig, parser.parse_args(["lab", "reuse", "--windows", "1,4", "--reference",
                                                             "grpo", "--path-algorithm", "tic_grpo"]))
    assert (given.windows, given.reference, given.path_algorithm) == ((1, 4), "grpo", "tic_grpo")
