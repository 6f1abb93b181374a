"""Every metric the trainer logs, declared once: its name, how it is reduced, what it means.

    spec = metric_spec("ratio_min")        # MetricSpec("ratio_min", Reduction.MIN, "...")
    reduce_values("ratio_min", [0.9, 0.8])  # 0.8

A reduction combines the values of one metric inside a training step: over the micro-batches
of the optimizer steps (`ticgrpo.train.step.reduce_metrics`) and over the processes of a
data-parallel job (`ticgrpo.train.distributed.Distributed.reduce_metrics`); the report reads
the same declarations. A metric that takes a name (a reward function's, a timed stage's) is
declared once as a family, e.g. ``reward/{reward}_mean``. The step metrics go to
metrics.jsonl, the held-out evaluation's to eval.jsonl (`EVAL_METRICS`).

ticgrpo's own objectives declare every metric they log here (tests/test_trainer.py runs every
registered objective and fails on an undeclared name); a user's objective need not: an
undeclared name is reduced by its suffix (`*_min` min, `*_max` max, else mean).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType


class Reduction(str, Enum):
    MEAN = "mean"
    MIN = "min"
    MAX = "max"
    SUM = "sum"
    LAST = "last"  # the same on every process and micro-batch by construction

    def apply(self, values: Sequence[float]) -> float:
        if self is Reduction.MIN:
            return min(values)
        if self is Reduction.MAX:
            return max(values)
        if self is Reduction.SUM:
            return float(sum(values))
        if self is Reduction.LAST:
            return values[-1]
        return sum(values) / len(values)


@dataclass(frozen=True)
class MetricSpec:
    name: str  # a metric name, or a family with one {placeholder}
    reduction: Reduction
    description: str


class UndeclaredMetricError(KeyError):
    """A metric name that this module does not declare."""

    def __str__(self) -> str:
        return (f"metric {self.args[0]!r} is not declared; add it (name, reduction, description) to "
                f"ticgrpo/train/metrics.py")


M, MIN, MAX, SUM, LAST = Reduction.MEAN, Reduction.MIN, Reduction.MAX, Reduction.SUM, Reduction.LAST

_STEP: tuple[tuple[str, Reduction, str], ...] = (
    # the rollout batch (ticgrpo.train.logging.step_metrics)
    ("reward_mean", M, "mean total (weighted) reward of the batch's completions"),
    ("reward_std", M, "standard deviation of the total reward over the batch"),
    ("reward/{reward}_mean", M, "mean raw value of one reward function"),
    ("reward/{reward}_std", M, "standard deviation of one reward function's raw values"),
    ("advantage_mean", M, "mean advantage over the batch's completions"),
    ("advantage_std", M, "standard deviation of the advantages"),
    ("frac_zero_std", M, "fraction of groups whose rewards are all equal (no learning signal)"),
    ("completion_length_mean", M, "mean completion length in tokens"),
    ("completion_length_max", MAX, "longest completion in tokens"),
    ("truncated_frac", M, "fraction of completions cut at rollout.max_new_tokens"),
    ("num_sequences", SUM, "completions trained on this step"),
    # sampling strategies (ticgrpo.train.sampling, ticgrpo.train.drafts)
    ("sampling_rounds", M, "dynamic sampling: rounds of sampling this process used"),
    ("groups_kept", SUM, "dynamic sampling: groups with differing rewards kept for the update"),
    ("groups_generated", SUM, "dynamic sampling: groups sampled, kept or not"),
    ("draft_reward_mean", M, "iGRPO: mean reward of the drafts"),
    ("draft_best_reward_mean", M, "iGRPO: mean over prompts of the best draft's reward"),
    ("reward_errors", SUM, "reward failures zeroed or skipped (algorithm.on_reward_error)"),
    # the optimisation step (ticgrpo.train.step, ticgrpo.train.inner_loop)
    ("loss", M, "mean loss over the optimizer steps"),
    ("grad_norm", M, "mean gradient norm before clipping over the optimizer steps"),
    ("grad_norm_max", MAX, "largest gradient norm before clipping"),
    ("optimizer_steps", LAST, "optimizer steps taken on the batch (μ·M unless ESPO stopped early)"),
    ("skipped_nonfinite", LAST, "optimizer steps skipped for a non-finite loss or gradient"),
    ("entropy", M, "mean token entropy of the policy on the sampled tokens (algorithm.log_entropy)"),
    ("espo_stopped_at", LAST, "ESPO: optimizer steps taken before the inner epochs stopped (μ·M: never)"),
    ("espo_deviation_max", MAX, "ESPO: largest mean |ρ−1| of a minibatch"),
    ("lr", LAST, "learning rate of the step"),
    ("rollout_tokens_per_s", SUM, "completion tokens sampled per second of rollout"),
    ("train_tokens_per_s", SUM, "tokens forwarded and backpropagated per second of training"),
    ("time_{stage}", M, "seconds spent in one stage of the step (rollout, reward, drafts, old_logprobs, "
                        "forward_backward, optimizer, train, step; lag: sampler_logprobs; async: rollout is the "
                        "producer's sampling, rollout_wait the trainer's wait for it, weight_push the previous "
                        "step's push)"),
    # the objectives (ticgrpo.core.objectives), reduced over micro-batches and processes
    ("kl", M, "mean per-token KL estimate to the reference policy (β > 0)"),
    ("ratio_mean", M, "mean token ratio ρ = π_θ/π_old"),
    ("ratio_min", MIN, "smallest token ratio ρ"),
    ("ratio_max", MAX, "largest token ratio ρ"),
    ("log_ratio_mean", M, "mean (sequence) log-ratio log π_θ/π_old"),
    ("log_ratio_min", MIN, "smallest (sequence) log-ratio"),
    ("log_ratio_max", MAX, "largest (sequence) log-ratio"),
    ("log_w_mean", M, "tic_grpo: mean log trajectory weight log w"),
    ("log_w_min", MIN, "tic_grpo: smallest log trajectory weight"),
    ("log_w_max", MAX, "tic_grpo: largest log trajectory weight"),
    ("clip_frac_low", M, "fraction of tokens (sequences) clipped below 1 − ε_low"),
    ("clip_frac_high", M, "fraction of tokens (sequences) clipped above 1 + ε_high"),
    ("clamped_log_ratio_frac", M, "tic_grpo: fraction of log-ratios clamped for numerical safety"),
    ("is_clip_frac", M, "dppo: fraction of importance weights clipped"),
    ("masked_frac", M, "dppo: fraction of tokens masked out by the trust region"),
    ("binary_kl_mean", M, "dppo_kl: mean binary KL between old and new token probabilities"),
    ("tv_mean", M, "dppo_tv: mean total-variation distance between old and new token probabilities"),
    ("conflict_frac", M, "gtpo: fraction of tokens shared by completions of opposite advantage"),
    ("entropy_filtered_frac", M, "gtpo: fraction of tokens filtered out by the entropy threshold"),
    ("entropy_mean", M, "gtpo: mean token entropy the objective read"),
    ("relative_ratio_mean", M, "ppo_rpe: mean relative density ratio r = π_θ/(b π_θ + (1−b) π_old)"),
    ("relative_ratio_min", MIN, "ppo_rpe: smallest relative density ratio r"),
    ("relative_ratio_max", MAX, "ppo_rpe: largest relative density ratio r (at most 1/b)"),
    ("rpe_mean", M, "ppo_rpe: mean per-token relative Pearson term ½(r − 1)²"),
    ("nthr_downweighted_frac", M, "nthr: fraction of tokens whose negative penalty was scaled down (hidden state "
     "near a correct completion's)"),
    ("nthr_similarity_mean", M, "nthr: mean max cosine similarity of negative tokens' hidden states to the group's "
     "correct tokens"),
    # an inference engine's log-probs μ against the trainer's under the same weights (ticgrpo.train.offpolicy)
    ("mismatch/kl_k3", M, "k3 estimate of KL(μ ‖ π_trainer) per token between engine and trainer"),
    ("mismatch/abs_diff_mean", M, "mean |ℓ^trainer − ℓ^μ| over tokens"),
    ("mismatch/abs_diff_max", MAX, "largest |ℓ^trainer − ℓ^μ|"),
    # stale samples (ticgrpo.train.sources, ticgrpo.train.offpolicy; docs/offpolicy.md)
    ("staleness_mean", M, "mean staleness of the batch's rows: this step minus the policy version that sampled them"),
    ("staleness_max", MAX, "largest staleness of a row of the batch"),
    ("staleness/hist_{k}", SUM, "rows of the batch sampled exactly k policy versions ago"),
    ("stale_dropped", SUM, "samples dropped because they were older than rollout.max_staleness (or drop_stale)"),
    ("queue_depth", M, "async: batches waiting in the producer's queue when the trainer took one"),
    # multi-turn episodes (rollout.environment; ticgrpo.rollout.episodes)
    ("episode/turns_mean", M, "mean agent turns per episode"),
    ("episode/tool_calls_mean", M, "mean tool calls per episode (as the environment counts them)"),
    ("episode/tool_errors_mean", M, "mean failed tool calls per episode"),
    ("episode/tool_call_rate", M, "fraction of episodes with at least one tool call"),
    ("episode/agent_tokens_mean", M, "mean agent (policy-sampled) tokens per episode: the |o| of every objective"),
    ("episode/environment_tokens_mean", M, "mean environment tokens per episode (in the context, never in a loss)"),
    ("episode/errors", SUM, "episodes whose environment raised or returned something malformed (scored 0)"),
    ("episode/end_{reason}_frac", M, "fraction of episodes that ended so: done, turn_truncated, max_turns, "
                                     "token_budget, error"),
    # trajectory reuse (algorithm.reuse_window; ticgrpo.train.reuse)
    ("reuse/window", M, "rollout batches in this step's pool (policy versions; at most algorithm.reuse_window)"),
    ("reuse/ess", M, "effective sample size (Σw)²/(n·Σw²) of the pool's balance-heuristic weights P_θ(o)/q(o) at "
                     "the current weights, in [0, 1]"),
    ("reuse/weight_max", MAX, "largest balance-heuristic weight P_θ(o)/q(o) of the pool at the current weights"),
    ("reuse/fresh_reward_mean", M, "mean reward of this step's new batch (reward_mean is the whole pool's)"),
    ("offpolicy/ess", M, "effective sample size of the correction weights, (Σw)²/(n·Σw²), in [0, 1] (1: no "
                         "weights or equal weights; 0: every weight 0) (algorithm.offpolicy_correction)"),
    ("offpolicy/weight_mean", M, "mean correction weight that multiplied the advantages (after truncation or "
                                 "masking; per sequence for a sequence-advantage objective)"),
    ("offpolicy/ratio_min", MIN, "smallest raw importance ratio π_prox/μ before truncation or masking"),
    ("offpolicy/ratio_max", MAX, "largest raw importance ratio π_prox/μ before truncation or masking"),
    ("offpolicy/truncated_frac", M, "fraction of weights truncated at the cap (token_tis, sequence_tis)"),
    ("offpolicy/masked_frac", M, "fraction of tokens or sequences the correction zeroed (masks, drop_stale)"),
    ("offpolicy/kl_k3", M, "k3 estimate of KL(μ ‖ π_prox) per token between the sampling distribution and the "
                           "current weights"),
)

_EVAL: tuple[tuple[str, Reduction, str], ...] = (
    ("accuracy", M, "fraction of greedy completions with eval reward >= eval.correct_threshold"),
    ("reward_mean", M, "mean eval reward of the greedy completions"),
    ("completion_length_mean", M, "mean greedy completion length in tokens"),
    ("truncated_frac", M, "fraction of greedy completions cut at the token limit"),
    ("num_examples", SUM, "held-out prompts evaluated"),
    ("constant_baseline", M, "the score of always giving the most common gold answer (compare accuracy with it)"),
    ("pass@{k}", M, "unbiased pass@k, 1 − C(n−c, k)/C(n, k) from n = max(eval.ks) samples (eval.metrics)"),
    ("maj@{k}", M, "majority vote over the extracted answers of k samples is correct (eval.metrics)"),
    ("avg@{k}", M, "mean correctness of k samples per prompt; the former mean@k (eval.metrics)"),
    ("greedy_accuracy", M, "the same as accuracy, under the eval registry's name (eval.metrics)"),
    ("mean_length", M, "mean length of the greedy and sampled completions, in tokens (eval.metrics)"),
    ("truncation_rate", M, "fraction of the greedy and sampled completions cut at the token limit (eval.metrics)"),
)


def _table(rows: tuple[tuple[str, Reduction, str], ...]) -> Mapping[str, MetricSpec]:
    return MappingProxyType({name: MetricSpec(name, reduction, text) for name, reduction, text in rows})


METRICS: Mapping[str, MetricSpec] = _table(_STEP)  # metrics.jsonl: one record per training step
EVAL_METRICS: Mapping[str, MetricSpec] = _table(_EVAL)  # eval.jsonl (ticgrpo.train.evaluate.eval_log_record)


def _family_pattern(name: str) -> re.Pattern[str]:
    head, _, rest = name.partition("{")
    tail = rest.partition("}")[2]
    return re.compile(f"{re.escape(head)}.+{re.escape(tail)}")


_FAMILIES = {
    id(table): [(_family_pattern(name), spec) for name, spec in table.items() if "{" in name]
    for table in (METRICS, EVAL_METRICS)
}


def declared_spec(name: str, table: Mapping[str, MetricSpec] = METRICS) -> MetricSpec:
    """The declaration of metric `name` (an exact name first, then a family); UndeclaredMetricError if none."""
    spec = table.get(name)
    if spec is not None:
        return spec
    for pattern, family in _FAMILIES[id(table)]:
        if pattern.fullmatch(name):
            return family
    raise UndeclaredMetricError(name)


def metric_spec(name: str, table: Mapping[str, MetricSpec] = METRICS) -> MetricSpec:
    """The declaration of `name`, or for a name ticgrpo does not declare (a user's own objective's
    metric) a default: min for `*_min`, max for `*_max`, else the mean. Training never stops on
    an undeclared name; the built-in ones are all declared (tests/test_trainer.py checks it)."""
    try:
        return declared_spec(name, table)
    except UndeclaredMetricError:
        reduction = MIN if name.endswith("_min") else MAX if name.endswith("_max") else M
        return MetricSpec(name, reduction, "(not declared in ticgrpo.train.metrics)")


def is_declared(name: str, table: Mapping[str, MetricSpec] = METRICS) -> bool:
    try:
        declared_spec(name, table)
    except UndeclaredMetricError:
        return False
    return True


def reduce_values(name: str, values: Sequence[float]) -> float:
    """The values of metric `name` (micro-batches or processes) reduced as it is declared."""
    return metric_spec(name).reduction.apply(values)


__all__ = [
    "EVAL_METRICS", "METRICS", "MetricSpec", "Reduction", "UndeclaredMetricError", "declared_spec", "is_declared",
    "metric_spec",
    "reduce_values",
]
