"""Evaluating a model on `EvalRow`s: generate, extract and judge answers, then summarise.

    records = generate_and_judge(engine, rows, prompt_texts, settings)   # one `ProblemRecord` per row
    summary = summarize(records, settings)                               # metrics, intervals, baseline

Per problem: one greedy completion (unless ``settings.greedy`` is off) and n = max(ks) sampled
completions at ``settings.temperature``. A `Judge` gives each completion its verdict. The default,
`answer_judge`, extracts the final answer with `ticgrpo.rewards.math.extract_final_answer` (the
text after the last 'Answer:', else the last \\boxed{}, else the last number) and calls it correct
when `answers_match` says it equals the gold answer (exact for numbers, math-verify otherwise):
the judgement of the `math_correctness` reward. The in-training evaluation passes a judge that
scores with the run's eval reward instead (`ticgrpo.train.evaluate`), with the same generation,
metrics and files, so `ticgrpo eval` on a checkpoint reproduces the trainer's numbers.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ticgrpo.eval.datasets import EvalRow, canonical_answer
from ticgrpo.eval.metrics import Outcomes, interval, metric_names
from ticgrpo.rollout.base import RolloutBatch, RolloutEngine, SamplingParams

TOP_ANSWERS = 5


@dataclass(frozen=True)
class EvalSettings:
    """ks: the k of the @k metrics (n = max(ks) samples per problem); temperature, top_p: of the
    samples; greedy: also decode one greedy completion per problem; batch_size: prompts per
    generate() call; seed: torch's seed before generating (and the bootstrap's)."""

    ks: tuple[int, ...] = (1,)
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 96
    greedy: bool = True
    batch_size: int = 16
    seed: int = 0

    @property
    def num_samples(self) -> int:
        return max(self.ks) if self.ks else 0

    def check(self) -> None:
        if any(k < 1 for k in self.ks):
            raise ValueError(f"--k: every k must be >= 1, got {list(self.ks)}")
        if not self.greedy and not self.ks:
            raise ValueError("nothing to evaluate: greedy decoding is off and no k was given; pass --k or --greedy")
        if self.temperature <= 0:
            raise ValueError(f"--temperature must be > 0 (greedy accuracy is reported separately), got "
                             f"{self.temperature}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("--max-new-tokens and --batch-size must be >= 1")


@dataclass(frozen=True)
class Verdict:
    """A judged completion: its extracted final answer (canonical form; None = none found), whether
    it is correct, and the reward that decided it (None when a judge compares answers only)."""

    answer: str | None
    correct: bool
    reward: float | None = None


# judge(batch, rows, per_prompt) → one Verdict per completion of `batch` (prompt-major: the
# per_prompt completions of rows[0] first)
Judge = Callable[[RolloutBatch, Sequence[EvalRow], int], list[Verdict]]


@dataclass(frozen=True)
class EpisodeSummary:
    """What a multi-turn completion did: agent turns, tool calls and errors, how it ended, and its
    transcript (the environment's first observation, then every assistant and environment message)."""

    turns: int
    tool_calls: int
    tool_errors: int
    end: str
    messages: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class Completion:
    text: str
    answer: str | None  # the extracted final answer, canonical form; None = none found
    correct: bool
    length: int
    truncated: bool
    reward: float | None = None
    episode: EpisodeSummary | None = None  # multi-turn episodes only (rollout.environment)


@dataclass(frozen=True)
class ProblemRecord:
    id: str
    prompt: str | list[dict]
    gold: str | None  # None: the row has no gold answer (a reward-judged task without one)
    greedy: Completion | None
    samples: list[Completion] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def final_answer(text: str) -> str | None:
    """The canonical extracted final answer of a completion (None when it has none)."""
    from ticgrpo.rewards.math import extract_final_answer

    return canonical_answer(extract_final_answer(text))


def answer_judge(batch: RolloutBatch, rows: Sequence[EvalRow], per_prompt: int) -> list[Verdict]:
    """Correct when the extracted final answer equals the row's gold answer (`answers_match`)."""
    from ticgrpo.rewards.math import answers_match, extract_final_answer

    verdicts = []
    for index, text in enumerate(batch.completions):
        gold = rows[index // per_prompt].gold
        if gold is None:
            raise ValueError(f"row {rows[index // per_prompt].id!r} has no gold answer to compare with")
        extracted = extract_final_answer(text)
        verdicts.append(Verdict(canonical_answer(extracted), answers_match(extracted, gold)))
    return verdicts


def _completions(batch: RolloutBatch, rows: Sequence[EvalRow], per_prompt: int,
                 judge: Judge) -> list[list[Completion]]:
    """The batch's completions, judged, grouped by prompt (rows are prompt-major)."""
    lengths, truncated = batch.completion_lengths.tolist(), batch.truncated.tolist()
    verdicts = judge(batch, rows, per_prompt)
    episodes: list[EpisodeSummary | None] = [None] * len(verdicts)
    if batch.episodes is not None:
        episodes = [EpisodeSummary(e.turns, e.tool_calls, e.tool_errors, str(e.end), list(e.messages))
                    for e in batch.episodes]
    grouped: list[list[Completion]] = [[] for _ in rows]
    for index, (text, verdict) in enumerate(zip(batch.completions, verdicts, strict=True)):
        grouped[index // per_prompt].append(Completion(text, verdict.answer, verdict.correct, int(lengths[index]),
                                                       bool(truncated[index]), verdict.reward, episodes[index]))
    return grouped


def episode_summary(completions: Sequence[Completion]) -> dict[str, float] | None:
    """Means over multi-turn completions: tool_call_rate (with >= 1 call), tool_calls_mean,
    tool_errors_mean, turns_mean; None when none of them is an episode."""
    episodes = [c.episode for c in completions if c.episode is not None]
    if not episodes:
        return None
    n = len(episodes)
    return {"tool_call_rate": sum(e.tool_calls > 0 for e in episodes) / n,
            "tool_calls_mean": sum(e.tool_calls for e in episodes) / n,
            "tool_errors_mean": sum(e.tool_errors for e in episodes) / n,
            "turns_mean": sum(e.turns for e in episodes) / n}


def generate_and_judge(engine: RolloutEngine, rows: Sequence[EvalRow], prompt_texts: Sequence[str],
                       settings: EvalSettings, judge: Judge = answer_judge,
                       progress: bool = False) -> list[ProblemRecord]:
    """One `ProblemRecord` per row (`answer_judge` needs a gold answer in every row: the CLI
    leaves out, and counts, the rows whose gold answer could not be parsed). Runs under a forked
    torch RNG seeded with ``settings.seed``, so the samples depend only on the seed (and the
    batch size) and the caller's RNG is untouched."""
    from tqdm.auto import tqdm

    kept = list(zip(rows, prompt_texts, strict=True))
    n = settings.num_samples
    records: list[ProblemRecord] = []
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices), tqdm(total=len(kept), desc="eval", unit="problem",
                                                      disable=not progress) as bar:
        torch.manual_seed(settings.seed)
        for start in range(0, len(kept), settings.batch_size):
            chunk = kept[start : start + settings.batch_size]
            texts, chunk_rows = [text for _, text in chunk], [row for row, _ in chunk]
            dataset_rows = [row.record if row.record is not None else {"prompt": row.prompt} for row in chunk_rows]
            greedy: list[list[Completion]] = [[] for _ in chunk]
            if settings.greedy:
                params = SamplingParams(max_new_tokens=settings.max_new_tokens, greedy=True)
                greedy = _completions(engine.generate_for(dataset_rows, texts, 1, params), chunk_rows, 1, judge)
            sampled: list[list[Completion]] = [[] for _ in chunk]
            if n > 0:
                params = SamplingParams(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                        top_p=settings.top_p)
                sampled = _completions(engine.generate_for(dataset_rows, texts, n, params), chunk_rows, n, judge)
            for (row, text), first, samples in zip(chunk, greedy, sampled, strict=True):
                records.append(ProblemRecord(row.id, text, row.gold, first[0] if first else None, samples))
            bar.update(len(chunk))
    return records


