"""Reward functions: correctness on many completion styles, format, overlong shaping, combining."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from ticgrpo.rewards import (
    REWARDS,
    answer_format,
    combine_rewards,
    extract_final_answer,
    math_correctness,
    overlong_soft,
    resolve_reward,
)

CASES = [
    # (completion, gold, expected reward)
    ("12 + 30 = 42\nAnswer: 42", "42", 1.0),
    ("12 + 30 = 42\n**Answer:** 42", "42", 1.0),
    ("Answer: 42 apples.", "42", 1.0),
    ("Answer: $42$", "42", 1.0),
    ("Answer: \\boxed{42}", "42", 1.0),
    ("so the result is \\boxed{42}.", "42", 1.0),
    ("The answer is 42.", "42", 1.0),
    ("The answer is: 42", "42", 1.0),
    ("40 + 2 = 42", "42", 1.0),
    ("Answer: 1,234", "1234", 1.0),
    ("Answer: 42.0", "42", 1.0),
    ("Answer: -7", "-7", 1.0),
    ("5 - 12 = -7", "-7", 1.0),
    ("Answer: 0.5", "\\frac{1}{2}", 1.0),
    ("Answer: \\frac{1}{2}", "0.5", 1.0),
    ("\\boxed{\\frac{2}{4}}", "1/2", 1.0),
    # wrong or missing answers
    ("12 + 30 = 42\nAnswer: 41", "42", 0.0),
    ("Answer: 41 (not 42)", "42", 0.0),
    ("42 is close, but the answer is 43", "42", 0.0),
    ("I do not know.", "42", 0.0),
    ("", "42", 0.0),
    ("Answer:", "42", 0.0),
    ("Answer: forty-two", "42", 0.0),
    ("Answer: 4.2", "42", 0.0),
    ("\\boxed{\\frac{1}{3}}", "1/2", 0.0),
]


@pytest.mark.parametrize(("completion", "gold", "expected"), CASES)
def test_math_correctness_styles(completion: str, gold: str, expected: float) -> None:
    assert math_correctness(["q"], [completion], answer=[gold]) == [expected]


def test_math_correctness_batch_and_extra_columns_ignored() -> None:
    comps = ["Answer: 3", "Answer: 5", "no idea"]
    out = math_correctness(
        ["p"] * 3, comps, answer=["3", "4", "1"], completion_lengths=[1, 2, 3], truncated=[False] * 3
    )
    assert out == [1.0, 0.0, 0.0]


def test_extract_final_answer_prefers_answer_line_then_boxed_then_last_number() -> None:
    assert extract_final_answer("\\boxed{3} then Answer: 5") == "5"
    assert extract_final_answer("7 and \\boxed{3} and 9") == "3"
    assert extract_final_answer("7 and 9") == "9"
    assert extract_final_answer("nothing") is None


def test_math_correctness_is_fast_on_integers() -> None:
    comps = [f"{i} + 1 = {i + 1}\nAnswer: {i + 1}" for i in range(2000)]
    start = time.perf_counter()
    out = math_correctness(["p"] * 2000, comps, answer=[str(i + 1) for i in range(2000)])
    assert sum(out) == 2000
    assert time.perf_counter() - start < 1.0


def test_math_correctness_needs_answer_column() -> None:
    with pytest.raises(ValueError, match="'answer' column"):
        math_correctness(["p"], ["Answer: 1"])
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        math_correctness(["p", "p"], ["1", "2"], answer=["1"])


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("3 + 4 = 7\nAnswer: 7", 1.0),
        ("**Answer:** 7", 1.0),
        ("Answer: 7 apples.", 1.0),
        ("Answer: -7", 1.0),
        ("Answer: 7\nAnswer: 7", 0.0),
        ("The answer is 7", 0.0),
        ("Answer: seven", 0.0),
        ("\\boxed{7}", 0.0),
        ("", 0.0),
    ],
)
def test_answer_format(completion: str, expected: float) -> None:
    assert answer_format(["p"], [completion]) == [expected]


def test_overlong_soft_boundaries() -> None:
    # L = 64, C = 16: free up to 48 tokens, then linear down to -1 at 64, -1 beyond.
    lengths = [0, 48, 49, 56, 63, 64, 65, 1000]
    out = overlong_soft(["p"] * 8, ["c"] * 8, completion_lengths=lengths, max_new_tokens=64, overlong_cache=16)
    assert out == pytest.approx([0.0, 0.0, -1 / 16, -0.5, -15 / 16, -1.0, -1.0, -1.0])


def test_overlong_soft_default_cache_is_quarter() -> None:
    out = overlong_soft(["p"] * 3, ["c"] * 3, completion_lengths=[75, 76, 88], max_new_tokens=100)
    assert out == pytest.approx([0.0, -1 / 25, -13 / 25])


def test_overlong_soft_errors() -> None:
    with pytest.raises(ValueError, match="completion_lengths and max_new_tokens"):
        overlong_soft(["p"], ["c"])
    with pytest.raises(ValueError, match="overlong_cache"):
        overlong_soft(["p"], ["c"], completion_lengths=[1], max_new_tokens=10, overlong_cache=0)
    with pytest.raises(ValueError, match="1 completions but 2"):
        overlong_soft(["p"], ["c"], completion_lengths=[1, 2], max_new_tokens=10)


def test_registry_has_builtins() -> None:
    assert {"math_correctness", "answer_format", "overlong_soft"} <= set(REWARDS.names())


def test_resolve_reward_names_paths_and_callables() -> None:
    assert resolve_reward("answer_format") is answer_format
    assert resolve_reward("ticgrpo.rewards.shaping:overlong_soft") is overlong_soft
    assert resolve_reward(sorted) is sorted
    with pytest.raises(KeyError, match="unknown reward 'nope'; choose one of: answer_format"):
        resolve_reward("nope")
    with pytest.raises(ValueError, match="cannot import reward module 'no_such_mod'"):
        resolve_reward("no_such_mod:fn")
    with pytest.raises(ValueError, match="has no attribute 'missing'"):
        resolve_reward("ticgrpo.rewards:missing")


def test_combine_rewards_weights_and_per_function() -> None:
    prompts = ["p"] * 3
    comps = ["Answer: 3", "3 and 4 are", "Answer: 9"]
    total, per = combine_rewards(
        [("math_correctness", 1.0), ("answer_format", 0.5)], prompts, comps, {"answer": ["3", "4", "8"]}
    )
    assert per == {"math_correctness": [1.0, 1.0, 0.0], "answer_format": [1.0, 0.0, 1.0]}
    assert total == pytest.approx([1.5, 1.0, 0.5])


def test_combine_rewards_none_counts_as_zero_and_callables_named() -> None:
    def partial(prompts, completions, **kwargs):
        return [None, 2.0]

    total, per = combine_rewards([(partial, 3.0)], ["a", "b"], ["x", "y"])
    assert total == [0.0, 6.0]
    assert per == {"partial": [0.0, 2.0]}


def _raises(prompts, completions, **kwargs):
    raise RuntimeError("boom")


def _short(prompts, completions, **kwargs):
    return [1.0]


def _nan(prompts, completions, **kwargs):
    return [math.nan] * len(completions)


def _text(prompts, completions, **kwargs):
    return ["good"] * len(completions)


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (_raises, "reward function '_raises' raised RuntimeError: boom"),
        (_short, "reward function '_short' returned 1 values for 2 completions"),
        (_nan, "reward function '_nan' returned nan at index 0"),
        (_text, "reward function '_text' returned a non-number 'good' at index 0"),
    ],
)
def test_combine_rewards_errors_name_the_function(fn, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        combine_rewards([("answer_format", 1.0), (fn, 1.0)], ["a", "b"], ["x", "y"])


def test_combine_rewards_bad_specs() -> None:
    with pytest.raises(ValueError, match="no reward functions"):
        combine_rewards([], ["a"], ["x"])
    with pytest.raises(ValueError, match="1 prompts but 2 completions"):
        combine_rewards([("answer_format", 1.0)], ["a"], ["x", "y"])
    with pytest.raises(ValueError, match="listed twice"):
        combine_rewards([("answer_format", 1.0), ("answer_format", 2.0)], ["a"], ["x"])
    with pytest.raises(ValueError, match="must be a"):
        combine_rewards(["answer_format"], ["a"], ["x"])  # type: ignore[list-item]  # the bad spec is the point
    with pytest.raises(ValueError, match="'math_correctness' raised ValueError: math_correctness needs"):
        combine_rewards([("math_correctness", 1.0)], ["a"], ["x"])


# ---------------------------------------------------------------- bring your own task

import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from ticgrpo.rewards import RewardError  # noqa: E402
from ticgrpo.rewards.scoring import Scorer, guard_reward  # noqa: E402
from ticgrpo.rollout import RolloutBatch  # noqa: E402


def rollout_of(completions: list[str]) -> RolloutBatch:
    """A rollout holding `completions` as texts (one token each), for scoring."""
    n = len(completions)
    ones = torch.ones(n, 1, dtype=torch.long)
    return RolloutBatch(ones, ones, ones, ones, torch.zeros(n, dtype=torch.bool), torch.arange(n), ["p"] * n,
                        completions)

REPO = Path(__file__).resolve().parents[1]
TICGRPO = Path(sys.executable).parent / "ticgrpo"  # the console script: no cwd on sys.path, as for a user


def trl_style(completions, answer, **kwargs):
    """A reward as TRL's docs write them: no prompts, the dataset columns as keyword lists."""
    return [float(a in c) for c, a in zip(completions, answer, strict=True)]


