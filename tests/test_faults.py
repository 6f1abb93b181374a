"""Fault isolation in the trainer: reward functions that fail (raise / wrong count / NaN) and
non-finite losses or gradients (NaN logits, overflowing rewards)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from ticgrpo.cli import main
from ticgrpo.config import load_config
from ticgrpo.testing import make_tiny_model, make_tiny_tokenizer
from ticgrpo.train import Trainer
from ticgrpo.train import checkpoint as ckpt
from ticgrpo.train.trainer import TrainingHalted

TOKENIZER = make_tiny_tokenizer()
ROWS = [{"prompt": f"What is {i} + {j}?", "answer": str(i + j), "poison": i == 3} for i in range(6) for j in range(6)]
G = 4
MIXED = [ROWS[12], ROWS[18]]  # a clean row, then a poisoned one (i == 3); data.shuffle is off


def sevens(prompts, completions, **kwargs):
    return [c.count("7") / max(len(c), 1) for c in completions]


def nan_reward(prompts, completions, **kwargs):
    return [math.nan if i == 5 else 0.0 for i in range(len(completions))]


def raising_reward(prompts, completions, poison, **kwargs):
    return [1.0 / (0 if p else 1) for p in poison]  # ZeroDivisionError on poisoned rows


def short_reward(prompts, completions, **kwargs):
    return [0.0] * (len(completions) - 1)


def huge_reward(prompts, completions, **kwargs):
    """Finite as a Python float, inf in float32: the advantages (and loss) become NaN."""
    return [1e300 * (i % 2) for i in range(len(completions))]


def trainer(tmp_path: Path, reward, *, model=None, rows=ROWS, **sections) -> Trainer:
    cfg: dict[str, Any] = {
        "output_dir": str(tmp_path / "run"), "max_steps": 2, "seed": 0,
        "model": {"name": "in-process", "chat_template": False},
        "data": {"shuffle": False},
        "rollout": {"prompts_per_step": 2, "num_generations": G, "max_new_tokens": 5},
        "optim": {"lr": 1e-2},
        "eval": {"at_start": False, "at_end": False, "every_steps": 0},
        "logging": {"progress_bar": False, "plot": False},
        "checkpoint": {"every_steps": 0, "save_final": False},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return Trainer(load_config(cfg), model=model or make_tiny_model(seed=0, tokenizer=TOKENIZER), tokenizer=TOKENIZER,
                   train_rows=rows, eval_rows=[], reward_fns=[(reward, 1.0)])


@pytest.mark.parametrize(("reward", "fragment"), [
    (nan_reward, "reward function 'nan_reward' returned nan at sample 5"),
    (raising_reward, "reward function 'raising_reward' raised ZeroDivisionError: float division by zero at sample 4"),
    (short_reward, "reward function 'short_reward' returned 7 values for 8 completions"),
])
def test_reward_errors_raise_naming_function_and_sample(tmp_path, reward, fragment):
    t = trainer(tmp_path, reward, rows=MIXED)  # samples 4..7 are the poisoned group
    with pytest.raises(ValueError) as info:
        t.train_step()
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_on_reward_error_zero_and_skip(tmp_path, caplog):
    rows = MIXED
    zero = trainer(tmp_path / "z", raising_reward, rows=rows, algorithm={"on_reward_error": "zero"})
    metrics = zero.train_step()
    assert metrics["reward_errors"] == G and metrics["num_sequences"] == 2 * G
    assert "reward error(s), zeroed those rewards" in caplog.text
    caplog.clear()
    skip = trainer(tmp_path / "s", raising_reward, rows=rows, algorithm={"on_reward_error": "skip"})
    metrics = skip.train_step()
    assert metrics["reward_errors"] == G and metrics["num_sequences"] == G  # the poisoned group dropped
    assert "dropped 1 group(s)" in caplog.text
    assert skip.train_step()["reward_errors"] == G  # training goes on


def nan_when_training(model, switch):
    """NaN logits in the training forward pass only (generation runs under no_grad)."""
    def hook(module, args, output):
        if switch["on"] and torch.is_grad_enabled():
            return output * float("nan")
        return output
    model.model.norm.register_forward_hook(hook)  # the final hidden states feed the logits
    return model


def test_nan_logits_skip_steps_then_stop_with_last_good_checkpoint(tmp_path, caplog):
    switch = {"on": False}
    model = nan_when_training(make_tiny_model(seed=0, tokenizer=TOKENIZER), switch)
    t = trainer(tmp_path, sevens, model=model, max_steps=6, checkpoint={"every_steps": 1},
                optim={"max_consecutive_nonfinite": 2})
    t.output_dir.mkdir(parents=True)
    first = t.train_step()  # a good step
    assert first["skipped_nonfinite"] == 0 and math.isfinite(first["loss"])
    t.save_checkpoint()
    good = {k: v.clone() for k, v in t.model.state_dict().items()}
    switch["on"] = True
    with pytest.raises(TrainingHalted) as info:
        t.train(resume=True)
    message = str(info.value)
    assert "2 consecutive steps had a non-finite loss or gradient" in message and "step-0002" in message
    err = caplog.text
    assert "non-finite loss or gradient, skipped 1 optimizer step(s)" in err
    assert "rewards:" in err and "advantages:" in err and "log-probs: non-finite" in err
    for name, value in t.model.state_dict().items():  # skipped steps never touched the weights
        assert torch.equal(value, good[name]), name
    assert [p.name for p in ckpt.list_checkpoints(t.output_dir)] == ["step-0001", "step-0002"]
    latest = ckpt.latest_checkpoint(t.output_dir)
    assert latest is not None
    ckpt.verify_checkpoint(latest)  # the last good checkpoint is intact
    assert t.history[-1]["skipped_nonfinite"] == 1 and t.step == 3


def test_overflowing_reward_skips_the_step_and_cli_exits_3(tmp_path, capsys):
    t = trainer(tmp_path, huge_reward)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    metrics = t.train_step()
    assert metrics["skipped_nonfinite"] == 1 and not math.isfinite(metrics["advantage_mean"])
    assert all(torch.equal(v, before[k]) for k, v in t.model.state_dict().items())
    capsys.readouterr()
    code = main(["train", "--config", str(Path(__file__).parents[1] / "configs" / "tiny.yaml"),
                 "--output-dir", str(tmp_path / "cli"),
                 "--set", "algorithm.rewards=[{name: 'test_faults:huge_reward'}]",
                 "--set", "logging.progress_bar=false", "--set", "logging.plot=false", "--set", "data.eval=null",
                 "--set", "eval.at_start=false", "--set", "eval.at_end=false", "--set", "rollout.max_new_tokens=4",
                 "--set", "optim.max_consecutive_nonfinite=2", "--set", "max_steps=5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3
    assert err[-1].startswith("ticgrpo train: error: stopped at step 2: 2 consecutive steps")
    assert not any("Traceback" in line for line in err)


def test_finite_weights_whose_sampling_probabilities_are_nan_halt_the_run(tmp_path):
    """Diverged but finite weights (the state lr 1e6 leaves): the logits overflow, torch.multinomial
    refuses the NaN probabilities; the run stops with one line instead of torch's traceback."""
    model = make_tiny_model(seed=0, tokenizer=TOKENIZER)
    with torch.no_grad():
        model.model.norm.weight.fill_(3e38)  # finite in float32 (max 3.4e38); the logits overflow
    assert not ckpt.nonfinite_weights(model)
    t = trainer(tmp_path, sevens, model=model)
    t.output_dir.mkdir(parents=True)
    with pytest.raises(TrainingHalted) as info:
        t.train_step()
    message = str(info.value)
    assert message.startswith("stopped at step 1: sampling met NaN/inf token probabilities") and "\n" not in message
    assert message.endswith("the last checkpoint with finite weights is none")
