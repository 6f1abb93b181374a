"""ticgrpo objectives as verl policy losses.

The first group calls the adapters (`ticgrpo.integrations.verl.make_policy_loss`) with
tensors shaped as verl passes them and compares with `compute_loss`; it needs no verl.
The second group runs against the real verl package (its registry, `ActorConfig`, its own
`vanilla` loss, its `ppo_loss` caller, its Hydra config tree) and is skipped where verl cannot
be imported: verl 0.9.1 pins transformers < 5.11 and pulls ray, so it is not installed in this
project's venv. `bash scripts/test_verl.sh` runs the whole file in its own environment
(.venv-verl) with TICGRPO_REQUIRE_VERL=1, under which a missing verl fails instead of skipping.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ticgrpo.core.aggregation import sequence_mean
from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.objectives import OBJECTIVES, compute_loss, make_objective_config, register_objective
from ticgrpo.integrations.verl import default_losses, make_policy_loss, step_normalizers

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "verl"


def _verl_like_batch(seed=0, rows=8, width=7, spread=0.3):
    """Right-padded [B, T] tensors as verl's ppo_loss passes them; advantages broadcast × mask."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (rows,), generator=gen)
    mask = torch.arange(width)[None, :] < lengths[:, None]
    old = -torch.rand(rows, width, generator=gen, dtype=torch.float64).float() * 2
    new = (old + spread * torch.randn(rows, width, generator=gen)).requires_grad_(True)
    seq_adv = torch.randn(rows, generator=gen)
    advantages = seq_adv[:, None] * mask
    return old, new, advantages, mask, seq_adv


def _grad(loss, x):
    (g,) = torch.autograd.grad(loss, x)
    return g


@dataclass
class _MeanLogProbConfig:
    def validate(self) -> None:
        pass


def _mean_logprob_loss(batch, config, norms):
    """A minimal sequence-level objective: −(1/N_seq) Σ_i A_i · mean_t ℓ_{i,t}, A read as [B]."""
    per_sequence = -batch.sequence_advantages() * sequence_mean(batch.current_logprobs(), batch.float_mask)
    return per_sequence.sum() / norms.num_sequences, {"mean_advantage": batch.sequence_advantages().mean()}


@pytest.fixture
def new_sequence_objective(monkeypatch):
    """Registers `test_mean_logprob` (sequence_advantages=True) for one test, in a copy of the registry."""
    monkeypatch.setattr(OBJECTIVES, "_specs", dict(OBJECTIVES._specs))
    register_objective("test_mean_logprob", options=_MeanLogProbConfig, default_advantage="group_norm",
                       uses_old_logprobs=False, sequence_advantages=True)(_mean_logprob_loss)
    return "test_mean_logprob"


# ---------------------------------------------------------------- without verl


def test_tic_grpo_adapter_equals_compute_loss_with_global_counts():
    old, new, adv, mask, seq_adv = _verl_like_batch()
    info = {"dp_size": 2, "global_batch_size": 24, "batch_num_tokens": 100, "loss_scale_factor": None}
    loss, metrics = make_policy_loss("tic_grpo")(old, new, adv, mask, "token-mean", {"global_batch_info": info})
    norms = StepNormalizers(num_sequences=12.0, num_tokens=50.0, max_new_tokens=mask.shape[1])
    expected, _ = compute_loss(
        "tic_grpo", PolicyBatch(new, mask, seq_adv, old_logprobs=old), make_objective_config("tic_grpo"), norms
    )
    assert torch.allclose(loss, expected, atol=1e-7)
    assert torch.allclose(_grad(loss, new), _grad(expected, new), atol=1e-7)
    assert "actor/ticgrpo/log_w_mean" in metrics and isinstance(metrics["actor/ticgrpo/log_w_mean"], float)