def trl_style_with_prompts(prompts, completions, answer, **kwargs):
    return [float(a in c and p == "p") for p, c, a in zip(prompts, completions, answer, strict=True)]


def no_kwargs(completions, answer):
    return [float(c.endswith(a)) for c, a in zip(completions, answer, strict=True)]


def test_trl_style_reward_gets_columns_as_keywords() -> None:
    columns = {"answer": ["3", "4"], "completion_lengths": [2, 2], "max_new_tokens": 8}
    specs: list[tuple[Any, float]] = [(trl_style, 1.0), (trl_style_with_prompts, 1.0), ("math_correctness", 1.0),
                                      ("answer_format", 1.0)]
    _, per = combine_rewards(specs, ["p", "q"], ["= 3", "= 5"], columns)
    assert per == {"trl_style": [1.0, 0.0], "trl_style_with_prompts": [1.0, 0.0], "math_correctness": [1.0, 0.0],
                   "answer_format": [0.0, 0.0]}
    guarded = guard_reward(trl_style)
    assert combine_rewards([(guarded, 2.0)], ["p", "q"], ["= 3", "= 4"], columns)[0] == [2.0, 2.0]


def test_reward_without_var_kwargs_gets_only_what_it_names() -> None:
    columns = {"answer": ["3", "4"], "truncated": [False, True]}
    assert combine_rewards([(no_kwargs, 1.0)], ["p", "q"], ["= 3", "= 5"], columns)[0] == [1.0, 0.0]


