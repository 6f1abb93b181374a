"""Multi-turn episodes: G episodes per prompt, batched across episodes turn by turn.

    engine = EpisodeEngine(HFGenerateEngine(model, tok), tok, environment=EnvironmentFactory("my_envs:Calculator"),
                           limits=EpisodeLimits(max_turns=3), chat_template=True)
    batch = engine.generate_for(rows, prompts, num_samples=8, params=SamplingParams(max_new_tokens=96))

The first observation (`Environment.reset(row)`) rendered with the chat template is the prompt.
Everything after it is the "completion": the agent's sampled tokens of every turn and, between
them, the environment's messages rendered by the template. Tokens are never re-tokenised: each
turn continues the exact token ids of the context (`RolloutEngine.continue_tokens`), so the
tokens the policy saw are the tokens it is trained on. The batch's `completion_mask` is the
AGENT-TOKEN mask (1 on sampled tokens only) and `completion_attention_mask` covers every real
token, so every objective, advantage, length and KL counts the agent's tokens only, and
tic_grpo's trajectory log-ratio is the sum over the agent's tokens of all turns.

An episode ends when the environment says done (or gives no observation), when an agent turn
has no EOS within `max_new_tokens` ("turn_truncated"), after `max_turns` agent turns
("max_turns") or when the next environment message would pass `max_episode_tokens`
("token_budget"); the last three mark the row truncated. An environment that raises or returns
something malformed ends its episode with the error recorded (the scorer then zeroes its
reward, or drops its group under `algorithm.on_reward_error: skip`) and a one-line warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from ticgrpo.rollout.base import RolloutBatch, RolloutEngine, SamplingParams
from ticgrpo.rollout.environments import Environment, EnvironmentFactory, Message, StepResult, check_messages

logger = logging.getLogger(__name__)

END_REASONS = ("done", "turn_truncated", "max_turns", "token_budget", "error")


@dataclass(frozen=True)
class EpisodeLimits:
    max_turns: int = 4  # agent turns
    max_episode_tokens: int | None = None  # agent + environment tokens after the prompt; None: no limit

    def __post_init__(self) -> None:
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")
        if self.max_episode_tokens is not None and self.max_episode_tokens < 1:
            raise ValueError(f"max_episode_tokens must be >= 1, got {self.max_episode_tokens}")


@dataclass
class Episode:
    """One episode's record (samples.jsonl, the episode metrics, the environment reward)."""

    messages: list[Message]  # the transcript: the first observation, then assistant / environment messages
    turns: int = 0  # agent turns
    tool_calls: int = 0
    tool_errors: int = 0
    environment_reward: float | None = None  # sum of the environment's rewards; None: it gave none
    agent_tokens: int = 0
    environment_tokens: int = 0
    end: str = ""  # one of END_REASONS once finished
    error: str | None = None  # what went wrong with the environment, naming it

    @property
    def finished(self) -> bool:
        return bool(self.end)

    @property
    def truncated(self) -> bool:
        return self.end in ("turn_truncated", "max_turns", "token_budget")

    def to_json(self) -> dict[str, Any]:
        return {"messages": self.messages, "turns": self.turns, "tool_calls": self.tool_calls,
                "tool_errors": self.tool_errors, "environment_reward": self.environment_reward,
                "agent_tokens": self.agent_tokens, "environment_tokens": self.environment_tokens,
                "end": self.end, "error": self.error}


@dataclass(frozen=True)
class ChatRenderer:
    """Messages as the text the policy reads: the tokenizer's chat template (`chat_template`) or
    plain text (contents joined by blank lines); `system_prompt` goes first when the first
    observation has no system message."""

    tokenizer: Any
    eos_text: str
    chat_template: bool = True
    system_prompt: str | None = None

    def first(self, messages: list[Message], tools: list[dict] | None = None) -> str:
        """The first observation; `tools` (JSON schemas) go to the template, which describes them
        in its own tool format where it defines one (and ignores them where it does not)."""
        messages = [dict(m) for m in messages]
        if self.system_prompt is not None and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        if not self._templated:
            return "\n\n".join(str(m["content"]) for m in messages)
        return str(self.tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False,
                                                      add_generation_prompt=True))

    def between_turns(self, observation: list[Message]) -> str:
        """The text after an agent turn's EOS: the template's rest of the assistant turn, the
        observation's messages and the header of the next assistant turn."""
        if not self._templated:
            return "\n\n" + "\n\n".join(str(m["content"]) for m in observation) + "\n\n"
        base = [{"role": "user", "content": "?"}, {"role": "assistant", "content": "!"}]
        before = self.tokenizer.apply_chat_template(base, tokenize=False)
        after = self.tokenizer.apply_chat_template(base + observation, tokenize=False, add_generation_prompt=True)
        if not after.startswith(before):
            raise ValueError("the chat template does not render a conversation as a prefix of its continuation, "
                             "so environment messages cannot be appended token by token")
        # the agent's turn ended at its EOS: what the template writes after that EOS is the environment's
        cut = before.rfind(self.eos_text)
        return after[cut + len(self.eos_text) if cut >= 0 else len(before):]

    @property
    def _templated(self) -> bool:
        return self.chat_template and bool(getattr(self.tokenizer, "chat_template", None))