@pytest.mark.parametrize("objective", ["tic_grpo", "grpo", "dapo", "dr_grpo", "gspo", "cispo"])
def test_micro_batches_and_ranks_add_up_to_the_whole_step(objective):
    """verl splits a mini-batch over dp ranks (gradients averaged) and micro-batches (summed)."""
    old, new, adv, mask, _ = _verl_like_batch(seed=1, rows=8)
    fn = make_policy_loss(objective)
    whole, _ = fn(old, new, adv, mask, "token-mean", None)  # no global info: the batch is the step
    dp = 2
    info = {
        "dp_size": dp,
        "global_batch_size": 8,
        "batch_num_tokens": int(mask.sum()),
        "loss_scale_factor": mask.shape[1],
    }
    rank_losses: list[torch.Tensor] = []
    for rank in range(dp):
        rows = slice(rank * 4, (rank + 1) * 4)
        micro = [slice(rows.start, rows.start + 2), slice(rows.start + 2, rows.stop)]
        rank_losses.append(torch.stack(
            [fn(old[s], new[s], adv[s], mask[s], "token-mean", {"global_batch_info": info})[0] for s in micro]
        ).sum())
    averaged = torch.stack(rank_losses).sum() / dp  # what DDP/FSDP's gradient average amounts to
    assert torch.allclose(averaged, whole, atol=1e-6)
    assert torch.allclose(_grad(averaged, new), _grad(whole, new), atol=1e-6)


def test_a_newly_registered_sequence_objective_gets_one_advantage_per_row(new_sequence_objective):
    """The adapter reads `sequence_advantages` from the registry: no list of names to extend."""
    old, new, adv, mask, seq_adv = _verl_like_batch(seed=7)
    loss, metrics = make_policy_loss(new_sequence_objective)(old, new, adv, mask, "token-mean", None)
    expected, _ = compute_loss(new_sequence_objective, PolicyBatch(new, mask, seq_adv, old_logprobs=old))
    assert torch.allclose(loss, expected, atol=1e-7)
    assert torch.allclose(_grad(loss, new), _grad(expected, new), atol=1e-7)
    assert metrics["actor/ticgrpo/mean_advantage"] == pytest.approx(float(seq_adv.mean()), abs=1e-6)
    with pytest.raises(ValueError, match="vary along the response"):
        make_policy_loss(new_sequence_objective)(old, new, adv + 0.1 * torch.rand_like(adv) * mask, mask)


def test_step_normalizers_from_verl_info():
    mask = torch.ones(3, 5, dtype=torch.bool)
    norms = step_normalizers(
        mask,
        {
            "global_batch_info": {
                "dp_size": 4,
                "global_batch_size": 64,
                "batch_num_tokens": 1000,
                "loss_scale_factor": 512,
            }
        },
    )
    assert (norms.num_sequences, norms.num_tokens, norms.max_new_tokens) == (16.0, 250.0, 512)
    local = step_normalizers(mask, None)
    assert (local.num_sequences, local.num_tokens, local.max_new_tokens) == (3.0, 15.0, 5)


def test_aggregation_follows_verl_only_when_asked():
    old, new, adv, mask, _ = _verl_like_batch(seed=2)
    spec_default, _ = make_policy_loss("grpo")(old, new, adv, mask, "token-mean", None)
    follow, _ = make_policy_loss("grpo", {"aggregation": "verl"})(old, new, adv, mask, "token-mean", None)
    batch = PolicyBatch(new, mask, adv, old_logprobs=old)
    for loss, mode in ((spec_default, "seq-mean-token-mean"), (follow, "token-mean")):
        expected, _ = compute_loss("grpo", batch, make_objective_config("grpo", {"aggregation": mode}))
        assert torch.allclose(loss, expected, atol=1e-7)


def test_adapter_rejections():
    old, new, adv, mask, _ = _verl_like_batch(seed=3)
    with pytest.raises(ValueError, match="vary along the response"):
        make_policy_loss("tic_grpo")(old, new, adv + 0.1 * torch.rand_like(adv) * mask, mask)
    with pytest.raises(ValueError, match="rollout"):
        make_policy_loss("grpo")(old, new, adv, mask, rollout_is_weights=torch.ones_like(old))
    with pytest.raises(ValueError, match="beta"):
        make_policy_loss("grpo", {"beta": 0.1})
    with pytest.raises(ValueError, match="gtpo"):
        make_policy_loss("gtpo")
    with pytest.raises(ValueError, match="token-sum"):
        make_policy_loss("grpo", {"aggregation": "verl"})(old, new, adv, mask, "token-sum")
    with pytest.raises(ValueError, match="epsilon_hgh"):
        make_policy_loss("tic_grpo", {"epsilon_hgh": 0.2})


