"""``math_correctness``: 1.0 when a completion's final answer equals the gold answer.

The final answer is, in order of preference: the text after the last 'Answer:', the last
\\boxed{...}, else the last number in the completion. Plain integer answers (every built-in
task) are compared by a fast exact path; anything else goes through math-verify, whose
parser costs milliseconds per call and can hang on pathological LaTeX, hence its timeout.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from typing import Any

from ticgrpo.rewards.registry import register_reward

ANSWER_RE = re.compile(r"answer\s*(?:is)?\s*[:：]", re.IGNORECASE)
NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
LEADING_NUMBER_RE = re.compile(r"^[\s*$]*(-?\d[\d,]*(?:\.\d+)?)(?![\d.]*[/^{])")
PLAIN_NUMBER_RE = re.compile(r"^\s*-?\d+(?:\.\d+)?\s*$")
# Decoration a model may put around a number: markdown bold, dollars, LaTeX spacing, units.
STRIP_RE = re.compile(r"[\s*$`]|\\[,;! ]|\\text\{[^}]*\}")

MATH_VERIFY_TIMEOUT_S = 2


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces balanced; None if absent."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i : j - 1] if depth == 0 else None


def gsm8k_final_answer(solution: str) -> str | None:
    """The final answer of a GSM8K reference solution, the text after its last '####' with the
    thousands separators removed ("#### 1,200" → "1200"); None when there is no '####'."""
    marker = solution.rfind("####")
    if marker < 0:
        return None
    answer = solution[marker + 4 :].strip().splitlines()
    text = answer[0].strip() if answer else ""
    cleaned = text.replace(",", "").rstrip(".").strip()
    return cleaned or None


def extract_final_answer(completion: str) -> str | None:
    """The completion's final answer as a string, or None when it has none."""
    matches = list(ANSWER_RE.finditer(completion))
    if matches:
        tail = completion[matches[-1].end() :].strip()
        line = tail.splitlines()[0] if tail else ""
        boxed = last_boxed(line)
        if boxed is not None:
            return boxed.strip()
        # Models often write "Answer: 68 apples." — keep a leading number when there is one,
        # else the whole line (e.g. "\\frac{1}{2}") for math-verify.
        number = LEADING_NUMBER_RE.match(line)
        if number is not None:
            return number.group(1)
        return line.strip().rstrip(".").strip() or None
    boxed = last_boxed(completion)
    if boxed is not None:
        return boxed.strip()
    numbers = NUMBER_RE.findall(completion)
    return numbers[-1] if numbers else None


def _as_number(text: str) -> float | None:
    cleaned = STRIP_RE.sub("", text).replace(",", "").rstrip(".")
    if not PLAIN_NUMBER_RE.match(cleaned):
        return None
    return float(cleaned)


def _math_verify_timeout() -> int | None:
    # math-verify's timeout uses SIGALRM, which only the main thread may set.
    return MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> Any:
    from math_verify import parse

    text = gold if "$" in gold or "\\boxed" in gold else f"${gold}$"
    return parse(text, parsing_timeout=_math_verify_timeout())


def answers_match(predicted: str | None, gold: str) -> bool:
    """Whether the extracted answer ``predicted`` equals ``gold`` (exactly, or per math-verify)."""
    if predicted is None:
        return False
    gold_num, pred_num = _as_number(gold), _as_number(predicted)
    if gold_num is not None and pred_num is not None:
        return gold_num == pred_num
    from math_verify import parse, verify

    gold_parsed = _parse_gold(gold)
    if not gold_parsed:
        return predicted.strip() == gold.strip()
    text = predicted if "$" in predicted or "\\boxed" in predicted else f"${predicted}$"
    pred_parsed = parse(text, parsing_timeout=_math_verify_timeout())
    if not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=_math_verify_timeout()))


@register_reward("math_correctness", own_time_limit=True)  # math-verify timeouts
def math_correctness(
    prompts: list[str], completions: list[str], answer: list[str] | None = None, **kwargs: Any
) -> list[float]:
    """1.0 for each completion whose final answer equals the ``answer`` column, else 0.0."""
    if answer is None:
        raise ValueError("math_correctness needs an 'answer' column in the dataset (the gold answers)")
    if len(answer) != len(completions):
        raise ValueError(f"math_correctness got {len(completions)} completions but {len(answer)} answers")
    return [
        1.0 if answers_match(extract_final_answer(c), str(g)) else 0.0 for c, g in zip(completions, answer, strict=True)
    ]
