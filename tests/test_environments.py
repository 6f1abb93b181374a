"""The built-in environments: `python_tool` (real sandbox; hostile tool calls are contained and
the run goes on) and `guess_number` (a game won only by reading the feedback)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ticgrpo.data.tasks import GUESS_NUMBER_HIGH, make_task_splits
from ticgrpo.eval.runner import Completion, EpisodeSummary, episode_summary
from ticgrpo.rollout.environments import ENVIRONMENTS, EnvironmentFactory, StepResult
from ticgrpo.rollout.environments.guess_number import GuessNumberEnvironment
from ticgrpo.rollout.environments.python_tool import PythonToolEnvironment, question_of, tool_calls
from ticgrpo.testing import make_tiny_model, make_tiny_tokenizer

ROOT = Path(__file__).parents[1]
FENCE = "```"


def code(text: str) -> str:
    return f"{FENCE}python\n{text}\n{FENCE}"


@pytest.fixture(scope="module")
def tool() -> PythonToolEnvironment:
    env = EnvironmentFactory("python_tool", {"timeout_s": 2, "memory_mb": 128, "max_output_chars": 200}).make()
    assert isinstance(env, PythonToolEnvironment)
    return env


# ----------------------------------------------------------------- python_tool: calls and outputs


def test_both_tool_call_forms_are_found_in_order():
    call = json.dumps({"name": "python", "arguments": {"code": "print(2)"}})
    message = (f"first {code('print(1)')} then <tool_call>{call}</tool_call> and {FENCE}py\nprint(3)\n{FENCE}"
               f" and a plain {FENCE}\nnot code\n{FENCE}")
    assert tool_calls(message) == ["print(1)\n", "print(2)", "print(3)\n"]
    # arguments given as a JSON string (as some templates write them), and an unclosed block at EOS
    as_string = json.dumps({"name": "python", "arguments": json.dumps({"code": "print(4)"})})
    assert tool_calls(f"<tool_call>{as_string}</tool_call>") == ["print(4)"]
    assert tool_calls(f"{FENCE}python\nprint(5)") == ["print(5)"]
    assert tool_calls("<tool_call>{not json</tool_call>") == [None]
    assert tool_calls("Answer: 7") == []


def test_a_call_runs_in_the_sandbox_and_its_output_is_the_tool_message(tool):
    result = tool.step(code("print(13 * 24 + 5)"))
    assert result == StepResult(observation=[{"role": "tool", "content": "317"}], tool_calls=1, tool_errors=0)
    silent = tool.step(code("x = 6 * 7"))
    assert silent.observation[0]["content"].startswith("(no output") and silent.tool_errors == 0
    assert tool.step("12 + 30 = 42\nAnswer: 42") == StepResult(done=True)  # no call: the final answer


def test_tool_errors_are_shown_to_the_agent_and_counted(tool):
    failing = tool.step(code("1 / 0"))
    assert failing.tool_calls == 1 and failing.tool_errors == 1 and not failing.done
    shown = failing.observation[0]["content"]
    assert shown.startswith("error:") and "ZeroDivisionError" in shown
    spoof = tool.step(code("print('error: not really')"))  # output that looks like an error is still output
    assert spoof.tool_errors == 0 and spoof.observation[0]["content"] == "error: not really"
    malformed = tool.step("<tool_call>{oops</tool_call>")
    assert malformed.tool_errors == 1 and "malformed tool call" in malformed.observation[0]["content"]
    long = tool.step(code("print('y' * 5000)"))
    content = long.observation[0]["content"]
    assert long.tool_errors == 0 and content.startswith("y" * 200) and content.endswith("(4800 more characters)")


def test_only_the_first_calls_of_a_turn_run():
    env = PythonToolEnvironment(timeout_s=2, max_calls_per_turn=2)
    result = env.step(code("print(1)") + code("print(2)") + code("print(3)"))
    assert [m["content"] for m in result.observation] == ["1", "2"] and result.tool_calls == 2


def test_the_first_observation_shows_the_examples_then_the_question():
    env = PythonToolEnvironment(timeout_s=2, tool_role="user")
    row = {"prompt": [{"role": "user", "content": "shot"}, {"role": "assistant", "content": "a"},
                      {"role": "user", "content": "What is 9 × 8?"}]}
    messages = env.reset(row)
    assert messages[0]["role"] == "system" and messages[-1] == {"role": "user", "content": "What is 9 × 8?"}
    assert "tool" not in {m["role"] for m in messages}  # tool_role "user" for templates without a tool role
    bare = PythonToolEnvironment(timeout_s=2, system_prompt="", example=False).reset({"prompt": "What is 2 + 2?"})
    assert bare == [{"role": "user", "content": "What is 2 + 2?"}]
    with pytest.raises(ValueError, match="the row has no question"):
        question_of({"prompt": [{"role": "system", "content": "x"}]})


@pytest.mark.parametrize("options, message", [
    ({"timeout_s": 0}, "timeout_s must be in"), ({"memory_mb": 8}, "memory_mb must be"),
    ({"max_calls_per_turn": 0}, "max_calls_per_turn"), ({"tool_role": "robot"}, "tool_role must be"),
    ({"sandbox_require": "chroot"}, "sandbox require must be one of"), ({"timeout": 3}, "unexpected keyword"),
])
def test_bad_python_tool_options_are_one_line(options, message):
    with pytest.raises(ValueError, match=message) as raised:
        EnvironmentFactory("python_tool", options)
    assert "\n" not in str(raised.value) and "python_tool" in str(raised.value)


# ------------------------------------------------------ python_tool: hostile calls are contained

HOSTILE = {
    "infinite_loop": ("while True:\n    pass", "timed out"),
    "memory_bomb": ("x = bytearray(10 ** 10)", "MemoryError"),
    "output_flood": ("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", "exceeded"),
    "fork_bomb": ("import os\nwhile True:\n    os.fork()", "error"),
    "disk_fill": ("with open('big', 'wb') as f:\n    f.write(b'0' * (200 << 20))", "error"),
    "deep_recursion": ("def f(n):\n    return f(n + 1)\nf(0)", "RecursionError"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_call_is_a_tool_error_and_the_episode_goes_on(tool, name):
    program, shown = HOSTILE[name]
    start = time.monotonic()
    result = tool.step(code(program))
    assert time.monotonic() - start < 30
    assert result.tool_calls == 1 and result.tool_errors == 1 and not result.done
    assert result.observation[0]["content"].startswith("error:") and shown in result.observation[0]["content"]
    assert tool.step(code("print(6 * 7)")).observation[0]["content"] == "42"  # the next call works


def test_a_call_cannot_signal_the_trainer_or_leave_processes(tool):
    result = tool.step(code("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.killpg(0, signal.SIGKILL)"))
    assert result.tool_calls == 1 and not result.done  # we are still here to read it
    spawned = tool.step(code("import subprocess\nsubprocess.Popen(['sleep', '3171'])\nprint('spawned')"))
    assert spawned.tool_calls == 1
    time.sleep(0.5)
    sleepers = subprocess.run(["pgrep", "-f", "sleep 3171"], capture_output=True, text=True).stdout.split()
    assert sleepers == [], f"a tool call left processes behind: {sleepers}"


def test_with_isolation_a_call_sees_no_host_file_and_no_network(tool, tmp_path):
    if tool.sandbox.isolation == "none":
        pytest.skip("isolation 'none' (no bwrap or unshare here): the host's files are visible by design")
    secret = tmp_path / "secret.txt"
    secret.write_text("the trainer's data")
    marker = Path("/tmp") / f"ticgrpo-hostile-{os.getpid()}"
    read = tool.step(code(f"print(open({str(secret)!r}).read())"))
    assert read.tool_errors == 1 and "the trainer's data" not in read.observation[0]["content"]
    tool.step(code(f"open({str(marker)!r}, 'w').write('x')"))
    assert not marker.exists()
    net = tool.step(code("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)"))
    assert net.tool_errors == 1


# ------------------------------------------------------------------------------- guess_number


def binary_search(env: GuessNumberEnvironment, low: int, high: int, max_turns: int) -> tuple[float, int]:
    reward, turns = 0.0, 0
    while turns < max_turns:
        guess = (low + high) // 2
        turns += 1
        result = env.step(f"My guess is {guess}.")
        reward += result.reward or 0.0
        if result.done:
            return reward, turns
        if result.observation[0]["content"] == "Higher.":
            low = guess + 1
        else:
            high = guess - 1
    return reward, turns


@pytest.mark.parametrize("secret", [1, 37, 64, 100])
def test_reading_the_feedback_wins_within_the_binary_search_depth(secret):
    env = EnvironmentFactory("guess_number", {"low": 1, "high": 100}).make()
    messages = env.reset({"prompt": "Guess my number from 1 to 100.", "answer": str(secret)})
    assert messages[-1] == {"role": "user", "content": "Guess my number from 1 to 100."}
    assert [m["content"] for m in messages if m["role"] == "assistant"] == ["4", "6", "5"]  # the worked game
    reward, turns = binary_search(env, 1, 100, max_turns=10)
    assert reward == 1.0 and turns <= math.ceil(math.log2(100))


def test_a_wrong_or_missing_guess_gets_feedback_and_no_reward():
    env = GuessNumberEnvironment()
    env.reset({"prompt": "x", "answer": "42", "low": 1, "high": 50})
    assert env.step("I think 10, no, 50").observation == [{"role": "user", "content": "Lower."}]
    assert env.step("30").observation == [{"role": "user", "content": "Higher."}]
    invalid = env.step("no idea")
    assert invalid.reward == 0.0 and "one integer from 1 to 50" in invalid.observation[0]["content"]
    assert env.step("42") == StepResult(reward=1.0, done=True)


def test_without_the_example_the_first_observation_is_the_row_prompt():
    env = GuessNumberEnvironment(example=False)
    assert env.reset({"prompt": "Guess!", "answer": "3"}) == [{"role": "user", "content": "Guess!"}]


def test_the_secret_is_stable_without_an_answer_and_checked_against_the_range():
    first, second = GuessNumberEnvironment(high=20), GuessNumberEnvironment(high=20)
    first.reset({"prompt": "a game"}), second.reset({"prompt": "a game"})
    assert first.secret == second.secret and 1 <= first.secret <= 20
    with pytest.raises(ValueError, match="outside"):
        GuessNumberEnvironment().reset({"prompt": "x", "answer": "500", "high": 100})
    with pytest.raises(ValueError, match="low < high"):
        EnvironmentFactory("guess_number", {"low": 5, "high": 5})


def test_the_guess_number_task_keeps_held_out_secrets_out_of_training():
    train, held_out = make_task_splits("guess_number", 3, num_train=300, num_eval=20)
    assert len({row["id"] for row in held_out}) == 20
    assert not {row["id"] for row in train} & {row["id"] for row in held_out}
    assert all(1 <= int(row["answer"]) <= GUESS_NUMBER_HIGH[3] == row["high"] for row in train)
    with pytest.raises(ValueError, match="too few"):
        make_task_splits("guess_number", 1, num_train=5, num_eval=11)


def test_both_built_ins_are_registered():
    assert {"python_tool", "guess_number", "single_turn"} <= set(ENVIRONMENTS.names())


# ------------------------------------------------------------------------- eval tool metrics


def test_eval_summarises_tool_use_of_episodes_only():
    def completion(calls: int, turns: int) -> Completion:
        return Completion("Answer: 1", "1", True, 3, False, 1.0, EpisodeSummary(turns, calls, calls // 2, "done"))

    summary = episode_summary([completion(0, 1), completion(2, 3), completion(1, 2), completion(0, 1)])
    assert summary == {"tool_call_rate": 0.5, "tool_calls_mean": 0.75, "tool_errors_mean": 0.25, "turns_mean": 1.75}
    assert episode_summary([Completion("Answer: 1", "1", True, 3, False)]) is None


# ------------------------------------------------------------- the trainer with hostile tool calls


class HostileTool(PythonToolEnvironment):
    """Whatever the agent writes, runs the next hostile program (the sandbox, not the model, is under test)."""

    def __init__(self) -> None:
        super().__init__(timeout_s=2, memory_mb=128)
        self.calls = 0

    def step(self, assistant_message: str) -> StepResult:
        program = list(HOSTILE.values())[self.calls % len(HOSTILE)][0]
        self.calls += 1
        return super().step(code(program)) if self.calls < 3 else StepResult(done=True)


@pytest.fixture(scope="module")
def eos_prone_model(tmp_path_factory) -> Path:
    """A saved tiny model whose turns end (its EOS row points along the mean hidden state), so
    that episodes reach the environment's step."""
    tok = make_tiny_tokenizer()
    model = make_tiny_model(tokenizer=tok, seed=1)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        ids = tok(["What is 12 + 30?", "What is 4 + 4?"], return_tensors="pt", padding=True)
        mean = model.model(**ids).last_hidden_state.flatten(0, 1).mean(0)
        model.lm_head.weight[eos] = 8 * mean / mean.norm() ** 2
    folder = tmp_path_factory.mktemp("eos-prone")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_training_goes_on_through_hostile_tool_calls(tmp_path, eos_prone_model):
    sets = [f"output_dir={tmp_path}/run", "max_steps=2", f"model.name={eos_prone_model}",
            "rollout.environment=tests/test_environments.py:HostileTool", "rollout.max_turns=3",
            "rollout.max_new_tokens=6", "eval.num_examples=4"]
    cmd = [sys.executable, "-m", "ticgrpo.cli", "train", "--config", "configs/tiny.yaml",
           *[x for s in sets for x in ("--set", s)]]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(m["episode/errors"] == 0 for m in metrics)
    assert sum(m["episode/tool_errors_mean"] for m in metrics) > 0  # hostile calls ran and were contained
    assert all(math.isfinite(m["loss"]) for m in metrics)
    assert (tmp_path / "run" / "final").is_dir()
    evals = [json.loads(line) for line in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
    assert all({"tool_call_rate", "tool_calls_mean", "tool_errors_mean", "turns_mean"} <= set(e) for e in evals)
    problem = json.loads((tmp_path / "run" / "evals" / "step-0000" / "samples.jsonl").read_text().splitlines()[0])
    episode = problem["greedy"]["episode"]
    assert episode["messages"][-1] == {"role": "assistant", "content": problem["greedy"]["text"]}
    assert episode["turns"] == sum(m["role"] == "assistant" for m in episode["messages"][-2 * episode["turns"]:])

    # `ticgrpo eval` on the run evaluates episodes of the run's environment, as the trainer did
    evaluated = subprocess.run([sys.executable, "-m", "ticgrpo.cli", "eval", "--model", str(tmp_path / "run"),
                                "--data", "arithmetic:level=2", "--num-examples", "4", "--max-new-tokens", "6",
                                "--out", str(tmp_path / "eval"), "--no-progress"],
                               capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["settings"]["episodes"] == {"environment": "tests/test_environments.py:HostileTool", "options": {},
                                              "max_turns": 3, "max_episode_tokens": None}
    assert set(report["episodes"]["greedy"]) == {"tool_call_rate", "tool_calls_mean", "tool_errors_mean", "turns_mean"}
    assert "episodes (greedy): tool-call rate" in evaluated.stdout


@pytest.mark.parametrize("flags, message", [
    (["--environment", "pyton_tool"], "did you mean 'python_tool'"),
    (["--environment", "{name: python_tool, timeout_s: -1}"], "timeout_s must be in"),
    (["--environment", "["], "is not YAML"),
    (["--max-turns", "2"], "pass --environment too"),
    (["--environment", "guess_number", "--max-turns", "0"], "--max-turns must be >= 1"),
])
def test_bad_eval_environment_flags_are_one_line_exit_2(flags, message, tmp_path):
    done = subprocess.run([sys.executable, "-m", "ticgrpo.cli", "eval", "--model", "tiny-test", "--data",
                           "arithmetic:level=2", "--num-examples", "2", "--out", str(tmp_path), *flags],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr[-1000:]
    assert done.stderr.strip().count("\n") == 0


def test_eval_with_an_environment_runs_episodes(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ticgrpo.cli", "eval", "--model", "tiny-test", "--data",
                           "guess_number:level=4", "--num-examples", "3", "--k", "2", "--max-new-tokens", "4",
                           "--environment", "guess_number", "--max-turns", "3", "--out", str(tmp_path),
                           "--no-progress"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["settings"]["episodes"]["environment"] == "guess_number"
    assert set(report["episodes"]) == {"greedy", "samples"}
    problem = json.loads((tmp_path / "samples.jsonl").read_text().splitlines()[0])
    opening = [m["content"] for m in problem["greedy"]["episode"]["messages"] if m["role"] == "user"]
    assert opening[0].startswith("I am thinking of an integer from 1 to 8.")  # the worked game
    assert opening[4].startswith("I am thinking of an integer from 1 to 100.")


# A template with a tool format (the shape of Qwen2.5's): tools listed in the system turn, tool
# results wrapped in <tool_response> inside a user turn.
TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools:\n<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>\n"
    "Call one as <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call><|im_end|>\n{% endif %}"
    "{% for m in messages %}{% if m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n"
    "</tool_response><|im_end|>\n{% elif not (tools and m.role == 'system') %}<|im_start|>{{ m.role }}\n"
    "{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class AlwaysCalls(PythonToolEnvironment):
    """Whatever the agent writes, makes one <tool_call> (the rendering, not the model, is under test)."""

    def step(self, assistant_message: str) -> StepResult:
        return super().step('<tool_call>{"name": "python", "arguments": {"code": "print(6 * 7)"}}</tool_call>')


def test_a_template_with_a_tool_format_gets_the_tool_schema_and_renders_tool_results(eos_prone_model):
    from ticgrpo.models import load_model_and_tokenizer
    from ticgrpo.rollout import HFGenerateEngine, SamplingParams
    from ticgrpo.rollout.episodes import EpisodeEngine, EpisodeLimits

    model, tok = load_model_and_tokenizer(str(eos_prone_model))
    tok.chat_template = TOOL_TEMPLATE

    factory = EnvironmentFactory("test_environments.py:AlwaysCalls", {"timeout_s": 2, "example": False},
                                 Path(__file__).parent)
    torch.manual_seed(0)
    engine = EpisodeEngine(HFGenerateEngine(model, tok), tok, factory, EpisodeLimits(max_turns=2))
    batch = engine.generate_for([{"prompt": "What is 6 × 7?"}], ["What is 6 × 7?"], 4,
                                SamplingParams(max_new_tokens=6, temperature=1.0))
    assert all('<tools>{"type": "function", "function": {"name": "python"' in p for p in batch.prompts)
    called = [e for e in batch.episodes if e.tool_calls]
    assert called, "no episode reached the environment's step"
    for episode, ids in ((e, batch.completion_ids[i]) for i, e in enumerate(batch.episodes) if e.tool_calls):
        assert episode.messages[-2] == {"role": "tool", "content": "42"}
        assert "<tool_response>\n42\n</tool_response>" in tok.decode(ids)
    without = PythonToolEnvironment(timeout_s=2, template_tools=False)
    assert without.tools is None


def test_a_run_records_only_the_sandboxes_it_used():
    """sandbox.json lists the sandboxes used since the run started, not every one this process made."""
    from ticgrpo.rewards.sandbox import default_sandbox, sandbox_summary, usage_mark

    earlier = default_sandbox(timeout_s=3.0)
    earlier.execute("print(1)")
    mark = usage_mark()
    assert sandbox_summary(mark) == []
    default_sandbox(timeout_s=4.0).execute("print(2)")
    assert [s["limits"]["timeout_s"] for s in sandbox_summary(mark)] == [4.0]
    assert {3.0, 4.0} <= {s["limits"]["timeout_s"] for s in sandbox_summary()}
