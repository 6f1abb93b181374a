"""Built-in task generators: synthetic problems with exact, checkable answers.

A task generator is registered in `TASKS` as ``fn(level, num, seed, exclude) -> list[dict]``;
every example is ``{"prompt", "answer", "level", "id"}`` where ``id`` names the underlying
problem (the arithmetic expression), so two examples with the same id are the same problem
however they are worded. `make_task_splits` builds a train stream and a FIXED held-out eval
split whose problems never appear in training.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ticgrpo.registry import FunctionRegistry

TaskFn = Callable[..., list[dict]]
TASKS: FunctionRegistry[TaskFn] = FunctionRegistry("task")

# The held-out split is drawn from this seed whatever the training seed is, so every run,
# every seed and every algorithm is evaluated on the same problems.
EVAL_SEED = 9_176_263

ANSWER_PREFIX = "Answer:"
INSTRUCTION = "End with 'Answer: <number>'."
PROMPT_STYLES = ("chat", "text")

# Measured on SmolLM2-135M-Instruct (benchmarks/baseline_accuracy.py): instructions alone
# ("write the final answer as 'Answer: N'", \boxed{}, format templates) are followed in
# 0-17% of replies, but one worked example given as a previous chat turn makes it reply
# "<calculation>\nAnswer: N" about 90% of the time in ~18 tokens. So the default prompt is
# a one-shot chat; style "text" gives a plain string for code that needs one.
SHOTS: dict[str, tuple[str, str, str]] = {
    # kind: (problem id key, question, worked answer)
    "add": ("12+30", "What is 12 + 30?", "12 + 30 = 42\nAnswer: 42"),
    "add_sub": ("25+17-12", "What is 25 + 17 - 12?", "25 + 17 = 42, 42 - 12 = 30\nAnswer: 30"),
    "mul": ("14*3", "What is 14 × 3?", "14 × 3 = 42\nAnswer: 42"),
    "word": (
        "12+5-3",
        "Ann has 12 pens, buys 5 more and gives away 3. How many pens does Ann have now?",
        "12 + 5 = 17, 17 - 3 = 14\nAnswer: 14",
    ),
    "word_mul": (
        "3*4+5",
        "Ann buys 3 boxes of pens with 4 pens in each box, and already had 5 pens. How many pens does Ann have now?",
        "3 × 4 = 12, 12 + 5 = 17\nAnswer: 17",
    ),
}

NAMES = ["Tom", "Anna", "Sam", "Lily", "Ben", "Mia", "Leo", "Emma", "Max", "Zoe", "Jack", "Sara"]
ITEMS = ["apples", "marbles", "stickers", "cookies", "pencils", "books", "cards", "coins", "stamps", "toys"]


def format_prompt(question: str, kind: str = "add", style: str = "chat") -> str | list[dict]:
    """The prompt for ``question``: a one-shot chat (style "chat") or a plain string ("text")."""
    if style == "text":
        return f"{question} {INSTRUCTION}"
    if style != "chat":
        raise ValueError(f"unknown prompt style {style!r}; choose one of: {', '.join(PROMPT_STYLES)}")
    _, shot_q, shot_a = SHOTS[kind]
    return [
        {"role": "user", "content": f"{shot_q} {INSTRUCTION}"},
        {"role": "assistant", "content": shot_a},
        {"role": "user", "content": f"{question} {INSTRUCTION}"},
    ]


def _arith_problem(level: int, rng: random.Random) -> tuple[str, int, str, str]:
    """One problem: (expression key, integer answer, question text, shot kind)."""
    if level == 1:
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        return f"{a}+{b}", a + b, f"What is {a} + {b}?", "add"
    if level == 2:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        return f"{a}+{b}", a + b, f"What is {a} + {b}?", "add"
    if level == 3:
        if rng.random() < 0.5:
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            c = rng.randint(10, min(99, a + b))
            return f"{a}+{b}-{c}", a + b - c, f"What is {a} + {b} - {c}?", "add_sub"
        a, b = rng.randint(10, 99), rng.randint(2, 9)
        return f"{a}*{b}", a * b, f"What is {a} × {b}?", "mul"
    if level == 4:
        return _word_problem_add_sub(rng)
    if level == 5:
        return _word_problem_mul(rng)
    raise ValueError(f"arithmetic level must be 1-5, got {level!r}")


def _word_problem_add_sub(rng: random.Random) -> tuple[str, int, str, str]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(5, 40), rng.randint(2, 20)
    c = rng.randint(2, a + b - 1)
    if rng.random() < 0.5:
        q = f"{name} has {a} {item}, buys {b} more and gives away {c}. How many {item} does {name} have now?"
        return f"{a}+{b}-{c}", a + b - c, q, "word"
    d = rng.randint(2, 20)
    q = f"{name} has {a} {item}, gets {b} more, loses {c} and then finds {d}. How many {item} does {name} have now?"
    return f"{a}+{b}-{c}+{d}", a + b - c + d, q, "word"


def _word_problem_mul(rng: random.Random) -> tuple[str, int, str, str]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    per, boxes = rng.randint(3, 12), rng.randint(2, 9)
    if rng.random() < 0.5:
        extra = rng.randint(2, 30)
        q = (
            f"{name} buys {boxes} boxes of {item} with {per} {item} in each box, "
            f"and already had {extra} {item}. How many {item} does {name} have now?"
        )
        return f"{boxes}*{per}+{extra}", boxes * per + extra, q, "word_mul"
    gave = rng.randint(1, boxes * per - 1)
    q = f"{name} has {boxes} bags with {per} {item} in each bag and gives away {gave} {item}. How many {item} are left?"
    return f"{boxes}*{per}-{gave}", boxes * per - gave, q, "word_mul"


def _small_space(level: int) -> set[str] | None:
    """Ids of all problems of a level when there are few enough to run out, else None."""
    if level == 1:
        return {f"arithmetic-l1-{a}+{b}" for a in range(10) for b in range(10)}
    return None


@TASKS.register("arithmetic")
def arithmetic(
    level: int,
    num: int,
    seed: int,
    exclude: set[str] | None = None,
    unique: bool = False,
    prompt_style: str = "chat",
) -> list[dict]:
    """``num`` integer-arithmetic problems of difficulty ``level`` (1-5).

    1: one-digit a+b; 2: two-digit a+b; 3: two-digit a+b-c or two-digit × one-digit;
    4: word problems with two or three +/- operations; 5: word problems with multiplication.
    Problems whose id is in ``exclude`` are skipped; ``unique`` forbids repeats; the
    worked examples of the one-shot prompts never appear as problems.
    ``prompt_style``: "chat" (one-shot chat messages, the default) or "text" (a string).
    """
    if prompt_style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {prompt_style!r}; choose one of: {', '.join(PROMPT_STYLES)}")
    if level not in (1, 2, 3, 4, 5):
        raise ValueError(f"arithmetic level must be 1-5, got {level!r}")
    if num < 0:
        raise ValueError(f"number of problems must be >= 0, got {num}")
    exclude = set(exclude or ()) | {f"arithmetic-l{level}-{key}" for key, _, _ in SHOTS.values()}
    space = _small_space(level)
    if space is not None:
        available = len(space - exclude)
        if (unique and num > available) or (num > 0 and available == 0):
            raise ValueError(
                f"arithmetic level {level} has only {len(space)} distinct problems and {available} "
                f"are not excluded, too few for {num}; lower num_eval or use level >= 2"
            )
    rng = random.Random(f"arithmetic-{level}-{seed}")

    def draw() -> tuple[str, Callable[[], dict]]:
        key, answer, question, kind = _arith_problem(level, rng)
        pid = f"arithmetic-l{level}-{key}"
        return pid, lambda: {"prompt": format_prompt(question, kind, prompt_style), "answer": str(answer),
                             "level": level, "id": pid}

    return _draw_examples(num, draw, exclude, unique)


def _draw_examples(num: int, draw: Callable[[], tuple[str, Callable[[], dict]]], exclude: set[str],
                   unique: bool) -> list[dict]:
    """`num` examples from `draw()` -> (problem id, the example's builder), skipping ids in
    `exclude` (and, with `unique`, repeats)."""
    seen: set[str] = set()
    out: list[dict] = []
    while len(out) < num:
        pid, example = draw()
        if pid in exclude or (unique and pid in seen):
            continue
        seen.add(pid)
        out.append(example())
    return out


# guess_number task level -> the range's upper end (the lower end is 1)
GUESS_NUMBER_HIGH = {1: 10, 2: 20, 3: 50, 4: 100, 5: 1000}


def guess_number_prompt(low: int, high: int) -> str:
    """The opening message of a `guess_number` game (ticgrpo.rollout.environments.guess_number)."""
    return (f"I am thinking of an integer from {low} to {high}. Guess it: reply with one number. "
            f"I will tell you whether my number is higher or lower.")


@TASKS.register("guess_number")
def guess_number_task(level: int, num: int, seed: int, exclude: set[str] | None = None, unique: bool = False,
                      prompt_style: str = "chat") -> list[dict]:
    """``num`` games for the `guess_number` environment: secrets uniform in [1, GUESS_NUMBER_HIGH[level]]
    (level 1-5: 10, 20, 50, 100, 1000). ``id`` names the secret, so the held-out split's secrets
    never appear in training; ``prompt_style`` "chat" gives one user message, "text" a string."""
    if prompt_style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {prompt_style!r}; choose one of: {', '.join(PROMPT_STYLES)}")
    if level not in GUESS_NUMBER_HIGH:
        raise ValueError(f"guess_number level must be 1-5, got {level!r}")
    if num < 0:
        raise ValueError(f"number of games must be >= 0, got {num}")
    high = GUESS_NUMBER_HIGH[level]
    exclude = set(exclude or ())
    available = sum(f"guess_number-l{level}-{s}" not in exclude for s in range(1, high + 1))
    if (unique and num > available) or (num > 0 and available == 0):
        raise ValueError(f"guess_number level {level} has {high} secrets and {available} are not excluded, "
                         f"too few for {num}; lower num_eval or raise the level")
    rng = random.Random(f"guess_number-{level}-{seed}")
    text = guess_number_prompt(1, high)

    def draw() -> tuple[str, Callable[[], dict]]:
        secret = rng.randint(1, high)
        pid = f"guess_number-l{level}-{secret}"
        prompt: str | list[dict] = text if prompt_style == "text" else [{"role": "user", "content": text}]
        return pid, lambda: {"prompt": prompt, "answer": str(secret), "low": 1, "high": high, "level": level,
                             "id": pid}

    return _draw_examples(num, draw, exclude, unique)


def generate_task(name: str, level: int, num: int, seed: int, **kwargs: object) -> list[dict]:
    """``num`` examples of the registered task ``name``."""
    return TASKS.get(name)(level=level, num=num, seed=seed, **kwargs)


def make_task_splits(
    name: str,
    level: int,
    num_train: int = 10_000,
    num_eval: int = 100,
    seed: int = 0,
    eval_seed: int = EVAL_SEED,
    **task_kwargs: object,
) -> tuple[list[dict], list[dict]]:
    """(train, eval) examples of a task.

    The eval split depends only on (name, level, num_eval, eval_seed), never on ``seed``, and
    holds distinct problems; training examples exclude every eval problem (they may repeat
    among themselves, as a stream would). ``task_kwargs`` go to the generator (e.g.
    ``prompt_style="text"``).
    """
    eval_split = generate_task(name, level, num_eval, eval_seed, unique=True, **task_kwargs)
    exclude = {ex["id"] for ex in eval_split}
    train = generate_task(name, level, num_train, seed, exclude=exclude, **task_kwargs)
    return train, eval_split