def test_default_loss_names(monkeypatch):
    names = set(default_losses())
    assert {"ticgrpo_tic_grpo", "ticgrpo_grpo", "ticgrpo_no_is_stale"} <= names
    assert "ticgrpo_gtpo" not in names and "ticgrpo_no_is" not in names
    monkeypatch.setenv("TICGRPO_VERL_OBJECTIVE_OPTIONS", '{"tic_grpo": {"epsilon_high": 0.28, "ratio_cap": 5}}')
    old, new, adv, mask, seq_adv = _verl_like_batch(seed=4, spread=1.0)
    loss, _ = make_policy_loss("tic_grpo")(old, new, adv, mask)
    config = make_objective_config("tic_grpo", {"epsilon_high": 0.28, "ratio_cap": 5.0})
    expected, _ = compute_loss("tic_grpo", PolicyBatch(new, mask, seq_adv, old_logprobs=old), config)
    assert torch.allclose(loss, expected)


# ------------------------------------------------------------------- real verl


def _verl():
    if os.environ.get("TICGRPO_REQUIRE_VERL") == "1":  # scripts/test_verl.sh: a skip would hide a broken env
        import verl.trainer.ppo.core_algos as core_algos

        return core_algos
    return pytest.importorskip("verl.trainer.ppo.core_algos", reason="verl is not importable here")


def _actor_config(loss_mode, **kw):
    from verl.workers.config import ActorConfig, PolicyLossConfig

    return ActorConfig(
        strategy="fsdp",
        ppo_mini_batch_size=4,
        ppo_micro_batch_size_per_gpu=2,
        use_dynamic_bsz=False,
        rollout_n=2,
        policy_loss=PolicyLossConfig(loss_mode=loss_mode),
        **kw,
    )


def test_real_verl_registry_holds_the_ticgrpo_losses():
    core_algos = _verl()
    import ticgrpo.integrations.verl as adapter

    assert set(adapter.REGISTERED) == set(default_losses())
    for name in adapter.REGISTERED:
        assert core_algos.get_policy_loss_fn(name).__name__ == name


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_real_verl_grpo_equals_verl_vanilla(mode):
    """ticgrpo `grpo` (+ dual clip c = verl's clip_ratio_c, aggregation from verl) = verl's PPO loss."""
    core_algos = _verl()
    import ticgrpo.integrations.verl  # noqa: F401  (registration)

    core_algos.register_policy_loss("ticgrpo_grpo_dualclip")(
        make_policy_loss("grpo", {"ratio_cap": 3.0, "aggregation": "verl", "epsilon_high": 0.28})
    )
    old, new, adv, mask, _ = _verl_like_batch(seed=5, spread=0.8)
    config = _actor_config("vanilla", loss_agg_mode=mode, clip_ratio_high=0.28, loss_scale_factor=16)
    config.global_batch_info.update(dp_size=2, batch_num_tokens=90, global_batch_size=16, loss_scale_factor=16)
    maskf = mask.float()
    theirs, their_metrics = core_algos.get_policy_loss_fn("vanilla")(old, new, adv, maskf, mode, config)
    ours, _ = core_algos.get_policy_loss_fn("ticgrpo_grpo_dualclip")(old, new, adv, maskf, mode, config)
    assert their_metrics["actor/pg_clipfrac"] > 0 and their_metrics["actor/pg_clipfrac_lower"] > 0
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=1e-6), (ours, theirs)
    assert torch.allclose(_grad(ours, new), _grad(theirs, new), atol=1e-6, rtol=1e-5)