def test_reward_needing_an_absent_column_is_a_one_line_error() -> None:
    with pytest.raises(ValueError) as info:
        combine_rewards([(trl_style, 1.0)], ["p"], ["x"], {"solution": ["1"]})
    message = str(info.value)
    assert "reward function 'trl_style' needs the keyword argument 'answer'" in message and "solution" in message
    with pytest.raises(ValueError, match="needs the keyword argument 'answer'"):  # not zeroed away
        Scorer([(trl_style, 1.0)], max_new_tokens=4, on_error="zero").score(rollout_of(["x"]), [
            {"prompt": "p", "solution": "1"}], 1)


def nan_for_bad(prompts, completions, **kwargs):
    return [math.nan if c == "bad" else 1.0 for c in completions]


def test_scorer_returns_failures_as_a_value_and_applies_the_policy() -> None:
    rows = [{"prompt": "p"}, {"prompt": "q"}]
    rollout = rollout_of(["ok", "bad", "ok", "ok"])  # two groups of two; the first holds the failure
    zero = Scorer([(nan_for_bad, 1.0)], max_new_tokens=4, on_error="zero").score(rollout, rows, 2)
    assert zero.batch.rewards.tolist() == [1.0, 0.0, 1.0, 1.0] and zero.dropped_groups == 0
    assert [(e.sample, e.message) for e in zero.errors] == [
        (1, "reward function 'nan_for_bad' returned nan at sample 1")]
    assert zero.action == "zeroed those rewards"
    skip = Scorer([(nan_for_bad, 1.0)], max_new_tokens=4, on_error="skip").score(rollout, rows, 2)
    assert skip.batch.rows == [rows[1]] and skip.batch.rewards.tolist() == [1.0, 1.0]
    assert skip.batch.rollout.completions == ["ok", "ok"] and skip.batch.rollout.group_ids.tolist() == [0, 0]
    assert skip.errors == zero.errors and skip.action == "dropped 1 group(s)"
    everywhere = rollout_of(["bad", "ok", "ok", "bad"])  # every group fails: the zeroed batch is kept
    kept = Scorer([(nan_for_bad, 1.0)], max_new_tokens=4, on_error="skip").score(everywhere, rows, 2)
    assert kept.batch.rewards.tolist() == [0.0, 1.0, 1.0, 0.0] and kept.dropped_groups == 0 and len(kept.errors) == 2
    with pytest.raises(RewardError, match=r"'nan_for_bad' returned nan at sample 1 \(completion 'bad'\)"):
        Scorer([(nan_for_bad, 1.0)], max_new_tokens=4).score(rollout, rows, 2)


