"""TicGRPOTrainer on real TRL (CPU, tiny model): training steps and loss equivalence with TRL's `grpo`."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from trl import GRPOConfig, GRPOTrainer  # noqa: E402
from trl.trainer.utils import split_tensor_dict  # noqa: E402

from ticgrpo.core.advantages import compute_advantages  # noqa: E402
from ticgrpo.core.objectives import make_objective_config  # noqa: E402
from ticgrpo.integrations.trl import TicGRPOConfig, TicGRPOTrainer  # noqa: E402
from ticgrpo.testing import make_tiny_model, make_tiny_tokenizer  # noqa: E402

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

GROUP = 4
MAX_NEW = 6


def _reward(completions, **kwargs):
    # Deterministic, varied within a group: the number of digits in the completion.
    return [float(sum(ch.isdigit() for ch in c)) + 0.1 * len(c) for c in completions]


def _dataset():
    prompts = [f"What is {a} + {b}?" for a, b in [(3, 4), (12, 7), (21, 14), (33, 49)]]
    return datasets.Dataset.from_dict({"prompt": prompts})


def _args(tmp_path, cls=TicGRPOConfig, **overrides):
    options = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=GROUP,
        gradient_accumulation_steps=2,
        num_generations=GROUP,
        max_completion_length=MAX_NEW,
        max_steps=2,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        use_vllm=False,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
        temperature=1.0,
    )
    options.update(overrides)
    return cls(**options)


def _trainer(tmp_path, cls=TicGRPOTrainer, **kwargs):
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(tokenizer=tokenizer, seed=0)
    return cls(
        model=model,
        reward_funcs=_reward,
        args=kwargs.pop("args"),
        train_dataset=_dataset(),
        processing_class=tokenizer,
        **kwargs,
    )


def test_tic_grpo_trains_two_steps(tmp_path):
    trainer = _trainer(tmp_path, args=_args(tmp_path, ticgrpo_objective="tic_grpo"))
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    result = trainer.train()
    assert trainer.state.global_step == 2
    assert torch.isfinite(torch.tensor(result.training_loss))
    changed = any(not torch.equal(before[k], v) for k, v in trainer.model.named_parameters())
    assert changed, "two optimizer steps left every parameter unchanged"
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all(torch.isfinite(torch.tensor(h["loss"])) for h in logged)
    assert any("ticgrpo/log_w_mean" in h for h in trainer.state.log_history)
    # advantage "auto" for tic_grpo is length_corrected on the real rewards and lengths
    assert trainer.ticgrpo_advantage == "length_corrected"


def _real_inputs(trainer):
    """One micro-batch exactly as TRL builds it (generation, rewards, advantages)."""
    trainer.model.train()
    batch = [trainer.train_dataset[i] for i in range(2) for _ in range(GROUP)]  # 2 prompts × G
    return trainer._generate_and_score_completions(batch)


def _micro_batches(trainer, inputs):
    """Split the generation batch into GA micro-batches, as TRL does (its own helper)."""
    trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
    return split_tensor_dict(inputs, trainer.args.steps_per_generation)


def _loss_and_grads(trainer, fn, micro_batches):
    trainer.model.zero_grad()
    total = 0.0
    for inputs in micro_batches:
        loss = fn(trainer, trainer.model, inputs)
        loss.backward()
        total = total + loss.detach()
    grads = [p.grad.detach().clone() for p in trainer.model.parameters() if p.grad is not None]
    return total, grads


def test_grpo_objective_equals_trl_grpo_loss(tmp_path):
    args = _args(tmp_path, loss_type="grpo", ticgrpo_objective="grpo", ticgrpo_advantage="trl", beta=0.0)
    trainer = _trainer(tmp_path, args=args)
    torch.manual_seed(0)
    inputs = _real_inputs(trainer)  # 8 rows: the generation batch of one step (GA = 2)
    mask = inputs["completion_mask"]
    assert (mask.sum(dim=1) > 0).all()
    assert float(inputs["ticgrpo_num_sequences"]) == mask.size(0)
    # Off-policy old log-probs so that ratios differ from 1 and both clip branches bind.
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model,
            torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
            torch.cat([inputs["prompt_mask"], mask], 1),
            inputs["completion_ids"].size(1),
        )
    gen = torch.Generator().manual_seed(1)
    inputs["old_per_token_logps"] = logps + 0.3 * torch.randn(logps.shape, generator=gen)
    inputs["advantages"] = torch.randn(mask.size(0), generator=gen)
    micro = _micro_batches(trainer, inputs)
    assert len(micro) == 2

    ours, ours_grads = _loss_and_grads(trainer, TicGRPOTrainer._compute_loss, micro)
    theirs, their_grads = _loss_and_grads(trainer, GRPOTrainer._compute_loss, micro)  # TRL's loss_type="grpo"
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=1e-6), (ours, theirs)
    assert len(ours_grads) == len(their_grads) > 0
    for a, b in zip(ours_grads, their_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    # each micro-batch alone matches too (same N_seq = rows · GA)
    one = TicGRPOTrainer._compute_loss(trainer, trainer.model, micro[0])
    assert torch.allclose(one, GRPOTrainer._compute_loss(trainer, trainer.model, micro[0]), atol=1e-6)
    assert max(trainer._metrics["train"]["ticgrpo/clip_frac_high"]) > 0  # clipping was exercised

    # tic_grpo on the same inputs: finite loss and gradient
    trainer.ticgrpo_objective = "tic_grpo"
    trainer.ticgrpo_config = make_objective_config("tic_grpo")
    tic, tic_grads = _loss_and_grads(trainer, TicGRPOTrainer._compute_loss, micro)
    assert torch.isfinite(tic) and tic_grads and all(torch.isfinite(g).all() for g in tic_grads)


def test_group_norm_advantages_match_trl(tmp_path):
    args = _args(tmp_path, ticgrpo_objective="grpo", ticgrpo_advantage="group_norm")
    trainer = _trainer(tmp_path, args=args)
    torch.manual_seed(2)
    _real_inputs(trainer)
    last = trainer.ticgrpo_last_batch
    assert torch.allclose(last["advantages"], last["trl_advantages"], atol=1e-5)


def test_length_corrected_advantages_use_completion_lengths(tmp_path):
    trainer = _trainer(tmp_path, args=_args(tmp_path, ticgrpo_objective="tic_grpo"))
    torch.manual_seed(3)
    inputs = _real_inputs(trainer)
    rewards = trainer._ticgrpo_rewards_per_func.sum(dim=1).view(-1, GROUP)
    lengths = inputs["completion_mask"].sum(dim=1).float().view(-1, GROUP)
    expected = compute_advantages("length_corrected", rewards, lengths).advantages.flatten()
    assert torch.allclose(inputs["advantages"], expected, atol=1e-6)


def test_rejects_unsupported_settings(tmp_path):
    with pytest.raises(ValueError, match="gtpo"):
        _trainer(tmp_path, args=_args(tmp_path, ticgrpo_objective="gtpo"))
    with pytest.raises(ValueError, match="stale"):
        _trainer(tmp_path, args=_args(tmp_path, ticgrpo_objective="no_is"))
    with pytest.raises(ValueError, match="top_entropy_quantile"):
        _trainer(tmp_path, args=_args(tmp_path, top_entropy_quantile=0.5))
    with pytest.raises(ValueError, match=r"GRPOConfig\.beta"):
        _trainer(tmp_path, args=_args(tmp_path, ticgrpo_objective_options={"beta": 0.1}))
    # A plain GRPOConfig plus keyword arguments works too.
    trainer = _trainer(
        tmp_path, args=_args(tmp_path, cls=GRPOConfig), ticgrpo_objective="gspo", ticgrpo_advantage="rloo"
    )
    assert trainer.ticgrpo_objective == "gspo" and trainer.ticgrpo_advantage == "rloo"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch_config(tmp_path, name: str) -> str:
    """An examples/accelerate config cut down to 2 CPU processes without mixed precision."""
    import yaml

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "examples", "accelerate", name)) as f:
        config = yaml.safe_load(f)
    config.update(num_processes=2, mixed_precision="no")
    path = tmp_path / f"launch-{name}"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.slow
def test_plugin_under_accelerate_launch_ddp_and_fsdp2(tmp_path):
    """examples/trl/train_tic_grpo.py --smoke with 2 processes (gloo) under the DDP and FSDP2
    example configs: both train, and take the same first step (same seed, same data)."""
    import re
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    first_grad_norms = {}
    for name in ("ddp_8gpu.yaml", "fsdp_8gpu.yaml"):
        cmd = [accelerate, "launch", "--config_file", _launch_config(tmp_path, name),
               "--main_process_port", str(_free_port()),
               os.path.join(root, "examples", "trl", "train_tic_grpo.py"), "--smoke",
               "--output-dir", str(tmp_path / f"out-{name}")]
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        out = proc.stdout + proc.stderr
        (tmp_path / f"{name}.log").write_text(out)
        assert out.count("done: 2 steps") == 2, out[-3000:]  # both processes finished training
        # Under load, a gloo process of TRL/accelerate has (rarely) aborted while exiting, after
        # training had finished ("terminate called without an active exception"); an explicit
        # destroy_process_group in the script made one CI run hang instead. That shutdown race is
        # outside ticgrpo: tolerated only in exactly that form, anything else fails.
        exit_race = "terminate called without an active exception" in out
        assert proc.returncode == 0 or exit_race, out[-3000:]
        norms = re.findall(r"'grad_norm': '([0-9.eE+-]+)'", out)
        assert norms and all(torch.isfinite(torch.tensor(float(n))) for n in norms)
        first_grad_norms[name] = float(norms[0])
    assert first_grad_norms["ddp_8gpu.yaml"] == pytest.approx(first_grad_norms["fsdp_8gpu.yaml"], rel=1e-3)
    assert first_grad_norms["ddp_8gpu.yaml"] > 0
