"""iGRPO two-stage drafts (spec §5): the group update runs on refinements of the best draft.

    refiner = DraftRefiner(num_drafts=4, engine=..., format_prompt=..., sampling=..., scorer=...)
    refined = refiner.refine(rows)      # refined.rows: prompts now carry the best draft

For each prompt: sample `num_drafts` completions with the current policy (no gradient: the
engine generates under no_grad and they never enter the loss), score them with the
training rewards (a failing reward scores its draft 0: drafts are only ranked), and
rewrite the prompt with the highest-reward draft (first one on ties) through `template` —
by default

    {prompt}

    Here is a draft answer:
    {draft}

    Improve it.

The trainer then samples its G completions (the refinements) from these prompts and runs
the usual group update on them; every other column of the row (e.g. `answer`) is kept, so
the rewards score the refinements exactly as they would score first attempts. With a chat
prompt (a list of messages) the template is applied to the content of the last user message.
Configured by `algorithm.igrpo: {num_drafts: N, template: "..."}`; held-out evaluation stays
single-stage (no drafts).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from pydantic import BaseModel, Field, field_validator

from ticgrpo.config.schema import SECTION, Integer, Text
from ticgrpo.rewards.scoring import RewardFailure, Scorer
from ticgrpo.rollout import RolloutBatch, SamplingParams

DEFAULT_TEMPLATE = "{prompt}\n\nHere is a draft answer:\n{draft}\n\nImprove it."


class IGRPOOptions(BaseModel):
    """`algorithm.igrpo`: two-stage drafts (iGRPO)."""

    model_config = SECTION
    num_drafts: Integer = Field(default=1, ge=1,
        description="drafts sampled per prompt; the best one enters the prompt")
    template: Text = Field(default=DEFAULT_TEMPLATE,
        description="the second-stage prompt; holds {prompt} and {draft}")

    @field_validator("template")
    @classmethod
    def _formats(cls, template: str) -> str:
        if "{prompt}" not in template or "{draft}" not in template:
            raise ValueError(f"must contain {{prompt}} and {{draft}}, got {template!r}")
        try:
            template.format(prompt="", draft="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"{template!r} does not format with prompt and draft only ({exc})") from None
        return template


def with_draft(prompt: Any, draft: str, template: str = DEFAULT_TEMPLATE) -> Any:
    """The prompt (a string or a list of chat messages) rewritten to carry `draft`."""
    if isinstance(prompt, list):
        messages = [dict(m) for m in prompt]
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"] or [len(messages) - 1]
        last = users[-1]
        messages[last]["content"] = template.format(prompt=messages[last]["content"], draft=draft)
        return messages
    return template.format(prompt=prompt, draft=draft)


class DraftEngine(Protocol):
    def generate(self, prompts: list[str], num_samples: int, params: SamplingParams) -> RolloutBatch: ...


@dataclass(frozen=True)
class Refined:
    rows: list[dict]  # the rows, their prompts rewritten to carry the best draft
    metrics: dict[str, float]  # draft_reward_mean, draft_best_reward_mean, time_drafts
    errors: tuple[RewardFailure, ...]  # reward failures met scoring the drafts (scored 0)


@dataclass(frozen=True)
class DraftRefiner:
    """Stage one of iGRPO: drafts from `engine`, ranked by `scorer`."""

    num_drafts: int
    engine: DraftEngine
    format_prompt: Callable[[dict], str]
    sampling: SamplingParams
    scorer: Scorer
    template: str = DEFAULT_TEMPLATE

    @classmethod
    def from_options(cls, options: dict, *, engine: DraftEngine, format_prompt: Callable[[dict], str],
                     sampling: SamplingParams, scorer: Scorer) -> DraftRefiner:
        checked = IGRPOOptions.model_validate(options)  # a ValidationError is a ValueError
        # every prompt needs its best draft: a failure scores 0 here instead of dropping the group
        ranking = replace(scorer, on_error="zero") if scorer.on_error == "skip" else scorer
        return cls(checked.num_drafts, engine, format_prompt, sampling, ranking, checked.template)

    def refine(self, rows: list[dict]) -> Refined:
        start = time.perf_counter()
        n = self.num_drafts
        drafts = self.engine.generate([self.format_prompt(r) for r in rows], n, self.sampling)
        scored = self.scorer.score(drafts, rows, n)
        rewards = scored.batch.group_rewards()  # [P, N]
        best = rewards.argmax(dim=1)  # first maximum on ties
        out = []
        for k, row in enumerate(rows):
            draft = drafts.completions[k * n + int(best[k])].strip()
            out.append({**row, "prompt": with_draft(row["prompt"], draft, self.template)})
        metrics = {
            "draft_reward_mean": float(rewards.mean()),
            "draft_best_reward_mean": float(rewards.max(dim=1).values.mean()),
            "time_drafts": time.perf_counter() - start,
        }
        return Refined(out, metrics, scored.errors)


__all__ = ["DEFAULT_TEMPLATE", "DraftRefiner", "IGRPOOptions", "Refined", "with_draft"]