def outcomes(records: Sequence[ProblemRecord], num_samples: int) -> Outcomes:
    """The metrics' view of the records."""
    def greedy_column(record: ProblemRecord, attribute: str) -> float:
        return math.nan if record.greedy is None else float(getattr(record.greedy, attribute))

    return Outcomes(
        greedy_correct=np.array([bool(r.greedy and r.greedy.correct) for r in records], dtype=bool),
        sampled_correct=np.array([[s.correct for s in r.samples] for r in records], dtype=bool).reshape(
            len(records), num_samples),
        sampled_answers=[[s.answer for s in r.samples] for r in records],
        lengths=np.array([[greedy_column(r, "length"), *(s.length for s in r.samples)] for r in records],
                         dtype=float).reshape(len(records), 1 + num_samples),
        truncated=np.array([[greedy_column(r, "truncated"), *(s.truncated for s in r.samples)] for r in records],
                           dtype=float).reshape(len(records), 1 + num_samples),
    )


def constant_baseline(golds: Sequence[str | None]) -> tuple[str | None, float]:
    """(the most common gold answer, the fraction of problems it answers): the score of a model
    that always gives that one answer, whatever the metric (it never varies across samples). A
    tie goes to the answer met first. Problems without a gold answer (None) are left out; with
    none left the baseline is (None, NaN)."""
    golds = [g for g in golds if g is not None]
    if not golds:
        return None, math.nan
    counts = Counter(golds)
    best = max(counts.values())
    answer = next(g for g in golds if counts[g] == best)
    return answer, best / len(golds)


