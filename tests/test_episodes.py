"""Multi-turn episodes (ticgrpo.rollout.episodes) with a real tiny model and HF generation:
the agent-token mask, the log-probs the objectives read, environment failures, the trainer."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ticgrpo.core.logprobs import completion_logprobs
from ticgrpo.rewards.scoring import Scorer
from ticgrpo.rollout import HFGenerateEngine, SamplingParams
from ticgrpo.rollout.base import RolloutBatch
from ticgrpo.rollout.environments import Environment, EnvironmentFactory, StepResult
from ticgrpo.rollout.episodes import EpisodeEngine, EpisodeLimits
from ticgrpo.testing import make_tiny_model, make_tiny_tokenizer

ROWS = [{"prompt": "What is 2 + 3?", "answer": "5"}, {"prompt": "What is 4 + 4?", "answer": "8"}]
PARAMS = SamplingParams(max_new_tokens=6, temperature=1.0)


class Scripted(Environment):
    """Two tool observations, then done with reward 1 (the number of turns is set by `turns`)."""

    def __init__(self, turns: int = 3) -> None:
        self.turns, self.seen = turns, 0

    def reset(self, row: dict) -> list[dict]:
        return [{"role": "user", "content": row["prompt"]}]

    def step(self, assistant_message: str) -> StepResult:
        self.seen += 1
        if self.seen >= self.turns:
            return StepResult(reward=1.0, done=True)
        return StepResult(observation=[{"role": "tool", "content": f"result {self.seen}"}], tool_calls=1)


class Raises(Scripted):
    def step(self, assistant_message: str) -> StepResult:
        raise RuntimeError("the tool server is down")


class Malformed(Scripted):
    def step(self, assistant_message: str) -> StepResult:
        return StepResult(observation=[{"role": "tool"}])  # type: ignore[list-item]  (no content: malformed)


class NeverEnds(Scripted):
    def step(self, assistant_message: str) -> StepResult:
        return StepResult(observation=[{"role": "user", "content": "go on"}])


class Recording(HFGenerateEngine):
    """The real HF engine, keeping each context it continued and what it sampled."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sampled: dict[tuple[int, ...], list[list[int]]] = {}

    def continue_tokens(self, contexts, params):
        out = super().continue_tokens(contexts, params)
        for context, continuation in zip(contexts, out, strict=True):
            self.sampled.setdefault(tuple(context), []).append(continuation.token_ids)
        return out


@pytest.fixture(scope="module")
def tiny():
    """A tiny model whose turns end: its EOS output row points along the mean last hidden state,
    so that about one token in four is EOS (a random tiny model almost never ends a turn)."""
    tok = make_tiny_tokenizer()
    model = make_tiny_model(tokenizer=tok, seed=1).double()
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        ids = tok([r["prompt"] for r in ROWS], return_tensors="pt", padding=True)
        mean = model.model(**ids).last_hidden_state.flatten(0, 1).mean(0)
        model.lm_head.weight[eos] = 3 * mean / mean.norm() ** 2
    return model, tok


def factory(cls: type, **options) -> EnvironmentFactory:
    return EnvironmentFactory(f"{__name__}:{cls.__name__}", options, Path(__file__).parent)


FOUR_TURNS = EpisodeLimits(max_turns=4)


def episodes(tiny, env: EnvironmentFactory, engine=None, g: int = 3, limits: EpisodeLimits = FOUR_TURNS,
             seed: int = 0) -> tuple[EpisodeEngine, RolloutBatch]:
    model, tok = tiny
    runner = EpisodeEngine(engine or HFGenerateEngine(model, tok), tok, env, limits)
    torch.manual_seed(seed)
    return runner, runner.generate_for(ROWS, [r["prompt"] for r in ROWS], g, PARAMS)


def test_the_agent_token_mask_is_exactly_the_sampled_tokens(tiny):
    model, tok = tiny
    engine = Recording(model, tok)
    _, batch = episodes(tiny, factory(Scripted), engine=engine)
    for row in range(len(batch)):
        prompt = batch.prompt_ids[row][batch.prompt_mask[row].bool()].tolist()
        ids, agent = batch.completion_ids[row].tolist(), batch.completion_mask[row].tolist()
        runs = [i for i in range(len(ids)) if agent[i] and (i == 0 or not agent[i - 1])]
        assert len(runs) == batch.episodes[row].turns
        for start in runs:  # each run of agent tokens is what the engine sampled from the context before it
            end = next((i for i in range(start, len(ids)) if not agent[i]), len(ids))
            assert ids[start:end] in engine.sampled[tuple(prompt + ids[:start])]
        real = batch.completion_attention_mask[row]
        assert int(batch.completion_lengths[row]) == batch.episodes[row].agent_tokens
        assert int(real.sum()) - batch.episodes[row].agent_tokens == batch.episodes[row].environment_tokens
        assert bool((batch.completion_mask[row] <= real).all())
    assert any(e.environment_tokens > 0 for e in batch.episodes)  # multi-turn for real


