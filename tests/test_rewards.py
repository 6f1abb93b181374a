"""Reward functions: correctness on many completion styles, format, overlong shaping, combining."""

from __future__ import annotations

import math
import time

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
    assert resolve_reward(len) is len
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
        combine_rewards(["answer_format"], ["a"], ["x"])
    with pytest.raises(ValueError, match="'math_correctness' raised ValueError: math_correctness needs"):
        combine_rewards([("math_correctness", 1.0)], ["a"], ["x"])
