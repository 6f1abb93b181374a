"""`python_tool`: the agent may run Python in the sandbox before it answers.

Each agent message is searched for tool calls, in either of two forms:

* a fenced block tagged ``python`` / ``py`` / ``python3`` (a block left open at the end of the
  message counts: the turn ended at EOS before its closing fence);
* ``<tool_call>{"name": "python", "arguments": {"code": "..."}}</tool_call>`` (the JSON
  tool-call form of Hermes/Qwen-style chat templates; ``arguments`` may be a JSON string).

The first ``max_calls_per_turn`` calls run, each as a fresh process in
`ticgrpo.rewards.sandbox` (resource limits, timeout, isolation as strong as the machine allows),
and each call's stdout comes back as one ``tool`` message (or ``error: ...`` with the tail of
its traceback, a timeout or a limit it hit). A message without a tool call is the final
answer: the episode ends, and the run's rewards score that message. What the code does never
raises here: a hostile or broken call is a tool error, shown to the agent, and the episode goes on.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from ticgrpo.rewards.sandbox import ExecResult, Sandbox, default_sandbox
from ticgrpo.rollout.environments.protocol import Environment, Message, StepResult, register_environment

SYSTEM_PROMPT = (
    "You can run Python. To compute something, reply with only a ```python code block that prints "
    "the result; you will see its output. When you know the answer, reply without code and end "
    "with 'Answer: <number>'."
)

# Two worked exchanges shown before the question (option `example`). A small instruct model
# imitates the nearest assistant turn: after one exchange that is the answer turn, so it answers
# without calling the tool; after two it opens with a code block. An answer turn that only reads
# the output back ("Answer: N", not a recomputation) makes it answer with the tool's output. The
# first observation of `ticgrpo train --config configs/agentic_python_tool.yaml` (eval at step 0)
# measures the tool-call rate this gives. The problems are outside every built-in task (those
# use at most 12 per box and 9 boxes), so they cannot leak an answer.
EXAMPLE: tuple[Message, ...] = (
    {"role": "user", "content": "Ann buys 13 boxes of pens with 24 pens in each box, and already had 5 pens. "
                                "How many pens does Ann have now? End with 'Answer: <number>'."},
    {"role": "assistant", "content": "```python\nprint(13 * 24 + 5)\n```"},
    {"role": "tool", "content": "317"},
    {"role": "assistant", "content": "Answer: 317"},
    {"role": "user", "content": "Ben has 14 bags with 25 cards in each bag and gives away 36 cards. "
                                "How many cards are left? End with 'Answer: <number>'."},
    {"role": "assistant", "content": "```python\nprint(14 * 25 - 36)\n```"},
    {"role": "tool", "content": "314"},
    {"role": "assistant", "content": "Answer: 314"},
)

# The tool as a chat template's `tools=` sees it (a template with a tool format, e.g. Qwen's,
# describes it in that format and has the model answer with <tool_call> JSON).
PYTHON_TOOL_SCHEMA = {
    "type": "function",
    "function": {
        "name": "python",
        "description": "Run Python code in a sandbox and return what it prints.",
        "parameters": {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "the program; print the result"}},
            "required": ["code"],
        },
    },
}

_FENCED = re.compile(r"```(?:python3?|py)[ \t]*\n(.*?)(?:```|\Z)", flags=re.S | re.I)
_TOOL_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", flags=re.S)
_ERROR_LINES = 3


@register_environment("python_tool", "run ```python blocks or <tool_call> calls in the sandbox; "
                                     "a reply without a call is the answer")
class PythonToolEnvironment(Environment):
    """Options: `timeout_s`, `memory_mb` (per call), `max_output_chars` (of each tool message),
    `max_calls_per_turn`, `sandbox_require` (the weakest isolation accepted: none | unshare |
    bwrap), `system_prompt` ("" for none), `example` (show two worked tool exchanges first),
    `tool_role` (the role of tool messages: "tool", or "user" for templates without one),
    `template_tools` (pass the tool's schema to the chat template, for templates with a tool format)."""

    def __init__(self, timeout_s: float = 5.0, memory_mb: int = 256, max_output_chars: int = 600,
                 max_calls_per_turn: int = 1, sandbox_require: str = "none", system_prompt: str = SYSTEM_PROMPT,
                 example: bool = True, tool_role: str = "tool", template_tools: bool = True) -> None:
        if not (isinstance(timeout_s, int | float) and 0 < timeout_s <= 300):
            raise ValueError(f"python_tool timeout_s must be in (0, 300] seconds, got {timeout_s!r}")
        if not (isinstance(memory_mb, int) and memory_mb >= 32):
            raise ValueError(f"python_tool memory_mb must be an integer >= 32, got {memory_mb!r}")
        if not (isinstance(max_output_chars, int) and max_output_chars >= 1):
            raise ValueError(f"python_tool max_output_chars must be an integer >= 1, got {max_output_chars!r}")
        if not (isinstance(max_calls_per_turn, int) and max_calls_per_turn >= 1):
            raise ValueError(f"python_tool max_calls_per_turn must be an integer >= 1, got {max_calls_per_turn!r}")
        if tool_role not in ("tool", "user"):
            raise ValueError(f"python_tool tool_role must be 'tool' or 'user', got {tool_role!r}")
        self.max_output_chars, self.max_calls_per_turn = max_output_chars, max_calls_per_turn
        self.system_prompt, self.example, self.tool_role = system_prompt, bool(example), tool_role
        self.tools = [PYTHON_TOOL_SCHEMA] if template_tools else None
        # Shared per set of limits: the isolation probe runs once per process, not per episode. The
        # CPU limit sits a second above the wall clock, so that a busy loop ends as a timeout (the
        # message the agent can act on), and only a multi-threaded program meets the CPU limit.
        self.sandbox: Sandbox = default_sandbox(require=sandbox_require, timeout_s=float(timeout_s),
                                                cpu_s=math.ceil(timeout_s) + 1, memory_mb=memory_mb)

    def reset(self, row: dict) -> list[Message]:
        messages: list[Message] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        if self.example:
            messages += [dict(m, role=self.tool_role) if m["role"] == "tool" else dict(m) for m in EXAMPLE]
        messages.append({"role": "user", "content": question_of(row)})
        return messages

    def step(self, assistant_message: str) -> StepResult:
        calls = tool_calls(assistant_message)
        if not calls:
            return StepResult(done=True)
        outputs = [self._run(code) for code in calls[: self.max_calls_per_turn]]
        observation = [{"role": self.tool_role, "content": text} for text, _ in outputs]
        return StepResult(observation=observation, tool_calls=len(outputs),
                          tool_errors=sum(failed for _, failed in outputs))

    def _run(self, code: str | None) -> tuple[str, bool]:
        """(what the agent reads back, whether the call failed)."""
        if code is None:
            return 'error: malformed tool call: expected {"name": "python", "arguments": {"code": "..."}}', True
        if not code.strip():
            return "error: the code block is empty", True
        result = self.sandbox.execute(code)
        return self._clip(tool_output(result, self.sandbox.limits.timeout_s)), result.status != "ok"

    def _clip(self, text: str) -> str:
        if len(text) <= self.max_output_chars:
            return text
        return text[: self.max_output_chars] + f"\n... ({len(text) - self.max_output_chars} more characters)"


def question_of(row: dict) -> str:
    """The row's question: its prompt if a string, else the content of its last user message."""
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        for message in reversed(prompt):
            if isinstance(message, dict) and message.get("role") == "user":
                return str(message.get("content", ""))
    raise ValueError(f"the row has no question: its 'prompt' must be a string or chat messages with a user "
                     f"message, got {type(prompt).__name__}")


def tool_calls(message: str) -> list[str | None]:
    """The code of each tool call in `message`, in order (None for a malformed <tool_call>)."""
    found: list[tuple[int, str | None]] = [(m.start(), m.group(1)) for m in _FENCED.finditer(message)]
    for m in _TOOL_CALL.finditer(message):
        found.append((m.start(), _tool_call_code(m.group(1))))
    return [code for _, code in sorted(found, key=lambda item: item[0])]


def _tool_call_code(payload: str) -> str | None:
    try:
        call: Any = json.loads(payload.strip())
        arguments = call.get("arguments", call.get("parameters"))
        if isinstance(arguments, str):
            arguments = json.loads(arguments)
        code = arguments.get("code")
    except (ValueError, AttributeError, TypeError):
        return None
    return code if isinstance(code, str) else None


def tool_output(result: ExecResult, timeout_s: float) -> str:
    """What the agent reads back from one execution."""
    if result.status == "ok":
        return result.stdout.rstrip() or "(no output: print the value to see it)"
    if result.status == "timeout":
        return f"error: timed out after {timeout_s:g} s"
    if result.status == "output_limit":
        return "error: the output exceeded the sandbox's limit"
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    if result.status == "error" and lines:
        return "error: " + "\n".join(lines[-_ERROR_LINES:])
    if result.status == "signal":
        return "error: killed by a signal (a CPU-time, memory, file-size or process limit)"
    return f"error: {result.status}" + (f" ({lines[-1][:200]})" if lines else "")