@dataclass
class _Running:
    """An episode in progress: its environment, token lists and record."""

    index: int  # its row in the batch
    env: Environment | None
    prompt_ids: list[int]
    record: Episode
    completion_ids: list[int] = field(default_factory=list)
    agent_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    last_message: str = ""

    def context(self) -> list[int]:
        return self.prompt_ids + self.completion_ids


class EpisodeEngine(RolloutEngine):
    """A `RolloutEngine` whose rows are multi-turn episodes with an environment; see the module
    docstring. It samples through `engine` (any engine with `continue_tokens`) and forwards
    weight updates and `close` to it."""

    def __init__(self, engine: RolloutEngine, tokenizer: Any, environment: EnvironmentFactory,
                 limits: EpisodeLimits, chat_template: bool = True, system_prompt: str | None = None) -> None:
        self.engine, self.tokenizer, self.environment, self.limits = engine, tokenizer, environment, limits
        eos_ids: list[int] = list(getattr(engine, "eos_token_ids"))  # noqa: B009 (every built-in engine has them)
        self.eos_token_ids = eos_ids
        self.pad_token_id: int = int(getattr(engine, "pad_token_id"))  # noqa: B009
        self.provides_behavior_logprobs = engine.provides_behavior_logprobs
        self.max_prompt_length: int | None = getattr(engine, "max_prompt_length", None)
        eos_text = tokenizer.convert_ids_to_tokens(eos_ids[0])
        self.renderer = ChatRenderer(tokenizer, str(eos_text), chat_template, system_prompt)

    def update_weights(self, model: object, version: int | None = None) -> None:
        self.engine.update_weights(model, version)

    def close(self) -> None:
        self.engine.close()

    def generate(self, prompts: list[str], num_samples: int, params: SamplingParams) -> RolloutBatch:
        raise TypeError("episodes start from dataset rows (the environment resets from each): call generate_for")

    def generate_for(self, rows: list[dict], prompts: list[str], num_samples: int,
                     params: SamplingParams) -> RolloutBatch:
        """`num_samples` episodes per row, prompt-major; `prompts` (the rows' single-turn prompt
        texts) is the prompt of an episode whose environment fails to reset."""
        running = [self._start(row, text, index * num_samples + j)
                   for index, (row, text) in enumerate(zip(rows, prompts, strict=True)) for j in range(num_samples)]
        for _ in range(self.limits.max_turns):
            active = [e for e in running if not e.record.finished]
            if not active:
                break
            continuations = self.engine.continue_tokens([e.context() for e in active], params)
            for episode, continuation in zip(active, continuations, strict=True):
                self._agent_turn(episode, continuation.token_ids, continuation.logprobs, continuation.ended)
        for e in running:
            if not e.record.finished:
                e.record.end = "max_turns"
        return self._assemble(running, rows, num_samples)

    # ------------------------------------------------------------------ one episode

    def _start(self, row: dict, fallback_prompt: str, index: int) -> _Running:
        env: Environment | None = None
        try:
            env = self.environment.make()
            first = check_messages(env.reset(row), f"environment {self.environment.name!r} reset")
            text = self.renderer.first(first, getattr(env, "tools", None))
        except Exception as exc:
            record = Episode([{"role": "user", "content": fallback_prompt}])
            running = _Running(index, None, self._tokenize(fallback_prompt, prompt=True), record)
            self._fail(running, "reset", exc)
            return running
        return _Running(index, env, self._tokenize(text, prompt=True), Episode(first))

    def _agent_turn(self, episode: _Running, ids: list[int], logprobs: list[float] | None, ended: bool) -> None:
        record = episode.record
        budget = self.limits.max_episode_tokens
        if budget is not None:
            room = budget - len(episode.completion_ids)
            if len(ids) > room:
                ids, logprobs, ended = ids[:room], None if logprobs is None else logprobs[:room], False
        episode.completion_ids += ids
        episode.agent_mask += [1] * len(ids)
        episode.logprobs += list(logprobs) if logprobs is not None else [0.0] * len(ids)
        record.agent_tokens += len(ids)
        record.turns += 1
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        episode.last_message = text
        record.messages.append({"role": "assistant", "content": text})
        if episode.env is None:  # the environment failed at reset: one agent turn, then the episode ends
            record.end = "error"
            return
        if not ended:
            record.end = "turn_truncated"
            return
        try:
            result = episode.env.step(text)
            if not isinstance(result, StepResult):
                raise TypeError(f"step returned {type(result).__name__}, not a StepResult")
            observation = None if result.observation is None else check_messages(
                result.observation, f"environment {self.environment.name!r} step")
        except Exception as exc:
            self._fail(episode, "step", exc)
            return
        record.tool_calls += int(result.tool_calls)
        record.tool_errors += int(result.tool_errors)
        if result.reward is not None:
            record.environment_reward = (record.environment_reward or 0.0) + float(result.reward)
        if result.done or observation is None:
            record.end = "done"
            return
        if record.turns >= self.limits.max_turns:
            record.end = "max_turns"
            return
        segment = self._tokenize(self.renderer.between_turns(observation), prompt=False)
        if budget is not None and len(episode.completion_ids) + len(segment) >= budget:
            record.end = "token_budget"  # no room left for another agent token
            return
        record.messages += observation
        episode.completion_ids += segment
        episode.agent_mask += [0] * len(segment)
        episode.logprobs += [0.0] * len(segment)
        record.environment_tokens += len(segment)

    def _fail(self, episode: _Running, where: str, exc: BaseException) -> None:
        message = f"environment {self.environment.name!r} {where} failed: {type(exc).__name__}: {exc}"
        episode.record.error = message[:500]
        if where != "reset":  # after a failed reset the episode still takes its one agent turn
            episode.record.end = "error"
        logger.warning("%s (episode %d of the batch, turn %d); it ends with reward 0", message.splitlines()[0][:300],
                       episode.index, episode.record.turns)

    def _tokenize(self, text: str, prompt: bool) -> list[int]:
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if prompt and self.max_prompt_length is not None:
            ids = ids[-self.max_prompt_length :]
        if prompt and not ids:
            raise ValueError("an episode's first observation renders to no tokens")
        return ids

    # ------------------------------------------------------------------ the batch

    def _assemble(self, running: list[_Running], rows: list[dict], g: int) -> RolloutBatch:
        b = len(running)
        p = max((len(e.prompt_ids) for e in running), default=1)
        t = max(max((len(e.completion_ids) for e in running), default=1), 1)
        pad = self.pad_token_id
        prompt_ids = torch.full((b, p), pad, dtype=torch.long)
        prompt_mask = torch.zeros((b, p), dtype=torch.long)
        completion_ids = torch.full((b, t), pad, dtype=torch.long)
        agent = torch.zeros((b, t), dtype=torch.long)
        attention = torch.zeros((b, t), dtype=torch.long)
        logprobs = torch.zeros((b, t), dtype=torch.float32)
        for r, e in enumerate(running):
            n, m = len(e.prompt_ids), len(e.completion_ids)
            prompt_ids[r, p - n :] = torch.tensor(e.prompt_ids, dtype=torch.long)
            prompt_mask[r, p - n :] = 1
            if m:
                completion_ids[r, :m] = torch.tensor(e.completion_ids, dtype=torch.long)
                agent[r, :m] = torch.tensor(e.agent_mask, dtype=torch.long)
                attention[r, :m] = 1
                logprobs[r, :m] = torch.tensor(e.logprobs, dtype=torch.float32)
        device = getattr(self.engine, "device", torch.device("cpu"))
        return RolloutBatch(
            prompt_ids=prompt_ids.to(device),
            prompt_mask=prompt_mask.to(device),
            completion_ids=completion_ids.to(device),
            completion_mask=agent.to(device),
            truncated=torch.tensor([e.record.truncated for e in running], dtype=torch.bool, device=device),
            group_ids=torch.arange(len(rows), device=device).repeat_interleave(g),
            prompts=[self.tokenizer.decode(e.prompt_ids, skip_special_tokens=False) for e in running],
            completions=[e.last_message for e in running],
            behavior_logprobs=logprobs.to(device) * agent.to(device) if self.provides_behavior_logprobs else None,
            completion_attention_mask=attention.to(device),
            episodes=[e.record for e in running],
        )


