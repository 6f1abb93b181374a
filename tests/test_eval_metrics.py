"""The eval-metric registry: pass@k against brute-force enumeration, maj@k ties, avg@k, intervals,
the constant baseline and its flag."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from ticgrpo.eval.metrics import EVAL_METRICS, Outcomes, interval, majority_answer, metric_names, pass_at_k
from ticgrpo.eval.runner import Completion, EvalSettings, ProblemRecord, constant_baseline, format_table, summarize


def _brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """The fraction of the k-subsets of n samples (c correct) that hold at least one correct sample."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in subset) for subset in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_equals_enumeration_over_all_k_subsets(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(_brute_force_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_where_the_binomials_are_huge() -> None:
    n, c, k = 1000, 3, 500
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)
    assert pass_at_k(1000, 0, 500) == 0.0
    assert pass_at_k(1000, 600, 500) == 1.0  # fewer wrong samples than k: every draw holds a correct one


def test_pass_at_k_refuses_impossible_counts() -> None:
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(4, 5, 1)


def test_majority_vote_breaks_ties_by_first_appearance() -> None:
    assert majority_answer(["3", "5", "5", "3"]) == 0  # 2 votes each: "3" was seen first
    assert majority_answer(["5", "3", "3", "5"]) == 0
    assert majority_answer(["7", None, "5", "5"]) == 2  # a clear majority wins wherever it starts
    assert majority_answer([None, "9", None]) == 1  # unextracted answers do not vote
    assert majority_answer([None, None]) is None


def _outcomes(correct: list[list[bool]], answers: list[list[str | None]], greedy: list[bool] | None = None) -> Outcomes:
    problems, n = len(correct), len(correct[0])
    return Outcomes(
        greedy_correct=np.array(greedy if greedy is not None else [False] * problems),
        sampled_correct=np.array(correct, dtype=bool),
        sampled_answers=answers,
        lengths=np.full((problems, 1 + n), 10.0),
        truncated=np.zeros((problems, 1 + n)),
    )


def test_maj_at_k_with_ties_and_a_prefix_of_the_samples() -> None:
    view = _outcomes(
        correct=[[False, True, True, False], [True, False, False, False], [False, False, False, False]],
        answers=[["3", "5", "5", "3"], ["8", "2", "2", None], [None, None, None, None]],
    )
    maj = EVAL_METRICS.spec("maj@k").fn
    # problem 0: a 2-2 tie at k=4 goes to "3" (wrong); at k=3 "5" has two votes (right)
    # problem 1: "2" outvotes the right "8" at k=3 and 4; at k=1 only "8" votes
    # problem 2: no sample has an answer: wrong
    assert maj(view, 4).tolist() == [0.0, 0.0, 0.0]
    assert maj(view, 3).tolist() == [1.0, 0.0, 0.0]
    assert maj(view, 1).tolist() == [0.0, 1.0, 0.0]


def test_avg_at_k_averages_the_first_k_samples_and_pass_at_k_uses_all_n() -> None:
    view = _outcomes(correct=[[True, False, False, True]], answers=[["1", "2", "3", "1"]])
    assert EVAL_METRICS.spec("avg@k").fn(view, 1).tolist() == [1.0]
    assert EVAL_METRICS.spec("avg@k").fn(view, 4).tolist() == [0.5]
    assert EVAL_METRICS.spec("pass@k").fn(view, 1).tolist() == [0.5]  # c/n from all four samples
    assert EVAL_METRICS.spec("pass@k").fn(view, 2).tolist() == pytest.approx([1 - 1 / 6])  # 1 − C(2,2)/C(4,2)


def test_every_metric_states_its_formula() -> None:
    for spec in EVAL_METRICS.specs():
        assert spec.fn.__doc__ and len(spec.fn.__doc__.split()) >= 8, spec.name
    assert {"greedy_accuracy", "avg@k", "pass@k", "maj@k", "mean_length", "truncation_rate"} <= set(EVAL_METRICS)


def test_k_larger_than_the_samples_is_refused() -> None:
    with pytest.raises(ValueError, match="k=8 is larger than the 4 samples per problem"):
        metric_names((1, 8), 4)
    names = [spec.reported_name(k) for spec, k in metric_names((1, 4), 4)]
    assert names[0] == "greedy_accuracy" and {"pass@1", "pass@4", "maj@4", "avg@4"} <= set(names)
    assert [spec.name for spec, _ in metric_names((), 0)] == ["greedy_accuracy", "truncation_rate", "mean_length"]