def answer_distribution(answers: Sequence[str | None], top: int = TOP_ANSWERS) -> list[tuple[str, int]]:
    """The `top` most common extracted answers with their counts ("(none)" = nothing extracted),
    ties in order of first appearance."""
    counts = Counter("(none)" if a is None else a for a in answers)
    return counts.most_common(top)


def summarize(records: Sequence[ProblemRecord], settings: EvalSettings, skipped: Sequence[str] = ()) -> dict:
    """eval.json's content: every metric with its 95% interval (and, for accuracies, the constant
    baseline and whether the metric is at or below it), the answer distributions, and the ids of
    the rows skipped because their gold answer could not be parsed."""
    if not records:
        raise ValueError(f"no problem to evaluate: all {len(skipped)} rows lack a parseable gold answer"
                         if skipped else "no problem to evaluate: the dataset is empty")
    n = settings.num_samples
    view = outcomes(records, n)
    base_answer, base_score = constant_baseline([r.gold for r in records])
    metrics: dict[str, dict[str, Any]] = {}
    for spec, k in metric_names(settings.ks, n):
        if spec.name == "greedy_accuracy" and not settings.greedy:
            continue
        scores = spec.fn(view, k)
        value = float(np.nanmean(scores))
        low, high = interval(scores, spec.interval, settings.seed)
        entry: dict[str, Any] = {"value": value, "low": low, "high": high, "interval": spec.interval,
                                 "unit": spec.unit}
        if spec.accuracy:
            entry.update(baseline=base_score, at_or_below_baseline=bool(value <= base_score))
        metrics[spec.reported_name(k)] = entry
    greedy_answers = [r.greedy.answer for r in records if r.greedy is not None]
    sampled_answers = [s.answer for r in records for s in r.samples]
    episodes = {kind: summary for kind, summary in (
        ("greedy", episode_summary([r.greedy for r in records if r.greedy is not None])),
        ("samples", episode_summary([s for r in records for s in r.samples]))) if summary is not None}
    return {
        "num_problems": len(records),
        "num_samples": n,
        "skipped_unparsed_gold": len(skipped),
        "skipped_ids": list(skipped)[:20],
        "metrics": metrics,
        "constant_baseline": {"answer": base_answer, "score": base_score},
        "answers": {
            "gold": answer_distribution([r.gold for r in records if r.gold is not None]),
            "greedy": answer_distribution(greedy_answers) if greedy_answers else [],
            "samples": answer_distribution(sampled_answers) if sampled_answers else [],
        },
        **({"episodes": episodes} if episodes else {}),
    }


def format_table(summary: dict) -> str:
    """The printed report: one line per metric (value, interval, baseline, a flag when at or below
    it), then the constant baseline and the answer distributions."""
    lines = [f"{'metric':<18}{'value':>8}  {'95% interval':<17}{'baseline':>9}"]
    for name, m in summary["metrics"].items():
        scale = 100.0 if m["unit"] == "rate" else 1.0  # rates in points, lengths in tokens
        span = f"[{m['low'] * scale:.1f}, {m['high'] * scale:.1f}]"
        baseline = f"{m['baseline'] * 100:>9.1f}" if "baseline" in m else " " * 9
        flag = "  <= constant baseline" if m.get("at_or_below_baseline") else ""
        lines.append(f"{name:<18}{m['value'] * scale:>8.1f}  {span:<17}{baseline}{flag}")
    base = summary["constant_baseline"]
    if base["answer"] is None:
        lines.append("constant baseline: none (no problem has a gold answer; rates in points, lengths in tokens)")
    else:
        lines.append(f"constant baseline: always answering {base['answer']!r} scores {base['score'] * 100:.1f} "
                     f"(rates in points, lengths in tokens)")
    for kind in ("gold", "greedy", "samples"):
        if summary["answers"][kind]:
            shown = ", ".join(f"{answer!r}×{count}" for answer, count in summary["answers"][kind])
            lines.append(f"answers ({kind}): {shown}")
    for kind, values in summary.get("episodes", {}).items():
        lines.append(f"episodes ({kind}): tool-call rate {values['tool_call_rate'] * 100:.1f}, "
                     f"{values['tool_calls_mean']:.2f} calls, {values['tool_errors_mean']:.2f} tool errors and "
                     f"{values['turns_mean']:.2f} turns per episode")
    skipped = summary["skipped_unparsed_gold"]
    lines.append(f"{summary['num_problems']} problems, {summary['num_samples']} samples each"
                 + (f"; {skipped} rows skipped: their gold answer cannot be parsed "
                    f"(ids: {', '.join(summary['skipped_ids'][:5])})" if skipped else ""))
    return "\n".join(lines)
