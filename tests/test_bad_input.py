"""Bad input never ends in a traceback: each case prints exactly one line to stderr naming the
problem and exits with code 2, through `ticgrpo.cli.main` and (marked rows) a real `ticgrpo`
subprocess and a `python -m ticgrpo.cli` one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
    "empty.yaml": "",
    "comments.yaml": "# every setting is left to its default\n",
    "duplicate.yaml": "max_steps: 2\nrollout:\n  num_generations: 4\n  num_generations: 8\n",
    "latin1.yaml": "model:\n  system_prompt: caf\xe9\n".encode("latin-1"),
    "latin1.jsonl": '{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n'.encode("latin-1"),
    "inf_lr.yaml": "model: {name: tiny-test, chat_template: false}\noptim: {lr: .inf}\n",
    # row 56 on line 57: the blank lines in between are skipped
    "line57.jsonl": "".join(f'{{"prompt": "q{i}"}}\n' for i in range(50)) + "\n" * 6 + '{"question": "q"}\n',
    "badtests.jsonl": json.dumps({"prompt": "Write add.", "tests": ["assert add(1, 2) == 3"]}) + "\n"
    + json.dumps({"prompt": "Write add.", "tests": ["add(1, 2) == 3"]}) + "\n",
    "badjsonmodel/config.json": '{"model_type": "llama",\n',
    "afile": "a regular file, not a folder\n",
    "folder.jsonl/keep": "",
    "folder.yaml/keep": "",
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
    ("infinite_lr", ["--set", "optim.lr=.inf"], "optim.lr must be a finite number, got inf", False),
    ("infinite_lr_in_yaml", ["--config", "{d}/inf_lr.yaml"], "optim.lr must be a finite number, got inf", True),
    ("nan_eps", ["--set", "optim.eps=.nan"], "optim.eps must be a finite number, got nan", False),
    ("cuda_without_gpu", ["--set", "device=cuda"], "device: cuda, but torch sees no CUDA GPU", True),
    ("model_config_not_json", ["--set", "model.name={d}/badjsonmodel"],
     "badjsonmodel/config.json is not valid JSON (line 2 column 1", True),
    ("model_folder_without_config", ["--set", "model.name={d}/folder.jsonl"], "has no config.json", False),
    ("hub_id_offline", ["--set", "model.name=no-such-org/no-such-model"],
     "cannot load model 'no-such-org/no-such-model'", True),
    ("output_dir_under_a_file", ["--output-dir", "{d}/afile/run"], "is inside '{d}/afile', which is a file", True),
    ("output_dir_is_a_file", ["--output-dir", "{d}/afile"], "output_dir '{d}/afile' is a file", False),
    ("lab_out_under_a_file", ["lab", "bias", "--out", "{d}/afile/bias"], "is inside '{d}/afile', which is a file",
     True),
    ("lab_usage_error", ["lab", "bias", "--vocab", "1"], "--vocab must be >= 2", True),
    ("lab_unknown_objective", ["lab", "bias", "--objectives", "nope"], "nope", True),
    ("empty_yaml", ["--config", "{d}/empty.yaml"], "empty.yaml: the config file is empty", True),
    ("comments_only_yaml", ["--config", "{d}/comments.yaml"], "comments.yaml: the config file is empty", False),
    ("duplicate_yaml_key", ["--config", "{d}/duplicate.yaml"],
     "duplicate.yaml:4: duplicate key 'num_generations' (first on line 3)", True),
    ("duplicate_key_in_override", ["--set", "rollout={top_k: 1, top_k: 2}"], "duplicate key 'top_k'", False),
    ("yaml_not_utf8", ["--config", "{d}/latin1.yaml"], "latin1.yaml:2: not UTF-8 text (byte 0xe9)", False),
    ("jsonl_not_utf8", ["--set", "data.train={jsonl: {d}/latin1.jsonl}"], "latin1.jsonl:2: not UTF-8 text (byte 0xe9",
     False),
    ("config_is_a_folder", ["--config", "{d}/folder.yaml"], "folder.yaml' is a folder; pass the YAML file", False),
    ("jsonl_is_a_folder", ["--set", "data.train={jsonl: {d}/folder.jsonl}"], "folder.jsonl' is a folder", False),
    ("missing_prompt_on_line_57", ["--set", "data.train={jsonl: {d}/line57.jsonl}"],
     "line57.jsonl:57: no 'prompt' column", False),
    ("bad_tests_column", ["--set", "data.train={jsonl: {d}/badtests.jsonl}"],
     "badtests.jsonl:2: column 'tests': test 'add(1, 2) == 3' must be a single assert statement", False),
]
NEEDS_NO_GPU = {"cuda_without_gpu"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad_input")
    for name, content in FILES.items():
        path = d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return d


@pytest.fixture
def offline(monkeypatch) -> None:
    """No network here: the hub's offline mode makes a hub id fail in seconds instead of a minute of retries."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _argv(args: list[str], d: Path) -> list[str]:
    args = [a.replace("{d}", str(d)) for a in args]
    if args[0] == "lab":
        return [*args, "--no-progress"]
    base = ["train"] if "--config" in args else ["train", "--config", TINY]
    out = [] if "--output-dir" in args else ["--output-dir", str(d / "out")]
    return [*base, *args, *out, "--set", "logging.progress_bar=false", "--set", "eval.at_start=false"]