def test_wilson_interval_matches_its_closed_form() -> None:
    low, high = interval(np.array([1.0] * 5 + [0.0] * 5), "wilson")
    z, p, n = 1.959963984540054, 0.5, 10
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (
        1 + z * z / n)
    assert (low, high) == pytest.approx((centre - half, centre + half), abs=1e-9)
    assert interval(np.zeros(4), "wilson")[0] == 0.0 and interval(np.zeros(4), "wilson")[1] > 0.3  # not [0, 0]


def test_bootstrap_interval_brackets_the_mean_and_is_seeded() -> None:
    scores = np.random.default_rng(3).random(50)
    low, high = interval(scores, "bootstrap", seed=1)
    assert low < scores.mean() < high and high - low < 0.4
    assert interval(scores, "bootstrap", seed=1) == (low, high)
    assert interval(np.full(7, 0.25), "bootstrap") == (0.25, 0.25)


def _record(gold: str, answer: str | None, correct: bool, samples: int = 2) -> ProblemRecord:
    completion = Completion(f"Answer: {answer}", answer, correct, 5, False)
    return ProblemRecord(gold, "prompt", gold, completion, [completion] * samples)


def test_a_model_that_always_answers_the_most_common_gold_is_flagged() -> None:
    """The issue's case: accuracy rises while the model only learned to answer "1", which alone
    scores as much; the report must say so."""
    golds = ["1"] * 37 + [str(i) for i in range(2, 65)]
    records = [_record(g, "1", g == "1") for g in golds]
    summary = summarize(records, EvalSettings(ks=(1, 2)))
    assert constant_baseline(golds) == ("1", 0.37)
    accuracy = summary["metrics"]["greedy_accuracy"]
    assert accuracy["value"] == pytest.approx(0.37) and accuracy["baseline"] == pytest.approx(0.37)
    assert accuracy["at_or_below_baseline"] and summary["metrics"]["pass@2"]["at_or_below_baseline"]
    assert summary["answers"]["greedy"] == [("1", 100)]
    table = format_table(summary)
    assert "<= constant baseline" in table and "always answering '1' scores 37.0" in table
    assert "'1'×100" in table

    better = [_record(g, g, True) for g in golds[:50]] + [_record(g, "0", False) for g in golds[50:]]
    summary = summarize(better, EvalSettings(ks=(2,)))
    assert not summary["metrics"]["greedy_accuracy"]["at_or_below_baseline"]
    assert "mean_length" in summary["metrics"] and "baseline" not in summary["metrics"]["mean_length"]


def test_summary_counts_skipped_rows_and_refuses_an_empty_set() -> None:
    summary = summarize([_record("4", "4", True)], EvalSettings(ks=(2,)), skipped=["row-7", "row-9"])
    assert summary["skipped_unparsed_gold"] == 2 and summary["skipped_ids"] == ["row-7", "row-9"]
    assert "2 rows skipped: their gold answer cannot be parsed" in format_table(summary)
    with pytest.raises(ValueError, match="all 3 rows lack a parseable gold answer"):
        summarize([], EvalSettings(), skipped=["a", "b", "c"])


def test_problems_without_a_gold_answer_have_no_baseline_but_keep_their_metrics() -> None:
    """A reward-judged task (in training, eval.reward decides) may have no gold answers at all."""
    records = [ProblemRecord(str(i), "prompt", None, Completion("x", None, i == 0, 3, False, 1.0 * (i == 0)),
                             [Completion("y", None, False, 4, False, 0.0)] * 2) for i in range(4)]
    assert constant_baseline([None, "3", None, "3", "5"]) == ("3", 2 / 3)  # only rows with a gold answer count
    summary = summarize(records, EvalSettings(ks=(2,)))
    assert summary["constant_baseline"]["answer"] is None and math.isnan(summary["constant_baseline"]["score"])
    assert summary["metrics"]["greedy_accuracy"]["value"] == 0.25
    assert not summary["metrics"]["greedy_accuracy"]["at_or_below_baseline"] and summary["answers"]["gold"] == []
    assert "constant baseline: none (no problem has a gold answer" in format_table(summary)
