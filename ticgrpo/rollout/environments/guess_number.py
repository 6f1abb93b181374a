"""`guess_number`: a game a single completion cannot win reliably, only an agent that reads feedback.

The environment holds a secret integer in [low, high]. Each agent message is a guess (its last
integer); the environment answers "Higher." or "Lower." until the guess is right, which ends
the episode with environment reward 1 (reward 0 otherwise, also for an episode that runs out
of turns). With feedback, binary search wins in ⌈log2(high − low + 1)⌉ guesses; without it, one
guess wins with probability 1/(high − low + 1).

The secret is the row's "answer" (the `guess_number` task writes one), else a stable hash of
the row's prompt; the range is the row's "low"/"high", else the options'. Train with the
`environment_reward` reward and `rollout.max_turns` at least the binary-search depth.
"""

from __future__ import annotations

import hashlib
import re

from ticgrpo.data.tasks import guess_number_prompt
from ticgrpo.rollout.environments.protocol import Environment, Message, StepResult, register_environment

_INTEGER = re.compile(r"-?\d+")

# One game played by binary search, shown before the row's game (option `example`): a small
# instruct model otherwise answers the opening as a request ("What number would you like to
# guess?") and never guesses.
EXAMPLE: tuple[Message, ...] = (
    {"role": "user", "content": guess_number_prompt(1, 8)},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "Higher."},
    {"role": "assistant", "content": "6"},
    {"role": "user", "content": "Lower."},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": "Correct! A new game."},
)


@register_environment("guess_number", "guess a secret integer; the environment replies higher/lower; reward 1 on a hit")
class GuessNumberEnvironment(Environment):
    """Options: `low`, `high` (the range when the row gives none); `example` (show one game played
    by binary search first)."""

    def __init__(self, low: int = 1, high: int = 100, example: bool = True) -> None:
        if not (isinstance(low, int) and isinstance(high, int) and low < high):
            raise ValueError(f"guess_number needs integers low < high, got low={low!r}, high={high!r}")
        self.low, self.high, self.example = low, high, bool(example)
        self.secret = low

    def reset(self, row: dict) -> list[Message]:
        self.low, self.high = int(row.get("low", self.low)), int(row.get("high", self.high))
        prompt = row.get("prompt")
        answer = row.get("answer")
        if answer is not None and str(answer).strip().lstrip("-").isdigit():
            self.secret = int(str(answer).strip())
        else:
            digest = hashlib.sha256(str(prompt).encode()).digest()
            self.secret = self.low + int.from_bytes(digest[:8], "big") % (self.high - self.low + 1)
        if not self.low <= self.secret <= self.high:
            raise ValueError(f"the secret {self.secret} is outside [{self.low}, {self.high}]")
        shown = [dict(m) for m in EXAMPLE] if self.example else []
        if isinstance(prompt, list):
            return shown + [dict(m) for m in prompt]
        opening = str(prompt) if prompt else guess_number_prompt(self.low, self.high)
        return [*shown, {"role": "user", "content": opening}]

    def step(self, assistant_message: str) -> StepResult:
        numbers = _INTEGER.findall(assistant_message)
        if not numbers:
            return StepResult(observation=[_reply(f"Reply with one integer from {self.low} to {self.high}.")],
                              reward=0.0)
        guess = int(numbers[-1])
        if guess == self.secret:
            return StepResult(reward=1.0, done=True)
        return StepResult(observation=[_reply("Higher." if guess < self.secret else "Lower.")], reward=0.0)


def _reply(text: str) -> Message:
    return {"role": "user", "content": text}
