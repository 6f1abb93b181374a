"""Bad input never ends in a traceback: each case prints exactly one line to stderr naming the
problem and exits with code 2, through `ticgrpo.cli.main` and (marked rows) a real `ticgrpo`
subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ticgrpo.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
FILES = {
    "bad.yaml": "rollout: {num_generations: [4\n",
    "list.yaml": "- a\n- b\n",
    "empty.jsonl": "",
    "blank.jsonl": "\n\n",
    "garbled.jsonl": '{"prompt": "ok"}\n{"prompt": oops}\n',
    "array.jsonl": '["not", "an", "object"]\n',
    "nocolumn.jsonl": '{"question": "What is 1 + 1?"}\n',
    "nonstring.jsonl": '{"prompt": 42}\n',
    "emptyprompt.jsonl": '{"prompt": "   "}\n',
}

# (case id, command-line arguments after `ticgrpo`, fragment the one line must contain, via subprocess too)
CASES = [
    ("malformed_yaml", ["--config", "{d}/bad.yaml"], "not valid YAML", True),
    ("yaml_not_a_mapping", ["--config", "{d}/list.yaml"], "top level must be a mapping", False),
    ("missing_config", ["--config", "{d}/nope.yaml"], "nope.yaml' does not exist", False),
    ("unknown_key", ["--set", "rollout.num_generation=4"], "did you mean 'rollout.num_generations'", True),
    ("unknown_section", ["--set", "optimizer.lr=1"], "unknown key 'optimizer'", False),
    ("wrong_type_int", ["--set", "max_steps=many"], "max_steps must be an integer", False),
    ("wrong_type_float", ["--set", "optim.lr=fast"], "optim.lr must be a number", False),
    ("wrong_type_bool", ["--set", "data.shuffle=maybe"], "data.shuffle must be true or false", False),
    ("wrong_type_mapping", ["--set", "rollout=8"], "rollout must be a mapping", False),
    ("bad_override", ["--set", "max_steps"], "must look like key.path=value", False),
    ("empty_dataset", ["--set", "data.train={jsonl: {d}/empty.jsonl}"], "is empty", False),
    ("blank_dataset", ["--set", "data.train={jsonl: {d}/blank.jsonl}"], "is empty", False),
    ("malformed_jsonl", ["--set", "data.train={jsonl: {d}/garbled.jsonl}"], "garbled.jsonl:2: malformed JSON", False),
    ("jsonl_not_objects", ["--set", "data.train={jsonl: {d}/array.jsonl}"], "must be a JSON object", False),
    ("missing_prompt_column", ["--set", "data.train={jsonl: {d}/nocolumn.jsonl}"], "no prompt column 'prompt'", True),
    ("non_string_prompt", ["--set", "data.train={jsonl: {d}/nonstring.jsonl}"], "prompt must be a string", False),
    ("empty_prompt", ["--set", "data.train={jsonl: {d}/emptyprompt.jsonl}"], "prompt must be a string", False),
    ("missing_dataset_file", ["--set", "data.train={jsonl: {d}/none.jsonl}"], "none.jsonl' does not exist", False),
    ("two_dataset_sources", ["--set", "data.train={task: arithmetic, jsonl: x}"], "exactly one source", False),
    ("unknown_task", ["--set", "data.train={task: poetry}"], "unknown task 'poetry'", False),
    ("g_below_2", ["--set", "rollout.num_generations=1"], "rollout.num_generations (G) must be >= 2", True),
    ("batch_not_divisible", ["--set", "algorithm.num_minibatches=3"], "must divide prompts_per_step*num_generations",
     False),
    ("micro_batch_not_divisible", ["--set", "algorithm.micro_batch_size=3"], "micro_batch_size=3 must divide", False),
    ("zero_prompts", ["--set", "rollout.prompts_per_step=0"], "rollout.prompts_per_step must be >= 1", False),
    ("zero_length", ["--set", "rollout.max_new_tokens=0"], "rollout.max_new_tokens must be >= 1", False),
    ("negative_length", ["--set", "rollout.max_new_tokens=-8"], "rollout.max_new_tokens must be >= 1", False),
    ("negative_prompt_length", ["--set", "rollout.max_prompt_length=-1"], "max_prompt_length must be >= 1", False),
    ("zero_eval_length", ["--set", "eval.max_new_tokens=0"], "eval.max_new_tokens must be >= 1", False),
    ("negative_steps", ["--set", "max_steps=-1"], "max_steps must be >= 0", False),
    ("missing_model_path", ["--set", "model.name=/nonexistent/model-dir"], "'/nonexistent/model-dir' does not exist",
     True),
    ("unknown_objective", ["--set", "algorithm.objective=ppo2"], "algorithm.objective: unknown value 'ppo2'", False),
    ("unknown_reward", ["--set", "algorithm.rewards=[{name: bleu}]"], "unknown value 'bleu'", False),
    ("bad_reward_import", ["--set", "algorithm.rewards=[{name: 'no_such_mod:f'}]"], "cannot import reward module",
     False),
    ("bad_reward_error_mode", ["--set", "algorithm.on_reward_error=ignore"], "algorithm.on_reward_error", False),
    ("bad_nonfinite_limit", ["--set", "optim.max_consecutive_nonfinite=0"], "optim.max_consecutive_nonfinite", False),
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad_input")
    for name, text in FILES.items():
        (d / name).write_text(text)
    return d


def _argv(args: list[str], d: Path) -> list[str]:
    args = [a.replace("{d}", str(d)) for a in args]
    base = ["train"] if "--config" in args else ["train", "--config", TINY]
    return [*base, *args, "--output-dir", str(d / "out"), "--set", "logging.progress_bar=false",
            "--set", "eval.at_start=false"]


def _check(code: int, err: str, fragment: str) -> None:
    lines = err.strip("\n").splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("ticgrpo train: error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize(("case", "args", "fragment", "_sub"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_in_process(case, args, fragment, _sub, data_dir, capsys):
    code = main(_argv(args, data_dir))
    captured = capsys.readouterr()
    _check(code, captured.err, fragment)
    assert not (data_dir / "out" / "metrics.jsonl").exists()  # nothing was trained


SUBPROCESS = [c for c in CASES if c[3]]


@pytest.mark.parametrize(("case", "args", "fragment", "_sub"), SUBPROCESS, ids=[c[0] for c in SUBPROCESS])
def test_bad_input_real_command(case, args, fragment, _sub, data_dir):
    exe = Path(sys.executable).with_name("ticgrpo")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "ticgrpo.cli"]
    run = subprocess.run([*cmd, *_argv(args, data_dir)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    _check(run.returncode, run.stderr, fragment)


def test_cases_cover_the_issue():
    ids = {c[0] for c in CASES}
    for needed in ("malformed_yaml", "unknown_key", "wrong_type_float", "empty_dataset", "missing_prompt_column",
                   "non_string_prompt", "g_below_2", "batch_not_divisible", "zero_length", "missing_model_path"):
        assert needed in ids
    assert len(SUBPROCESS) >= 2