MODULE = """\
def score(prompts, completions, answer, **kwargs):
    return [float(c.strip() == a) for c, a in zip(completions, answer)]
"""


def test_reward_paths_resolve_beside_the_config_and_in_the_working_directory(tmp_path, monkeypatch) -> None:
    config_dir, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (config_dir / "lib").mkdir(parents=True)
    elsewhere.mkdir()
    (config_dir / "byo_rewards_a.py").write_text(MODULE)
    (config_dir / "lib" / "byo_score.py").write_text("from byo_helper import ONE\n" + MODULE)
    (config_dir / "lib" / "byo_helper.py").write_text("ONE = 1.0\n")
    (elsewhere / "byo_rewards_b.py").write_text(MODULE)
    monkeypatch.chdir(elsewhere)
    path_before = list(sys.path)
    by_module = resolve_reward("byo_rewards_a:score", config_dir=config_dir)
    by_file = resolve_reward("lib/byo_score.py:score", config_dir=config_dir)  # its sibling import works
    from_cwd = resolve_reward("byo_rewards_b:score", config_dir=config_dir)
    assert sys.path == path_before  # no lasting side effect
    for fn in (by_module, by_file, from_cwd):
        assert fn(prompts=["p"], completions=[" 7"], answer=["7"]) == [1.0]
    assert resolve_reward(str(config_dir / "lib" / "byo_score.py") + ":score") is by_file
    with pytest.raises(ValueError, match=r"cannot import reward module 'byo_missing'.*project.*elsewhere"):
        resolve_reward("byo_missing:score", config_dir=config_dir)
    with pytest.raises(ValueError, match=r"reward file 'lib/nope\.py' not found"):
        resolve_reward("lib/nope.py:score", config_dir=config_dir)
    with pytest.raises(ValueError, match="has no attribute 'scor'"):
        resolve_reward("byo_rewards_a:scor", config_dir=config_dir)


def sleeps_3s(prompts, completions, **kwargs):
    time.sleep(3)
    return [1.0] * len(completions)


def test_a_hanging_reward_times_out() -> None:
    start = time.monotonic()
    with pytest.raises(RewardError) as info:
        guard_reward(sleeps_3s, timeout_s=1)(prompts=["p", "q"], completions=["a", "b"])
    assert time.monotonic() - start < 2.5
    message = str(info.value)
    assert "reward function 'sleeps_3s' did not return within 1 s (algorithm.reward_timeout_s)" in message
    assert "\n" not in message
    start = time.monotonic()
    rows = [{"prompt": "p"}, {"prompt": "q"}]
    scored = Scorer([(sleeps_3s, 1.0)], max_new_tokens=4, on_error="zero", timeout_s=1).score(
        rollout_of(["a", "b"]), rows, 1)
    assert time.monotonic() - start < 2.5 and [e.sample for e in scored.errors] == [0, 1]
    assert scored.batch.rewards.tolist() == [0.0, 0.0] and "did not return within 1 s" in scored.errors[0].message
    assert guard_reward(sleeps_3s, timeout_s=5)(prompts=["p"], completions=["a"]) == [1.0]