def test_environment_text_follows_the_chat_template_token_for_token(tiny):
    _, tok = tiny
    _, batch = episodes(tiny, factory(Scripted))
    row = next(r for r, e in enumerate(batch.episodes) if e.environment_tokens > 0)
    env = ~batch.completion_mask[row].bool() & batch.completion_attention_mask[row].bool()
    first_segment = []
    for i, is_env in enumerate(env.tolist()):
        if is_env:
            first_segment.append(int(batch.completion_ids[row, i]))
        elif first_segment:
            break
    text = tok.decode(first_segment, skip_special_tokens=False)
    assert "result 1" in text and text.endswith("<|im_start|>assistant\n")
    assert batch.episodes[row].messages[2] == {"role": "tool", "content": "result 1"}


def test_two_turns_and_the_same_tokens_as_one_completion_give_the_same_agent_logprobs(tiny):
    model, _ = tiny
    _, batch = episodes(tiny, factory(Scripted))
    as_one = RolloutBatch(batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_attention_mask,
                          batch.truncated, batch.group_ids)
    with torch.no_grad():
        episode, _ = completion_logprobs(model, batch.input_ids, batch.attention_mask, batch.completion_ids,
                                      batch.completion_mask)
        single, _ = completion_logprobs(model, as_one.input_ids, as_one.attention_mask, as_one.completion_ids,
                                     as_one.completion_mask)
    agent = batch.completion_mask.bool()
    assert torch.equal(episode[agent], single[agent])
    assert bool((episode[~agent] == 0).all())  # the environment's positions are never scored


