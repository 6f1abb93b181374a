"""The trainer on a tiny in-process Llama with a real (word-level) tokenizer and real generate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ticgrpo.config import load_config
from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.logprobs import completion_logprobs
from ticgrpo.core.objectives import compute_loss
from ticgrpo.rollout import HFGenerateEngine, SamplingParams
from ticgrpo.testing import make_tiny_model, make_tiny_tokenizer
from ticgrpo.train import Trainer, train
from ticgrpo.train.inner_loop import optimize
from ticgrpo.train.step import StepSettings, TrainingBatch, accumulate_gradients, fixed_logprobs

TOKENIZER = make_tiny_tokenizer()
EOS = TOKENIZER.eos_token_id


def tiny_tokenizer():
    return make_tiny_tokenizer()


def tiny_model(seed: int = 0):
    return make_tiny_model(seed=seed, tokenizer=TOKENIZER)


ROWS = [{"prompt": f"What is {i} + {j}?", "answer": str(i + j)} for i in range(10) for j in range(10)]


def x_fraction(prompts, completions, **kwargs):
    """Reward: the fraction of the characters '7' in the completion."""
    return [c.count("7") / max(len(c), 1) for c in completions]


def base_config(tmp_path: Path, **sections) -> dict:
    cfg: dict[str, Any] = {
        "output_dir": str(tmp_path / "run"),
        "max_steps": 3,
        "seed": 0,
        "model": {"name": "in-process", "chat_template": False},
        "rollout": {"prompts_per_step": 2, "num_generations": 4, "max_new_tokens": 6},
        "optim": {"lr": 1e-2},
        "eval": {"every_steps": 0, "num_examples": 6, "reward": "answer_format"},
        "logging": {"progress_bar": False},
        "checkpoint": {"every_steps": 0},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return cfg


def make_trainer(tmp_path: Path, reward=x_fraction, rows=ROWS, **sections) -> Trainer:
    return Trainer(load_config(base_config(tmp_path, **sections)), model=tiny_model(), tokenizer=tiny_tokenizer(),
                   train_rows=rows, eval_rows=ROWS[:6], reward_fns=[(reward, 1.0)])


def rollout_batch(model, n_prompts: int = 2, g: int = 4, max_new: int = 6, seed: int = 0) -> TrainingBatch:
    engine = HFGenerateEngine(model, tiny_tokenizer())
    torch.manual_seed(seed)
    out = engine.generate([r["prompt"] for r in ROWS[:n_prompts]], g, SamplingParams(max_new_tokens=max_new))
    adv = torch.randn(len(out), generator=torch.Generator().manual_seed(seed))
    return TrainingBatch.from_rollout(out, adv)


def grads(model) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def test_train_eval_save_reload(tmp_path):
    result = make_trainer(tmp_path, eval={"every_steps": 2, "ks": [1, 2]}).train()
    run = Path(result.output_dir)
    assert result.steps == 3
    for name in ("config.yaml", "metrics.jsonl", "eval.jsonl", "samples.jsonl", "curves.png"):
        assert (run / name).is_file(), name
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for key in ("reward_mean", "reward_std", "reward/x_fraction_mean", "advantage_std", "frac_zero_std",
                "loss", "grad_norm", "lr", "entropy", "completion_length_mean", "truncated_frac",
                "rollout_tokens_per_s", "train_tokens_per_s", "time_rollout", "time_reward",
                "time_old_logprobs", "time_train", "time_step", "log_w_mean", "clip_frac_high"):
        assert key in metrics[0], key
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 2, 3]  # before, every 2, at the end
    assert {"accuracy", "constant_baseline", "pass@1", "pass@2", "maj@2", "avg@2"} <= set(evals[0])
    for record in evals:  # every evaluation keeps its summary (with intervals) and its completions
        folder = run / "evals" / f"step-{record['step']:04d}"
        summary = json.loads((folder / "eval.json").read_text())
        assert summary["metrics"]["avg@2"]["value"] == record["avg@2"] and "low" in summary["metrics"]["pass@2"]
        assert len((folder / "samples.jsonl").read_text().splitlines()) == 6  # the 6 held-out rows
    assert load_config(run / "config.yaml").rollout.num_generations == 4  # the resolved config reloads
    assert result.final_dir is not None
    reloaded = AutoModelForCausalLM.from_pretrained(result.final_dir)
    fresh = tiny_model()  # training changed the weights
    same = [torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), fresh.state_dict().values(),
                                                   strict=True)]
    assert not all(same)
    tok = AutoTokenizer.from_pretrained(result.final_dir)
    assert tok.eos_token_id == EOS


def test_final_model_equals_trained_model(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=1, eval={"at_start": False, "at_end": False})
    trainer.train()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    for name, p in trainer.model.state_dict().items():
        assert torch.equal(p, reloaded.state_dict()[name]), name


def test_mu1_trainer_loss_equals_compute_loss(tmp_path):
    model = tiny_model()
    batch = rollout_batch(model)
    settings = StepSettings("tic_grpo", None, max_new_tokens=6)
    from ticgrpo.core.objectives import make_objective_config

    settings.objective_config = make_objective_config("tic_grpo")
    assert not settings.needs_old_logprobs  # μ·M = 1: on-policy, no old log-probs
    logp, _ = completion_logprobs(model, batch.input_ids, batch.attention_mask, batch.completion_ids,
                                  batch.completion_mask)
    direct, _ = compute_loss("tic_grpo", PolicyBatch(logp, batch.completion_mask, batch.advantages),
                             settings.objective_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    stats = optimize(model, optimizer, batch, settings)
    assert stats.losses == [pytest.approx(float(direct.detach()), abs=1e-6)]


@pytest.mark.parametrize("objective", ["tic_grpo", "grpo", "no_is"])
def test_micro_batches_give_the_same_gradient(objective):
    from ticgrpo.core.objectives import make_objective_config

    model = tiny_model()
    batch = rollout_batch(model, n_prompts=2, g=4)
    settings = StepSettings(objective, make_objective_config(objective), max_new_tokens=6)
    # an off-policy batch, so that ratios and clipping are exercised
    old = fixed_logprobs(model, batch, settings)
    batch.old_logprobs = old + 0.1 * torch.randn(old.shape, generator=torch.Generator().manual_seed(1))
    batch.old_logprobs = batch.old_logprobs * batch.completion_mask
    accumulate_gradients(model, batch, settings)
    whole = grads(model)
    model.zero_grad(set_to_none=True)
    settings.micro_batch_size = 3  # uneven split 3+3+2
    norms = StepNormalizers.from_mask(batch.completion_mask, 6)
    accumulate_gradients(model, batch, settings, norms)
    split = grads(model)
    for a, b in zip(whole, split, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_frozen_schedule_applies_one_gradient(tmp_path):
    from ticgrpo.core.objectives import make_objective_config

    model = tiny_model()
    batch = rollout_batch(model)
    settings = StepSettings("no_is", make_objective_config("no_is", {"mode": "frozen"}), num_iterations=2,
                            num_minibatches=2, micro_batch_size=2, max_grad_norm=None, max_new_tokens=6)
    assert settings.frozen and not settings.needs_old_logprobs
    accumulate_gradients(model, batch, settings)
    at_old = grads(model)  # ĝ(θ_old) of the whole batch
    model.zero_grad(set_to_none=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    applied = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: applied.append(grads(model)))
    params_before = [p.detach().clone() for p in model.parameters()]
    stats = optimize(model, optimizer, batch, settings)
    assert len(applied) == 4 == stats.metrics["optimizer_steps"]
    for step_grads in applied:
        for a, b in zip(step_grads, at_old, strict=True):
            assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(params_before, model.parameters(), strict=True))

    # `stale` re-evaluates at the current θ: the gradient changes between inner steps
    model2 = tiny_model()
    settings.objective_config = make_objective_config("no_is", {"mode": "stale"})
    optimizer2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    applied2 = []
    optimizer2.register_step_pre_hook(lambda opt, args, kwargs: applied2.append(grads(model2)))
    settings.num_minibatches = 1
    optimize(model2, optimizer2, batch, settings)
    assert not torch.equal(applied2[0][0], applied2[1][0])


def mixed_for_some(prompts, completions, kind, **kwargs):
    """Constant reward for 'const' prompts, completion-dependent for the others."""
    return [1.0 if k == "const" else float(c.count("7") > 0) + 0.01 * len(c)
            for c, k in zip(completions, kind, strict=True)]


def test_dynamic_sampling_keeps_only_mixed_groups(tmp_path):
    rows = [{"prompt": "x y", "kind": "const"}, {"prompt": "What is 1 + 1?", "kind": "mixed"}] * 20
    trainer = make_trainer(tmp_path, reward=mixed_for_some, rows=rows,
                           rollout={"prompts_per_step": 3},
                           algorithm={"dynamic_sampling": True, "dynamic_sampling_max_rounds": 6},
                           data={"shuffle": False})
    collected = trainer.source.sampling.collect(trainer.stream, trainer.step)
    scored, info = collected.batch, collected.metrics
    rewards = scored.group_rewards()
    assert rewards.shape == (3, 4)  # the batch is filled with P groups
    assert info["groups_kept"] == 3 and info["sampling_rounds"] >= 2
    assert all(row["kind"] == "mixed" for row in scored.rows)
    assert all(not bool((r == r[0]).all()) for r in rewards)
    assert scored.rollout.group_ids.tolist() == [k for k in range(3) for _ in range(4)]
    metrics = trainer.train_step()  # and the step trains on it
    assert metrics["frac_zero_std"] == 0.0 and metrics["groups_kept"] == 3


def test_resume_continues_like_an_uninterrupted_run(tmp_path):
    sections = {"max_steps": 4, "checkpoint": {"every_steps": 2, "save_final": False},
                "eval": {"at_start": False, "at_end": False},
                "algorithm": {"num_iterations": 2, "num_minibatches": 2}, "optim": {"lr": 1e-2, "warmup_steps": 1}}
    full = make_trainer(tmp_path / "a", **sections)
    full.train()
    first = make_trainer(tmp_path / "b", **{**sections, "max_steps": 2})
    first.train()
    assert (tmp_path / "b" / "run" / "checkpoints" / "step-0002").is_dir()
    resumed = make_trainer(tmp_path / "b", **sections)
    result = resumed.train(resume=True)
    assert result.steps == 4
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    lines = (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4]


def test_learning_happens(tmp_path):
    """Reward = fraction of '7' characters; a tiny model learns to emit them within a few dozen steps."""
    result = make_trainer(tmp_path, max_steps=20, eval={"at_start": False, "at_end": False},
                          rollout={"max_new_tokens": 4}, optim={"lr": 2e-2},
                          checkpoint={"save_final": False}, logging={"plot": False, "progress_bar": False},
                          algorithm={"log_entropy": False, "num_iterations": 2, "num_minibatches": 2}).train()
    rewards = [m["reward_mean"] for m in result.history]
    early, late = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert early < 0.2 and late > early + 0.3, rewards


def test_train_function_from_yaml(tmp_path):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base_config(tmp_path, max_steps=1, eval={"at_start": False})))
    result = train(path, model=tiny_model(), tokenizer=tiny_tokenizer(), train_rows=ROWS, eval_rows=ROWS[:4],
                   reward_fns=[(x_fraction, 1.0)])
    assert result.steps == 1 and len(result.evals) == 1


@pytest.mark.parametrize("autocast", [None, torch.bfloat16])
def test_old_logprobs_match_the_first_inner_step(autocast):
    """ℓ^old (no_grad) equals the differentiable ℓ of the first inner step, so w = 1 exactly there."""
    from ticgrpo.core.objectives import make_objective_config
    from ticgrpo.train.step import policy_logprobs

    model = tiny_model()
    batch = rollout_batch(model)
    settings = StepSettings("tic_grpo", make_objective_config("tic_grpo"), num_iterations=2, max_new_tokens=6,
                            autocast_dtype=autocast, micro_batch_size=4)
    assert settings.needs_old_logprobs
    old = fixed_logprobs(model, batch, settings)
    current, _ = policy_logprobs(model, batch.rows(torch.arange(4)), settings)
    assert torch.equal(old[:4], current.detach())


def test_cli_tiny_config_end_to_end_and_resume(tmp_path, capsys):
    from ticgrpo.cli import main

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "tiny"
    args = ["train", "--config", str(root / "configs" / "tiny.yaml"), "--output-dir", str(out),
            "--set", "logging.progress_bar=false", "--set", "eval.ks=[]", "--set", "eval.num_examples=4",
            "--set", "rollout.max_new_tokens=8"]
    assert main([*args, "--set", "max_steps=2"]) == 0
    assert (out / "final" / "config.json").is_file() and (out / "checkpoints" / "step-0002").is_dir()
    assert main([*args, "--set", "max_steps=3", "--resume"]) == 0
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    # the closing summary reads the whole eval log, including the records before the resume
    evals = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]
    summary, warning = capsys.readouterr().out.strip().splitlines()[-2:]
    assert summary.startswith(f"held-out accuracy {evals[0]['accuracy']:.2f} (step 0) → ")
    assert f"(step {evals[-1]['step']})" in summary
    # the random tiny model answers nothing right: at or below always giving the commonest answer
    answer = json.loads((out / "evals" / "step-0003" / "eval.json").read_text())["constant_baseline"]["answer"]
    assert evals[-1]["accuracy"] <= evals[-1]["constant_baseline"] and evals[-1]["constant_baseline"] > 0
    assert warning.startswith(f"warning: held-out accuracy {evals[-1]['accuracy']:.2f} at step 3 is at or below "
                              f"the constant baseline {evals[-1]['constant_baseline']:.2f} (always answering "
                              f"{answer!r})")


@pytest.mark.parametrize("lora", [None, {"r": 4, "lora_alpha": 8}])
def test_beta_uses_a_reference_model(tmp_path, lora):
    cfg = base_config(tmp_path, max_steps=1, eval={"at_start": False, "at_end": False},
                      checkpoint={"save_final": False}, logging={"plot": False, "progress_bar": False})
    cfg["model"] = {"name": "tiny-test", "chat_template": True, "lora": lora}
    cfg["algorithm"] = {"objective": {"name": "tic_grpo", "beta": 0.1}, "num_iterations": 2}
    trainer = Trainer(load_config(cfg), train_rows=ROWS, eval_rows=[], reward_fns=[(x_fraction, 1.0)])
    assert trainer.ref_model is not None
    metrics = trainer.train_step()
    assert metrics["kl"] >= 0.0
    if lora is not None:
        assert trainer.ref_context is not None  # the adapter-disabled base model is the reference
    else:
        ref_params = dict(trainer.ref_model.named_parameters())
        assert not any(p.requires_grad for p in ref_params.values())


def test_tensorboard_logs_the_step_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    make_trainer(tmp_path, max_steps=2, logging={"tensorboard": True}, eval={"at_start": False}).train()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert any("reward_mean" in tag for tag in tags), tags
    reward_tag = next(tag for tag in tags if tag.endswith("reward_mean"))
    assert [e.step for e in events.Scalars(reward_tag)] == [1, 2]


# ---------------------------------------------------------------- declared metrics


def objective_metric_names(name: str) -> set[str]:
    """The metric names objective `name` emits: run once with its defaults, and with β > 0 where it has β."""
    import dataclasses

    from ticgrpo.core.objectives import OBJECTIVES, make_objective_config

    spec = OBJECTIVES.spec(name)
    variants = [{}, {"beta": 0.1}] if "beta" in {f.name for f in dataclasses.fields(spec.options)} else [{}]
    gen = torch.Generator().manual_seed(0)
    logp = -torch.rand(4, 5, generator=gen) - 0.1
    names: set[str] = set()
    for options in variants:
        batch = PolicyBatch(logp.clone().requires_grad_(), torch.ones(4, 5), torch.randn(4, generator=gen),
                            old_logprobs=logp + 0.1 * torch.randn(4, 5, generator=gen), ref_logprobs=logp - 0.05,
                            token_ids=torch.randint(0, 9, (4, 5), generator=gen), group_ids=torch.tensor([0, 0, 1, 1]),
                            entropies=torch.rand(4, 5, generator=gen),
                            hidden_states=torch.randn(4, 5, 3, generator=gen) if spec.needs_hidden_states else None)
        _, values = compute_loss(name, batch, make_objective_config(name, options))
        names |= set(values)
    return names


def test_every_objectives_metrics_are_declared():
    from ticgrpo.core.objectives import OBJECTIVES
    from ticgrpo.train.metrics import is_declared

    undeclared = {name: sorted(m for m in objective_metric_names(name) if not is_declared(m))
                  for name in OBJECTIVES.names()}
    assert not any(undeclared.values()), undeclared


def test_every_trainer_metric_is_declared_and_reduced_as_declared(tmp_path):
    """Drafts, dynamic sampling and ESPO together: every key of the step and of the evaluation is declared."""
    from ticgrpo.eval.metrics import EVAL_METRICS as EVAL_REGISTRY
    from ticgrpo.train.metrics import EVAL_METRICS, Reduction, is_declared, metric_spec
    from ticgrpo.train.step import reduce_metrics

    trainer = make_trainer(tmp_path, max_steps=1, eval={"ks": [2], "metrics": list(EVAL_REGISTRY.names())},
                           algorithm={"dynamic_sampling": True, "igrpo": {"num_drafts": 2}, "espo_delta": 0.5,
                                      "num_iterations": 2, "num_minibatches": 2, "overlong_reward": True})
    metrics = trainer.train_step()
    for key in ("draft_reward_mean", "sampling_rounds", "groups_kept", "espo_stopped_at", "espo_deviation_max",
                "reward/overlong_soft_mean", "time_drafts", "entropy"):
        assert key in metrics, key
    assert [k for k in metrics if not is_declared(k)] == []
    evals = trainer.run_eval()
    assert {"avg@2", "mean_length"} <= set(evals) and [k for k in evals if not is_declared(k, EVAL_METRICS)] == []
    assert metric_spec("reward/x_fraction_std").name == "reward/{reward}_std"
    assert metric_spec("ratio_min").reduction is Reduction.MIN
    assert reduce_metrics({"ratio_min": [0.9, 0.8], "ratio_max": [1.1, 1.2], "kl": [1.0, 2.0]}) == {
        "ratio_min": 0.8, "ratio_max": 1.2, "kl": 1.5}
    # a name ticgrpo does not declare (a user's own objective's) is reduced by its suffix, never an error
    assert reduce_metrics({"made_up": [1.0, 2.0], "made_up_max": [1.0, 3.0]}) == {"made_up": 1.5, "made_up_max": 3.0}


def test_a_users_objective_may_log_metrics_ticgrpo_does_not_declare(tmp_path, monkeypatch):
    """The documented way to add an objective (docs/objectives.md) needs no edit of train/metrics.py."""
    from ticgrpo.core.objectives import OBJECTIVES, register_objective
    from ticgrpo.core.objectives.grpo import GRPOConfig, grpo_loss

    monkeypatch.setattr(OBJECTIVES, "_specs", dict(OBJECTIVES._specs))

    def my_loss(batch, config, norms):
        loss, metrics = grpo_loss(batch, config, norms)
        return loss, {**metrics, "my_stat": loss.detach(), "my_stat_max": loss.detach()}

    register_objective("my_objective", options=GRPOConfig, default_advantage="group_norm",
                       uses_old_logprobs=True)(my_loss)
    trainer = make_trainer(tmp_path, max_steps=1, algorithm={"objective": "my_objective"})
    metrics = trainer.train_step()
    assert "my_stat" in metrics and "my_stat_max" in metrics
