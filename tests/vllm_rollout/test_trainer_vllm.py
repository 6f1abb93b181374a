"""`ticgrpo train` with `rollout.engine: vllm` (colocated, real vLLM on CPU): the trainer samples
with vLLM, logs the behaviour-log-prob mismatch, applies TIS (algorithm.offpolicy_correction),
and pushes its weights into the engine after every optimizer step."""

from __future__ import annotations

import json

import pytest
import torch

from ticgrpo.train import Trainer


def _config(tmp_path, model_dir, **algorithm):
    return {
        "output_dir": str(tmp_path / "run"),
        "seed": 0,
        "max_steps": 2,
        "device": "cpu",
        "model": {"name": str(model_dir), "chat_template": False},
        "data": {"train": {"task": "arithmetic", "level": 1, "split": "train", "num_train": 32, "num_eval": 4},
                 "eval": {"task": "arithmetic", "level": 1, "split": "eval", "num_eval": 4}},
        "rollout": {"engine": "vllm", "prompts_per_step": 2, "num_generations": 4, "max_new_tokens": 8,
                    "vllm": {"dtype": "float32", "max_model_len": 256}},
        "algorithm": {"objective": "grpo", "num_iterations": 2,
                      "rewards": [{"name": "answer_format", "weight": 1.0}], **algorithm},
        "optim": {"lr": 1e-2},
        "eval": {"every_steps": 0, "num_examples": 4, "batch_size": 4},
        "logging": {"progress_bar": False, "plot": False},
        "checkpoint": {"every_steps": 0, "save_final": False},
    }


def digit_count(prompts, completions, **kwargs):
    """A reward that differs within a group even for a random model: digits in the completion."""
    return [float(sum(ch.isdigit() for ch in c)) for c in completions]


def _model_dir(tmp_path, tok, factory):
    model_dir = tmp_path / "model"
    factory(tok, seed=1).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    return model_dir


def _check_mismatch(record):
    # fp32 on both sides: the engine's and the trainer's log-probs agree to rounding
    assert 0 <= record["mismatch/kl_k3"] < 1e-6 and record["mismatch/abs_diff_max"] < 1e-3
    assert record["offpolicy/weight_mean"] == pytest.approx(1.0, abs=1e-3)
    assert record["offpolicy/truncated_frac"] == 0 and record["offpolicy/masked_frac"] == 0
    assert record["offpolicy/ess"] == pytest.approx(1.0, abs=1e-3) and record["offpolicy/kl_k3"] < 1e-6
    assert record["num_sequences"] == 8 and torch.isfinite(torch.tensor(record["loss"]))


def test_train_command_path_with_token_tis(tmp_path, tiny_tok, tiny_factory):
    """The whole `train()` loop: logs, evaluation through the vLLM engine, engine closed at the end."""
    cfg = _config(tmp_path, _model_dir(tmp_path, tiny_tok, tiny_factory), offpolicy_correction="token_tis")
    result = Trainer(cfg, reward_fns=[(digit_count, 1.0)]).train()
    assert result.steps == 2
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        _check_mismatch(r)
    evals = [json.loads(line) for line in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 2] and all(e["num_examples"] == 4 for e in evals)


def test_engine_follows_the_trained_weights_with_sequence_tis(tmp_path, tiny_tok, tiny_factory):
    from ticgrpo.rollout import HFGenerateEngine, SamplingParams

    cfg = _config(tmp_path, _model_dir(tmp_path, tiny_tok, tiny_factory), offpolicy_correction="sequence_tis")
    trainer = Trainer(cfg, reward_fns=[(digit_count, 1.0)])
    try:
        start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        for _ in range(2):
            _check_mismatch(trainer.train_step())
        moved = max(float((trainer.model.state_dict()[k] - v).abs().max()) for k, v in start.items())
        assert moved > 1e-4
        # greedy vLLM on the pushed weights == greedy HF on the trained model
        prompts = ["1+2=", "3+4=", "5+1=", "2+2="]
        greedy = SamplingParams(max_new_tokens=6, greedy=True)
        hf = HFGenerateEngine(trainer.model, tiny_tok).generate(prompts, 1, greedy)
        assert trainer.engine.generate(prompts, 1, greedy).completions == hf.completions
    finally:
        trainer.engine.close()


class TwoTurns:
    """A scripted environment: one tool reply, then done (tests of multi-turn episodes on vLLM)."""

    def __init__(self) -> None:
        self.turns = 0

    def reset(self, row):
        prompt = row["prompt"]  # the arithmetic task's prompt: chat messages
        return list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]

    def step(self, assistant_message):
        from ticgrpo.rollout.environments import StepResult

        self.turns += 1
        if self.turns == 2:
            return StepResult(done=True)
        return StepResult(observation=[{"role": "tool", "content": "the tool says 7"}], tool_calls=1)


def test_multi_turn_episodes_on_vllm_carry_behaviour_logprobs_of_agent_tokens_only(tmp_path, tiny_tok,
                                                                                   tiny_factory):
    """vLLM continues each episode's token ids turn by turn; its log-probs, recorded on the agent's
    tokens, match the trainer's there (fp32), so the mismatch metrics see agent tokens only."""
    from pathlib import Path

    model = tiny_factory(tiny_tok, seed=1)
    eos = tiny_tok.eos_token_id
    with torch.no_grad():  # point EOS's output row along the hidden states, so that turns end
        ids = tiny_tok(["1 + 2 = ?", "hello"], return_tensors="pt", padding=True)
        mean = model.model(**ids).last_hidden_state.flatten(0, 1).mean(0)
        model.lm_head.weight[eos] = 8 * mean / mean.norm() ** 2
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tiny_tok.save_pretrained(model_dir)
    cfg = _config(tmp_path, model_dir, offpolicy_correction="token_tis")
    cfg["rollout"].update(environment=f"{__name__}:TwoTurns", max_turns=2, max_new_tokens=24)
    trainer = Trainer(cfg, reward_fns=[(digit_count, 1.0)], config_dir=Path(__file__).parent)
    try:
        records = [trainer.train_step() for _ in range(2)]
    finally:
        trainer.engine.close()
    for r in records:
        _check_mismatch(r)
        assert r["completion_length_mean"] == pytest.approx(r["episode/agent_tokens_mean"])
    assert max(r["episode/environment_tokens_mean"] for r in records) > 0  # some episodes had two turns