def _check(code: int, err: str, fragment: str, command: str) -> None:
    lines = err.strip("\n").splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"ticgrpo {command}: error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in err


def _skip_where_not_reproducible(case: str) -> None:
    if case in NEEDS_NO_GPU and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")


@pytest.mark.parametrize(("case", "args", "fragment", "_sub"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_in_process(case, args, fragment, _sub, data_dir, offline, capsys):
    _skip_where_not_reproducible(case)
    argv = _argv(args, data_dir)
    code = main(argv)
    captured = capsys.readouterr()
    _check(code, captured.err, fragment.replace("{d}", str(data_dir)), argv[0])
    assert not (data_dir / "out" / "metrics.jsonl").exists()  # nothing was trained


SUBPROCESS = [c for c in CASES if c[3]]
ENTRY_POINTS = {
    "ticgrpo": [str(Path(sys.executable).with_name("ticgrpo"))],
    # a second copy of ticgrpo.cli runs as __main__: its errors must still be the ones caught
    "python_m": [sys.executable, "-m", "ticgrpo.cli"],
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize(("case", "args", "fragment", "_sub"), SUBPROCESS, ids=[c[0] for c in SUBPROCESS])
def test_bad_input_real_command(case, args, fragment, _sub, entry, data_dir):
    _skip_where_not_reproducible(case)
    cmd = ENTRY_POINTS[entry]
    if not Path(cmd[0]).is_file():
        pytest.skip(f"{cmd[0]} is not installed")
    argv = _argv(args, data_dir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([*cmd, *argv], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    _check(run.returncode, run.stderr, fragment.replace("{d}", str(data_dir)), argv[0])


def test_cases_cover_the_issue():
    ids = {c[0] for c in CASES}
    for needed in ("malformed_yaml", "unknown_key", "wrong_type_float", "empty_dataset", "missing_prompt_column",
                   "non_string_prompt", "g_below_2", "batch_not_divisible", "zero_length", "missing_model_path",
                   "infinite_lr", "cuda_without_gpu", "model_config_not_json", "hub_id_offline",
                   "output_dir_under_a_file", "lab_out_under_a_file", "lab_usage_error", "empty_yaml",
                   "duplicate_yaml_key", "yaml_not_utf8", "jsonl_not_utf8", "config_is_a_folder",
                   "jsonl_is_a_folder", "missing_prompt_on_line_57", "bad_tests_column"):
        assert needed in ids
    assert len(SUBPROCESS) >= 2