def _run_verl_ppo_loss(loss_mode, old, new, adv, mask):
    """verl's own actor loss (`verl.workers.utils.losses.ppo_loss`) on the batch, as its actor calls it."""
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.losses import ppo_loss

    rows, width = mask.shape
    prompt_len = 3
    prompts = torch.ones(rows, prompt_len, dtype=torch.long)
    responses = torch.ones(rows, width, dtype=torch.long)
    attention_mask = torch.cat([torch.ones(rows, prompt_len, dtype=torch.long), mask.long()], dim=1)
    # The model's unpadded log-prob stream: for each row, prompt + response positions; the
    # response token j's log-prob sits one position earlier (verl's left shift).
    pieces = []
    for i in range(rows):
        n = int(mask[i].sum())
        pieces += [torch.zeros(prompt_len - 1), new[i, :n], torch.zeros(1)]
    flat = torch.cat(pieces)
    data = TensorDict(
        {
            "prompts": prompts,
            "responses": responses,
            "attention_mask": attention_mask,
            "response_mask": mask.long(),
            "old_log_probs": old,
            "advantages": adv,
        },
        batch_size=[rows],
    )
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=int(mask.sum()), global_batch_size=rows)
    return ppo_loss(_actor_config(loss_mode, entropy_coeff=0.0), {"log_probs": flat}, data)


def test_real_verl_ppo_loss_runs_tic_grpo():
    """verl's own actor loss (`verl.workers.utils.losses.ppo_loss`) selecting loss_mode=ticgrpo_tic_grpo."""
    _verl()
    import ticgrpo.integrations.verl  # noqa: F401  (registration)

    old, new, adv, mask, seq_adv = _verl_like_batch(seed=6, rows=4, width=5)
    loss, metrics = _run_verl_ppo_loss("ticgrpo_tic_grpo", old, new, adv, mask)
    expected, _ = compute_loss("tic_grpo", PolicyBatch(new, mask, seq_adv, old_logprobs=old))
    assert torch.allclose(loss, expected, atol=1e-6), (loss, expected)
    assert torch.allclose(_grad(loss, new), _grad(expected, new), atol=1e-6)
    assert "actor/ticgrpo/log_w_mean" in metrics


def test_real_verl_ppo_loss_runs_a_newly_registered_sequence_objective(new_sequence_objective, monkeypatch):
    """An objective registered after ticgrpo's import, with sequence_advantages=True, through verl's ppo_loss."""
    core_algos = _verl()
    from ticgrpo.integrations.verl import register_objective

    monkeypatch.setattr(core_algos, "POLICY_LOSS_REGISTRY", dict(core_algos.POLICY_LOSS_REGISTRY))
    register_objective("test_mean_logprob_loss", new_sequence_objective)
    old, new, adv, mask, seq_adv = _verl_like_batch(seed=8, rows=4, width=5)
    loss, metrics = _run_verl_ppo_loss("test_mean_logprob_loss", old, new, adv, mask)
    expected, _ = compute_loss(new_sequence_objective, PolicyBatch(new, mask, seq_adv, old_logprobs=old))
    assert torch.allclose(loss, expected, atol=1e-6), (loss, expected)
    assert torch.allclose(_grad(loss, new), _grad(expected, new), atol=1e-6)
    assert "actor/ticgrpo/mean_advantage" in metrics  # verl wraps metric values in its own Metric type


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_real_verl_example_configs_compose_against_verls_hydra_tree(example):
    """examples/verl/check_config.py: verl's schema accepts every key, the actor converts, the loss is found."""
    _verl()
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "check_config.py"), str(EXAMPLES / example)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"{example}: " in out.stdout and "loss_mode=ticgrpo_tic_grpo (ticgrpo_tic_grpo)" in out.stdout


def test_real_verl_external_module_env_var_registers_on_import_verl():
    _verl()
    env = dict(os.environ, VERL_USE_EXTERNAL_MODULES="ticgrpo.integrations.verl", VERL_USE_EXTERNAL_PLUGINS="none")
    code = (
        "import verl\n"
        "from verl.trainer.ppo.core_algos import get_policy_loss_fn\n"
        "print(get_policy_loss_fn('ticgrpo_tic_grpo').__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ticgrpo_tic_grpo")