def episode_engine(engine: RolloutEngine, tokenizer: Any, environment: str, options: dict[str, Any],
                   limits: EpisodeLimits, chat_template: bool = True, system_prompt: str | None = None,
                   config_dir: Any = None) -> EpisodeEngine:
    """`engine` running episodes of `environment` (a registry name or module:Class, called with
    `options`; ValueError in one line for a bad name or option): what the trainer and `ticgrpo eval` use."""
    return EpisodeEngine(engine, tokenizer, EnvironmentFactory(environment, options, config_dir), limits,
                         chat_template, system_prompt)


def episode_metrics(episodes: list[Episode]) -> dict[str, float]:
    """Per-step episode metrics (means over the batch's episodes)."""
    n = max(len(episodes), 1)
    mean = lambda values: float(sum(values)) / n
    return {
        "episode/turns_mean": mean(e.turns for e in episodes),
        "episode/tool_calls_mean": mean(e.tool_calls for e in episodes),
        "episode/tool_errors_mean": mean(e.tool_errors for e in episodes),
        "episode/tool_call_rate": mean(e.tool_calls > 0 for e in episodes),
        "episode/agent_tokens_mean": mean(e.agent_tokens for e in episodes),
        "episode/environment_tokens_mean": mean(e.environment_tokens for e in episodes),
        "episode/errors": float(sum(e.error is not None for e in episodes)),
        **{f"episode/end_{reason}_frac": mean(e.end == reason for e in episodes) for reason in END_REASONS},
    }