def test_reward_timeout_reaches_the_trainer(tmp_path) -> None:
    from ticgrpo.config import load_config
    from ticgrpo.train import Trainer

    cfg = load_config({
        "output_dir": str(tmp_path / "run"), "max_steps": 1, "model": {"name": "tiny-test", "chat_template": False},
        "data": {"train": {"task": "arithmetic", "level": 2, "num_train": 8, "num_eval": 2}, "eval": None},
        "rollout": {"prompts_per_step": 1, "num_generations": 2, "max_new_tokens": 4},
        "algorithm": {"reward_timeout_s": 1, "on_reward_error": "raise"},
        "logging": {"progress_bar": False, "plot": False}, "checkpoint": {"save_final": False},
    })
    trainer = Trainer(cfg, reward_fns=[(sleeps_3s, 1.0)])
    with pytest.raises(RewardError, match="'sleeps_3s' did not return within 1 s"):
        trainer.train_step()


CONFIG = """\
output_dir: {out}
max_steps: 2
model: {{name: tiny-test, chat_template: false}}
data:
  train: {{jsonl: {data}}}
  eval: {{jsonl: {data}}}
rollout: {{prompts_per_step: 1, num_generations: 2, max_new_tokens: 4}}
algorithm:
  rewards: [{{name: "my_rewards:score", weight: 1.0}}]
eval: {{reward: "checks/strict.py:score", every_steps: 0, num_examples: 2}}
logging: {{progress_bar: false, plot: false}}
checkpoint: {{save_final: false}}
"""


def user_project(tmp_path: Path) -> Path:
    """A folder with a config, its JSONL data and two reward files beside it."""
    project = tmp_path / "project"
    (project / "checks").mkdir(parents=True)
    rows = [{"prompt": f"{i} + 1 =", "answer": str(i + 1)} for i in range(4)]
    (project / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (project / "my_rewards.py").write_text(MODULE)
    (project / "checks" / "strict.py").write_text(MODULE)
    (project / "checks" / "needs_tests.py").write_text(
        "def score(completions, tests):\n    return [0.0] * len(tests)\n")
    # data paths are relative to the working directory (unlike reward files): this one is absolute
    (project / "config.yaml").write_text(CONFIG.format(out=tmp_path / "run", data=project / "data.jsonl"))
    return project


def ticgrpo_train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(TICGRPO), "train", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_dry_run_checks_rewards_and_data_from_another_folder(tmp_path) -> None:
    project = user_project(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    ok = ticgrpo_train("--config", str(project / "config.yaml"), "--dry-run", cwd=cwd)
    assert ok.returncode == 0, ok.stderr
    assert "my_rewards:score" in ok.stdout
    cases = [
        (["--set", "algorithm.rewards=[{name: 'no_such_rewards:score'}]"],
         "cannot import reward module 'no_such_rewards'"),
        (["--set", "eval.reward=checks/missing.py:score"], "reward file 'checks/missing.py' not found"),
        (["--set", "data.train.jsonl=missing.jsonl"], "jsonl file 'missing.jsonl' does not exist"),
        (["--set", "data.eval.jsonl=missing_eval.jsonl"], "jsonl file 'missing_eval.jsonl' does not exist"),
        (["--set", "algorithm.rewards=[{name: 'my_rewards:score'}, {name: 'checks/needs_tests.py:score'}]"],
         "reward function 'checks/needs_tests.py:score' needs the keyword argument 'tests'"),
    ]
    for overrides, fragment in cases:
        proc = ticgrpo_train("--config", str(project / "config.yaml"), "--dry-run", *overrides, cwd=cwd)
        assert proc.returncode == 2, (overrides, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and fragment in proc.stderr, proc.stderr


def test_training_with_rewards_beside_the_config(tmp_path) -> None:
    project = user_project(tmp_path)
    proc = ticgrpo_train("--config", str(project / "config.yaml"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and "reward/score_mean" in metrics[0]
    evals = [json.loads(line) for line in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
    assert evals and evals[-1]["num_examples"] == 2


def test_the_custom_task_example_runs(tmp_path) -> None:
    example = tmp_path / "examples" / "custom_task"  # its data paths are relative to the repository root
    shutil.copytree(REPO / "examples" / "custom_task", example)
    proc = ticgrpo_train("--config", str(example / "config.yaml"), "--set", "max_steps=2",
                         "--set", "model.name=tiny-test", "--output-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(math.isfinite(m["loss"]) for m in metrics)
    assert {"reward/reversed_word_mean", "reward/repeats_the_word_mean"} <= set(metrics[0])
    evals = [json.loads(line) for line in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
    assert [e["num_examples"] for e in evals] == [10.0, 10.0]  # at step 0 and at the end