def test_tic_grpo_trajectory_log_ratio_is_the_sum_over_agent_tokens_of_every_turn(tiny):
    """The trainer's tic_grpo on an episode batch, against a naive loop over turns and tokens."""
    from ticgrpo.core.batch import PolicyBatch
    from ticgrpo.core.objectives import compute_loss, make_objective_config

    model, _ = tiny
    _, batch = episodes(tiny, factory(Scripted))
    old_model = make_tiny_model(tokenizer=tiny[1], seed=2).double()
    with torch.no_grad():
        old, _ = completion_logprobs(old_model, batch.input_ids, batch.attention_mask, batch.completion_ids,
                                  batch.completion_mask)
    new, _ = completion_logprobs(model, batch.input_ids, batch.attention_mask, batch.completion_ids,
                              batch.completion_mask)
    naive = []
    for row, episode in enumerate(batch.episodes):
        total = 0.0
        for i, is_agent in enumerate(batch.completion_mask[row].tolist()):  # every turn, agent tokens only
            if is_agent:
                total += float(new[row, i].detach()) - float(old[row, i])
        naive.append(total)
        assert episode.turns >= 1
    advantages = torch.linspace(-1, 1, len(batch), dtype=torch.float64)
    options = make_objective_config("tic_grpo", {"epsilon_high": 1e9, "max_log_ratio": 1e9})
    pb = PolicyBatch(new, batch.completion_mask, advantages, old_logprobs=old)
    _, metrics = compute_loss("tic_grpo", pb, options, None)
    expected = torch.tensor(naive, dtype=torch.float64)
    # the metrics are float32; the per-row sums behind them are float64
    torch.testing.assert_close(metrics["log_w_mean"].double(), expected.mean(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(metrics["log_w_max"].double(), expected.max(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(metrics["log_w_min"].double(), expected.min(), rtol=1e-6, atol=1e-6)


def test_single_turn_episodes_are_the_single_turn_rollout(tiny):
    model, tok = tiny
    engine = HFGenerateEngine(model, tok)
    prompts = [tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False,
                                       add_generation_prompt=True) for r in ROWS]
    torch.manual_seed(3)
    plain = engine.generate(prompts, 4, PARAMS)
    _, batch = episodes(tiny, EnvironmentFactory("single_turn"), engine=engine, g=4, seed=3)
    for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "truncated", "group_ids"):
        assert torch.equal(getattr(batch, name), getattr(plain, name)), name
    assert torch.equal(batch.attention_mask, plain.attention_mask)
    assert batch.completions == plain.completions and batch.prompts == plain.prompts


@pytest.mark.parametrize("cls, message", [(Raises, "the tool server is down"), (Malformed, "malformed message")])
def test_a_failing_environment_ends_its_episode_scored_zero_and_the_batch_goes_on(tiny, caplog, cls, message):
    with caplog.at_level(logging.WARNING, logger="ticgrpo.rollout.episodes"):
        _, batch = episodes(tiny, factory(cls))
    stepped = [e for e in batch.episodes if e.end != "turn_truncated"]  # the others never reached step
    assert stepped and all(e.end == "error" and message in (e.error or "") for e in stepped)
    assert all(e.turns == 1 for e in batch.episodes)
    assert any(cls.__name__ in r.getMessage() and "episode " in r.getMessage() for r in caplog.records)
    scorer = Scorer([(lambda completions, **_: [1.0] * len(completions), 1.0)], max_new_tokens=6, on_error="zero")
    scored = scorer.score(batch, ROWS, 3)
    failed = [e.error is not None for e in batch.episodes]
    assert scored.batch.rewards.tolist() == [0.0 if f else 1.0 for f in failed]
    assert [e.sample for e in scored.errors] == [i for i, f in enumerate(failed) if f]
    skipped = Scorer(scorer.rewards, max_new_tokens=6, on_error="skip").score(batch, ROWS, 3)
    clean = [k for k in range(len(ROWS)) if not any(failed[k * 3 : k * 3 + 3])]
    assert len(skipped.batch.rows) == (len(clean) or len(ROWS))  # groups holding a failure are dropped


def test_an_environment_that_never_ends_stops_at_max_turns_and_the_token_budget(tiny):
    _, batch = episodes(tiny, factory(NeverEnds), limits=EpisodeLimits(max_turns=3))
    assert {e.end for e in batch.episodes} <= {"max_turns", "turn_truncated"}
    assert all(e.turns <= 3 for e in batch.episodes) and bool(batch.truncated.all())
    _, small = episodes(tiny, factory(NeverEnds), limits=EpisodeLimits(max_turns=50, max_episode_tokens=20))
    assert all(int(small.completion_attention_mask[r].sum()) <= 20 for r in range(len(small)))
    assert {e.end for e in small.episodes} <= {"token_budget", "turn_truncated"}


def test_the_environment_reward_reaches_the_rewards(tiny):
    from ticgrpo.rewards import resolve_reward

    _, batch = episodes(tiny, factory(Scripted, turns=2))
    scored = Scorer([(resolve_reward("environment_reward"), 1.0)], max_new_tokens=6).score(batch, ROWS, 3)
    expected = [1.0 if e.end == "done" else 0.0 for e in batch.episodes]
    assert scored.batch.rewards.tolist() == expected


def test_a_bad_environment_name_or_option_is_one_line():
    with pytest.raises(ValueError, match="unknown environment 'single_trun'"):
        EnvironmentFactory("single_trun")
    with pytest.raises(ValueError, match=r"rollout\.environment 'single_turn'"):
        EnvironmentFactory("single_turn", {"nope": 1})
    with pytest.raises(ValueError, match="environment module 'no_such_module_here'"):
        EnvironmentFactory("no_such_module_here:Env")


def _train(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    sets = [f"output_dir={tmp_path}/run", "max_steps=2", *overrides]
    cmd = [sys.executable, "-m", "ticgrpo.cli", "train", "--config", "configs/tiny.yaml",
           *[x for o in sets for x in ("--set", o)]]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=600)


def test_training_with_a_tool_environment_logs_episodes_and_tool_metrics(tmp_path):
    done = _train(tmp_path, "rollout.environment=tests/test_episodes.py:Scripted", "rollout.max_turns=3",
                  "rollout.max_new_tokens=6", "logging.samples_per_step=4")
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2
    for key in ("episode/turns_mean", "episode/tool_calls_mean", "episode/tool_call_rate",
                "episode/agent_tokens_mean", "episode/environment_tokens_mean", "episode/end_done_frac"):
        assert key in metrics[0], key
    assert metrics[0]["completion_length_mean"] == pytest.approx(metrics[0]["episode/agent_tokens_mean"])
    sample = json.loads((tmp_path / "run" / "samples.jsonl").read_text().splitlines()[0])
    episode = sample["episode"]
    assert episode["messages"][0]["role"] in ("system", "user") and episode["messages"][-1]["role"] == "assistant"
    assert sample["completion"] == episode["messages"][-1]["content"]


def test_single_turn_environment_training_equals_plain_training(tmp_path):
    plain = _train(tmp_path / "a")
    episodic = _train(tmp_path / "b", "rollout.environment=single_turn")
    assert plain.returncode == 0 and episodic.returncode == 0, episodic.stderr[-2000:]
    a = [json.loads(x) for x in (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    for x, y in zip(a, b, strict=True):
        shared = [k for k in x if not k.startswith(("time_", "episode/")) and not k.endswith("_per_s")]
        assert {k: x[k] for k in shared} == {k: y[k] for k in shared}


def test_bad_environment_config_is_one_line_exit_2(tmp_path):
    for override, message in (("rollout.environment=single_trun", "unknown value 'single_trun'"),
                              ("rollout.mode=async", "rollout.environment runs episodes")):
        done = _train(tmp_path, "rollout.environment=single_turn" if "async" in override else override, override)
        assert done.returncode == 2, done.stderr[-2000:]
        assert message in done.stderr and "Traceback" not in done.stderr


def test_lagged_episodes_are_sampled_by_the_lagged_weights(tmp_path):
    done = _train(tmp_path, "rollout.environment=tests/test_episodes.py:Scripted", "rollout.max_turns=3",
                  "rollout.max_new_tokens=6", "rollout.lag=1", "max_steps=3")
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["staleness_mean"] for m in metrics] == [0.0, 1.0, 1.0]  # step 1: the initial weights, version 0
    assert all("episode/turns_mean" in m for m in metrics)


def test_a_resumed_lagged_episode_run_logs_what_an_uninterrupted_one_does(tmp_path):
    """The queued batch of episodes (their records too) travels in the checkpoint."""
    episodic = ["rollout.environment=tests/test_episodes.py:Scripted", "rollout.max_turns=3",
                "rollout.max_new_tokens=6", "rollout.lag=2", "checkpoint.every_steps=1", "logging.samples_per_step=2"]
    whole = _train(tmp_path / "whole", *episodic, "max_steps=4")
    first = _train(tmp_path / "parts", *episodic, "max_steps=2")
    assert whole.returncode == 0 and first.returncode == 0, (whole.stderr + first.stderr)[-2000:]
    cmd = [sys.executable, "-m", "ticgrpo.cli", "train", "--config", "configs/tiny.yaml", "--resume",
           *[x for o in [f"output_dir={tmp_path}/parts/run", *episodic, "max_steps=4"] for x in ("--set", o)]]
    rest = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=600)
    assert rest.returncode == 0, rest.stderr[-2000:]

    def logs(folder: Path, name: str) -> list[dict]:
        records = [json.loads(line) for line in (folder / "run" / name).read_text().splitlines()]
        return [{k: v for k, v in r.items() if not k.startswith("time_") and not k.endswith("_per_s")}
                for r in records]

    assert logs(tmp_path / "parts", "metrics.jsonl") == logs(tmp_path / "whole", "metrics.jsonl")
    assert logs(tmp_path / "parts", "samples.jsonl") == logs(tmp_path / "whole", "samples.jsonl")


def test_curves_get_an_episode_panel_only_for_episode_runs(tmp_path):
    from matplotlib.image import imread

    from ticgrpo.reports.plots import plot_curves

    def width(records: list[dict], name: str) -> int:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (folder / "eval.jsonl").write_text(json.dumps({"step": 0, "accuracy": 0.1, "tool_call_rate": 0.5}) + "\n")
        return imread(plot_curves(folder)).shape[1]

    base = [{"step": t + 1, "reward_mean": 0.1 * t, "reward_std": 0.05, "staleness_max": 0.0} for t in range(4)]
    episodic = [{**r, "episode/turns_mean": 2.0, "episode/tool_call_rate": 0.5, "episode/tool_errors_mean": 0.1}
                for r in base]
    lagged_episodic = [{**r, "staleness_max": 1.0} for r in episodic]
    assert (width(base, "plain"), width(episodic, "episodes"), width(lagged_episodic, "both")) == (1100, 1650, 2200)
