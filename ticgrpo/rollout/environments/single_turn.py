"""`single_turn`: the dataset's prompt, one agent turn, done — a single completion as an episode
(what every objective must treat exactly as its single-turn form; the tests check it)."""

from __future__ import annotations

from ticgrpo.rollout.environments.protocol import Environment, Message, StepResult, register_environment


@register_environment("single_turn", "the row's prompt, one reply, done (a single completion as an episode)")
class SingleTurnEnvironment(Environment):
    def reset(self, row: dict) -> list[Message]:
        prompt = row["prompt"]
        return [dict(m) for m in prompt] if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]

    def step(self, assistant_message: str) -> StepResult:
        return StepResult(done=True)
