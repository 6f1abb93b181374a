"""`ticgrpo lab checkpoint_lag`: claim 1 on a real model, from the checkpoints of a training run.

The paper's claim 1: GRPO's token ratio makes its update estimate the gradient at the policy that
sampled the batch (θ_old), not at the policy being updated; TIC-GRPO's trajectory ratio corrects
that. `ticgrpo lab lag` checks it exactly on enumerable policies; here it is measured on the
checkpoints θ_{t−k}, …, θ_t of a real run (`checkpoint.every_steps: 1`):

* One list of `groups` training prompts, the same at every policy version v ∈ {t} ∪ {t − k}.
  At each version, G completions per prompt are sampled from π_θv and scored by the run's rewards.
* **On-policy updates at θ_v** (from θ_v's own samples, every ratio 1): for each objective X, the
  per-group gradient of X's loss at θ_v; and the plain policy gradient (RLOO advantages, token sum,
  an unbiased estimate of ∇J(θ_v)).
* **Stale updates at θ_t** (from θ_{t−k}'s samples): the gradient at θ_t of X's loss with
  π_old = π_θ{t−k}, exactly the first optimizer step of a `rollout.lag: k` run with
  `offpolicy_correction: none` (tests/test_checkpoint_lag.py checks it against the trainer's
  `accumulate_gradients`).

Every gradient is taken over the parameters of the top `top_layers` transformer blocks only, so
backward stops there and one vector per group fits in memory; the direction is the gradient's
projection on those coordinates.

Expected directions are compared without the noise bias of sample means: for per-group vectors
a_i, b_j on the same prompt list, C(a, b) = Σ_{i≠j} a_i·b_j / (n(n−1)) is unbiased for
E[a]·E[b] (distinct prompts are independent draws), so ‖E a‖² is estimated without the
Σ‖a_i‖²/n² that noise adds. From C: the cosine of two expectations, the relative error
‖E a − E b‖/‖E b‖, and the position λ of the stale update along the segment from X's on-policy
update at θ_{t−k} (λ = 0) to X's on-policy update at θ_t (λ = 1):

    λ = (E s − E o)·(E c − E o) / ‖E c − E o‖²,   s stale, o on-policy at θ_{t−k}, c on-policy at θ_t.

Claim 1 says λ ≈ 0 for grpo; for tic_grpo λ ≈ 1 (up to its clip and its advantage's batch
statistics). Intervals: 95% percentile bootstrap over the prompts (one resample for every set, so
paired sets stay paired). Where ‖E c − E o‖² is not resolved (its interval reaches 0), the k steps
moved the target less than the noise can show and λ's interval says so by its width.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ticgrpo.config import load_config
from ticgrpo.config.algorithms import get_algorithm
from ticgrpo.core.advantages import compute_advantages
from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.objectives import OBJECTIVES, compute_loss
from ticgrpo.lab.options import option
from ticgrpo.lab.variants import Variant, variant_of
from ticgrpo.reports.io import write_json
from ticgrpo.reports.markdown import markdown_table
from ticgrpo.reports.plots import pyplot
from ticgrpo.rollout import HFGenerateEngine
from ticgrpo.rollout.base import SamplingParams
from ticgrpo.train.checkpoint import list_checkpoints, read_model_state
from ticgrpo.train.components import scorers, step_settings, training_rewards
from ticgrpo.train.prompts import PromptFormatter, load_rows
from ticgrpo.train.sampling import GroupSampler
from ticgrpo.train.setup import disable_dropout, load_model
from ticgrpo.train.step import StepSettings, TrainingBatch, policy_logprobs

# the unbiased ∇J(θ) estimate every update is also compared with: REINFORCE with a leave-one-out
# baseline over the group, token-sum log-likelihood, no ratio
POLICY_GRADIENT = Variant("policy_gradient", "no_is", {"aggregation": "seq-mean-token-sum"}, "rloo",
                          "unbiased ∇J: RLOO advantages, token sum")
_SAMPLING_SEED_OFFSET = 1_000_003  # each version's sampling stream: apart from the prompt draw


@dataclass
class CheckpointLagConfig:
    run: str = option("", "training run folder with checkpoints at steps t − k for every k and at t "
                          "(train with checkpoint.every_steps=1 and keep_last ≥ max(lags) + 1)")
    step: int = option(8, "t: the checkpoint whose weights θ_t take the update", minimum=1)
    lags: tuple[int, ...] = option((1, 2, 4, 8), "k: the stale batches are sampled by θ_{t−k}", minimum=1)
    objectives: tuple[str, ...] = option(("grpo", "tic_grpo", "no_is"), "algorithms whose update is measured")
    groups: int = option(48, "prompt groups per policy version (the same prompts at every version)", minimum=3)
    group_size: int = option(8, "G, completions per prompt", minimum=2)
    top_layers: int = option(1, "the gradients are over the top N transformer blocks' parameters", minimum=1)
    bootstrap: int = option(2000, "bootstrap resamples of the prompts", minimum=100)
    seed: int = option(0, "seed of the prompt draw and of the sampling")


def check_checkpoint_lag(config: CheckpointLagConfig) -> None:
    """One-line ValueError for what the flags' ranges cannot state."""
    if not config.run:
        raise ValueError("--run is required: a training run folder (train with --set checkpoint.every_steps=1)")
    run = Path(config.run)
    if not (run / "config.yaml").is_file():
        raise ValueError(f"--run {run}: no config.yaml there; give the folder of a `ticgrpo train` run")
    if max(config.lags) > config.step:
        raise ValueError(f"--lags {max(config.lags)} > --step {config.step}: θ_(t−k) must be a step of the run")
    for name in config.objectives:
        measured_variant(name)
    steps = available_steps(run)
    missing = sorted(v for v in set(versions(config)) if v > 0 and v not in steps)
    if missing:
        raise ValueError(f"--run {run} has no checkpoint for step(s) {', '.join(map(str, missing))} (it has "
                         f"{', '.join(map(str, sorted(steps))) or 'none'}): train with --set checkpoint.every_steps=1 "
                         f"--set checkpoint.keep_last={max(config.lags) + 1}")


def measured_variant(name: str) -> Variant:
    """The algorithm `name` as measured here: its objective and advantage, nothing the trainer adds."""
    algorithm = get_algorithm(name)  # unknown names: one line listing the choices
    if algorithm.trainer_mechanisms():
        raise ValueError(f"--objectives {name!r} uses trainer mechanisms ({', '.join(algorithm.trainer_mechanisms())}) "
                         f"that one update does not model")
    variant = variant_of(algorithm)
    spec = OBJECTIVES.spec(variant.objective)
    if spec.needs_entropies or spec.needs_hidden_states:
        raise ValueError(f"--objectives {name!r}: its objective reads entropies or hidden states, which this study "
                         f"does not compute")
    return variant


def versions(config: CheckpointLagConfig) -> list[int]:
    """The policy versions sampled: t first, then t − k for each k."""
    return [config.step, *(config.step - k for k in config.lags)]


def available_steps(run: Path) -> dict[int, Path]:
    return {int(p.name.split("-")[1]): p for p in list_checkpoints(run)}


# ---------------------------------------------------------------------- the statistics


def off_diagonal_mean(gram: Tensor, counts: Tensor) -> Tensor:
    """C(a, b) under each row of `counts` ([R, n] bootstrap multiplicities of the prompts):
    Σ_{i≠j} c_i c_j a_i·b_j / ((Σc)² − Σc²), with `gram`[i, j] = a_i·b_j. Pairs of copies of one
    prompt are excluded with the prompt's own pair, so a resample never pairs a group with itself."""
    quadratic = torch.einsum("ri,ij,rj->r", counts, gram, counts)
    own = (counts**2) @ torch.diagonal(gram)
    pairs = counts.sum(1) ** 2 - (counts**2).sum(1)
    return (quadratic - own) / pairs


def bootstrap_counts(n: int, resamples: int, seed: int) -> Tensor:
    """[1 + resamples, n] multiplicities: row 0 is the sample itself, then resamples with replacement."""
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, n, (resamples, n), generator=generator)
    counts = torch.zeros(resamples, n, dtype=torch.float64)
    counts.scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float64))
    return torch.cat([torch.ones(1, n, dtype=torch.float64), counts])


class Products:
    """C(a, b) for every pair of named sets of per-group vectors, under every bootstrap row."""

    def __init__(self, sets: dict[str, Tensor], counts: Tensor) -> None:
        self.values: dict[tuple[str, str], Tensor] = {}
        self.mean_square: dict[str, float] = {}
        names = list(sets)
        for i, first in enumerate(names):  # block by block: the sets are too large to concatenate
            for second in names[i:]:  # C(b, a) = C(a, b): each pair once
                gram = (sets[first] @ sets[second].T).double()
                self.values[first, second] = self.values[second, first] = off_diagonal_mean(gram, counts)
                if first == second:
                    self.mean_square[first] = float(torch.diagonal(gram).mean())

    def __call__(self, a: str, b: str) -> Tensor:
        return self.values[a, b]

    def cosine(self, a: str, b: str) -> Tensor:
        norms = self(a, a) * self(b, b)
        return torch.where(norms > 0, self(a, b) / norms.clamp(min=1e-300).sqrt(), math.nan)

    def distance2(self, a: str, b: str) -> Tensor:
        return self(a, a) + self(b, b) - 2 * self(a, b)

    def relative_error(self, a: str, b: str) -> Tensor:
        """‖E a − E b‖ / ‖E b‖ (NaN where ‖E b‖² is estimated ≤ 0)."""
        return torch.where(self(b, b) > 0, self.distance2(a, b).clamp(min=0).sqrt()
                           / self(b, b).clamp(min=1e-300).sqrt(), math.nan)

    def position(self, stale: str, old: str, current: str) -> Tensor:
        """λ: where E stale projects on the segment from E old (0) to E current (1)."""
        gap = self.distance2(current, old)
        along = self(stale, current) - self(stale, old) - self(old, current) + self(old, old)
        return torch.where(gap > 0, along / gap.clamp(min=1e-300), math.nan)

    def noise_to_signal(self, a: str) -> float:
        """tr Cov / ‖E a‖² of one group's vector (NaN where ‖E a‖² is estimated ≤ 0)."""
        signal = float(self(a, a)[0])
        return (self.mean_square[a] - signal) / signal if signal > 0 else math.nan


def summarise(values: Tensor) -> dict[str, float]:
    """The sample's value (row 0) and the 95% percentile interval of the bootstrap rows."""
    boot = values[1:].numpy()
    finite = boot[np.isfinite(boot)]
    low, high = (np.percentile(finite, [2.5, 97.5]) if finite.size else (math.nan, math.nan))
    return {"value": float(values[0]), "low": float(low), "high": float(high),
            "undefined_frac": float(1 - finite.size / boot.size)}


# ---------------------------------------------------------------------- the measurement


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of decoder blocks (the longest ModuleList named layers / h / blocks)."""
    found = [m for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layers", "h", "blocks")]
    if not found:
        raise ValueError("cannot find the model's transformer blocks (no ModuleList named layers, h or blocks)")
    return max(found, key=len)


def restrict_gradients(model: nn.Module, top_layers: int) -> list[Tensor]:
    """requires_grad only on the top `top_layers` blocks; returns those parameters in order."""
    blocks = transformer_blocks(model)
    if top_layers > len(blocks):
        raise ValueError(f"--top-layers {top_layers} > the model's {len(blocks)} transformer blocks")
    model.requires_grad_(False)
    params: list[Tensor] = []
    for block in list(blocks)[-top_layers:]:
        block.requires_grad_(True)
        params.extend(block.parameters())
    return params


@dataclass
class Sampled:
    """One policy version's scored groups and the advantages each measured variant uses."""

    version: int
    batch: TrainingBatch
    rewards: Tensor  # [n, G]
    advantages: dict[str, Tensor]  # variant name → [n·G]


class Measurement:
    """The models, prompts and scorer of one study; each stage returns what it made."""

    def __init__(self, config: CheckpointLagConfig) -> None:
        self.config = config
        run = Path(config.run)
        self.run_config = load_config(run / "config.yaml")
        if self.run_config.model.lora is not None:
            raise ValueError(f"--run {run} trained LoRA adapters; this study needs full-model checkpoints")
        cfg = self.run_config
        self.checkpoints = available_steps(run)
        autocast = torch.bfloat16 if cfg.model.autocast_bf16 else None
        self.settings: StepSettings = step_settings(cfg, autocast)
        self.variants = [measured_variant(name) for name in config.objectives]
        self.base, self.tokenizer = load_model(cfg)  # θ_0
        disable_dropout(self.base)
        self.current = self.load_version(config.step)
        self.params_current = restrict_gradients(self.current, config.top_layers)
        rows = load_rows(cfg.data.train)
        if len(rows) < config.groups:
            raise ValueError(f"--groups {config.groups} > the run's {len(rows)} training prompts")
        self.rows = random.Random(config.seed).sample(rows, config.groups)
        format_prompt = PromptFormatter(self.tokenizer, cfg.model.chat_template, cfg.model.system_prompt)
        self.prompts = [format_prompt(row) for row in self.rows]
        self.scorer = scorers(cfg, training_rewards(cfg, None, run), run)[0]

    def load_version(self, step: int) -> nn.Module:
        model = copy.deepcopy(self.base)
        if step > 0:
            model.load_state_dict(read_model_state(self.checkpoints[step]), strict=False)
        return model.eval()

    def sample(self, model: nn.Module, version: int) -> Sampled:
        cfg, g = self.run_config, self.config.group_size
        engine = HFGenerateEngine(model, self.tokenizer, cfg.rollout.generation_batch_size,
                                  cfg.rollout.max_prompt_length, self.settings.autocast_dtype)
        params = SamplingParams(cfg.rollout.max_new_tokens, cfg.rollout.temperature, cfg.rollout.top_p,
                                cfg.rollout.top_k)
        sampler = GroupSampler(engine, g, params, self.config.seed + _SAMPLING_SEED_OFFSET,
                               cfg.rollout.generation_batch_size)
        with torch.no_grad():
            rollout = sampler.sample(self.prompts, version, 0, 0, self.rows)
        scored = self.scorer.score(rollout, self.rows, g).batch
        rewards = scored.group_rewards()
        lengths = rollout.completion_lengths.float().view(-1, g)
        advantages = {
            v.name: compute_advantages(v.advantage_name, rewards, lengths, **v.advantage_options).advantages.flatten()
            for v in [*self.variants, POLICY_GRADIENT]
        }
        batch = TrainingBatch.from_rollout(rollout, advantages[POLICY_GRADIENT.name])
        return Sampled(version, batch, rewards, advantages)

    def group_vectors(self, model: nn.Module, params: list[Tensor], sampled: Sampled, variants: list[Variant],
                      old: Callable[[TrainingBatch], Tensor] | None) -> tuple[dict[str, Tensor], dict[str, list]]:
        """Per-group gradient vectors [n, D] of each variant's loss at `model` on `sampled`, with
        π_old = `old`(group) (None: on-policy, every ratio 1); and per-group log-ratio diagnostics."""
        g = self.config.group_size
        vectors: dict[str, list[Tensor]] = {v.name: [] for v in variants}
        diagnostics: dict[str, list] = {"log_ratio": [], "mask": []}
        for group in range(self.config.groups):
            rows = torch.arange(group * g, (group + 1) * g)
            part = sampled.batch.rows(rows)
            logprobs, _ = policy_logprobs(model, part, self.settings)
            behaviour = None if old is None else old(part)
            if behaviour is not None:
                diagnostics["log_ratio"].append((logprobs.detach() - behaviour).float())
                diagnostics["mask"].append(part.completion_mask.float())
            norms = StepNormalizers.from_mask(part.completion_mask, self.settings.max_new_tokens)
            for variant in variants:
                policy = PolicyBatch(logprobs=logprobs, mask=part.completion_mask,
                                     advantages=sampled.advantages[variant.name][rows], old_logprobs=behaviour,
                                     token_ids=part.completion_ids, group_ids=torch.zeros(g, dtype=torch.long))
                loss, _ = compute_loss(variant.objective, policy, variant.config(), norms)
                grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
                vectors[variant.name].append(torch.cat([
                    (torch.zeros_like(p) if grad is None else grad).flatten().float()
                    for p, grad in zip(params, grads, strict=True)]))
        return {name: torch.stack(rows) for name, rows in vectors.items()}, diagnostics

    def behaviour(self, model: nn.Module) -> Callable[[TrainingBatch], Tensor]:
        def logprobs(part: TrainingBatch) -> Tensor:
            with torch.no_grad():
                return policy_logprobs(model, part, self.settings)[0]
        return logprobs


def ratio_diagnostics(diagnostics: dict[str, list]) -> dict[str, float]:
    """Token and trajectory log-ratio log π_θt/π_θ(t−k) on the stale samples."""
    log_ratio = torch.cat(diagnostics["log_ratio"])
    mask = torch.cat(diagnostics["mask"])
    tokens = mask.sum()
    k3 = ((torch.exp(log_ratio) - log_ratio - 1) * mask).sum() / tokens
    trajectory = (log_ratio * mask).sum(1)
    weights = torch.exp(trajectory - trajectory.max())
    return {
        "kl_k3_per_token": float(k3),
        "token_ratio_outside_0.8_1.2": float((((log_ratio.exp() - 1).abs() > 0.2) & (mask > 0)).sum() / tokens),
        "trajectory_log_ratio_min": float(trajectory.min()),
        "trajectory_log_ratio_max": float(trajectory.max()),
        "trajectory_ratio_ess": float(weights.sum() ** 2 / (len(weights) * (weights**2).sum())),
    }


def lag_statistics(products: Products, variants: list[Variant], pg: str = POLICY_GRADIENT.name) -> dict[str, Any]:
    """Every reported quantity of one lag, for each measured variant."""
    out: dict[str, Any] = {
        "gradient_cosine_old_current": summarise(products.cosine(f"on_old/{pg}", f"on_current/{pg}")),
        "noise_to_signal": {name: products.noise_to_signal(name) for name in products.mean_square},
        "variants": {},
    }
    for v in variants:
        stale, old, current = f"stale/{v.name}", f"on_old/{v.name}", f"on_current/{v.name}"
        out["variants"][v.name] = {
            "position": summarise(products.position(stale, old, current)),
            "relative_error_current": summarise(products.relative_error(stale, current)),
            "relative_error_old": summarise(products.relative_error(stale, old)),
            "cos_gradient_current": summarise(products.cosine(stale, f"on_current/{pg}")),
            "cos_gradient_old": summarise(products.cosine(stale, f"on_old/{pg}")),
            "target_moved": summarise(products.relative_error(old, current)),
            "target_gap2": summarise(products.distance2(current, old)),
        }
    first, *others = variants  # every other variant against the first (paired: the same samples)
    for other in others:
        difference = (products.position(f"stale/{other.name}", f"on_old/{other.name}", f"on_current/{other.name}")
                      - products.position(f"stale/{first.name}", f"on_old/{first.name}", f"on_current/{first.name}"))
        out.setdefault("position_differences", {})[f"{other.name} − {first.name}"] = summarise(difference)
    return out


def run_checkpoint_lag(config: CheckpointLagConfig, progress: bool = True) -> dict[str, Any]:
    check_checkpoint_lag(config)
    started = time.perf_counter()
    study = Measurement(config)
    variants = [*study.variants, POLICY_GRADIENT]
    counts = bootstrap_counts(config.groups, config.bootstrap, config.seed)

    def say(text: str) -> None:
        if progress:
            print(f"[{time.perf_counter() - started:7.0f} s] {text}", flush=True)

    say(f"θ_{config.step}: sampling {config.groups} × {config.group_size}")
    current = study.sample(study.current, config.step)
    on_current, _ = study.group_vectors(study.current, study.params_current, current, variants, None)
    results: dict[str, Any] = {
        "config": asdict(config),
        "run_config": {"objective": study.run_config.algorithm.objective.name, "lr": study.run_config.optim.lr,
                       "model": study.run_config.model.name, "task": study.run_config.data.train},
        "dimension": int(on_current[POLICY_GRADIENT.name].shape[1]),
        "reward_mean": {str(config.step): float(current.rewards.mean())},
        "lags": {},
    }
    for lag in config.lags:
        version = config.step - lag
        say(f"k = {lag}: sampling θ_{version}")
        model = study.load_version(version)
        params = restrict_gradients(model, config.top_layers)
        old = study.sample(model, version)
        on_old, _ = study.group_vectors(model, params, old, variants, None)
        stale, diagnostics = study.group_vectors(study.current, study.params_current, old, study.variants,
                                                 study.behaviour(model))
        sets = {**{f"on_current/{n}": x for n, x in on_current.items()},
                **{f"on_old/{n}": x for n, x in on_old.items()},
                **{f"stale/{n}": x for n, x in stale.items()}}
        stats = lag_statistics(Products(sets, counts), study.variants)
        results["lags"][str(lag)] = {**stats, "ratios": ratio_diagnostics(diagnostics)}
        results["reward_mean"][str(version)] = float(old.rewards.mean())
        del model, params, on_old, stale, sets
    results["seconds"] = time.perf_counter() - started
    return results


# ---------------------------------------------------------------------- the report


def _interval(s: dict[str, float]) -> str:
    if not math.isfinite(s["value"]):
        return "undefined"
    return f"{s['value']:.3f} [{s['low']:.3f}, {s['high']:.3f}]"


def _ratio(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else "undefined"


def _report(results: dict[str, Any]) -> str:
    config = results["config"]
    names = list(config["objectives"])
    lags = list(results["lags"])
    lines = [
        "# Claim 1 on a real model: the update from k-stale batches", "",
        f"Run `{config['run']}` ({results['run_config']['model']}, trained with "
        f"{results['run_config']['objective']}, lr {results['run_config']['lr']:g}); θ_t = step {config['step']}; "
        f"{config['groups']} prompts × G = {config['group_size']} completions per policy version; gradients over the "
        f"top {config['top_layers']} transformer block(s), {results['dimension']:,} parameters; 95% bootstrap "
        f"intervals over the prompts ({config['bootstrap']} resamples). Took {results['seconds'] / 60:.1f} min.", "",
        "λ: where the stale update's expectation lies on the segment from the objective's on-policy update at "
        "θ_(t−k) (λ = 0, the gradient at the sampling policy) to its on-policy update at θ_t (λ = 1, the current "
        "gradient). Claim 1: λ ≈ 0 for grpo, λ ≈ 1 for tic_grpo. λ is read only where the segment is resolved "
        "(the interval of ‖E c − E o‖² above 0); where ‖E c‖² itself is not (its one-group noise-to-signal "
        "'undefined': the estimate of the squared norm is ≤ 0), λ ≈ 1 says only that the stale update has no "
        "component along the update at θ_(t−k).", "",
        "## λ by lag", "",
        markdown_table(["k", *names, f"‖E c − E o‖² ({names[0]})", f"noise-to-signal of one group, o / c ({names[0]})"],
                       [[k, *(_interval(results["lags"][k]["variants"][n]["position"]) for n in names),
                         _interval(results["lags"][k]["variants"][names[0]]["target_gap2"]),
                         " / ".join(_ratio(results["lags"][k]["noise_to_signal"][f"{side}/{names[0]}"])
                                    for side in ("on_old", "on_current"))] for k in lags]),
        "",
        "## Paired differences of λ (same samples)", "",
    ]
    differences = [[k, d, _interval(s)] for k in lags for d, s in results["lags"][k].get("position_differences",
                                                                                          {}).items()]
    lines += [markdown_table(["k", "difference", "λ difference"], differences), "",
              "## Relative error against each on-policy update", "",
              markdown_table(["k", "objective", "‖s − c‖/‖c‖ (current)", "‖s − o‖/‖o‖ (old)",
                              "cos(s, ∇J(θ_t))", "cos(s, ∇J(θ_(t−k)))"],
                             [[k, n, *(_interval(results["lags"][k]["variants"][n][q]) for q in (
                                 "relative_error_current", "relative_error_old", "cos_gradient_current",
                                 "cos_gradient_old"))] for k in lags for n in names]), "",
              "## How far the policy moved", "",
              markdown_table(["k", "cos(∇J(θ_(t−k)), ∇J(θ_t))", "KL k3 per token", "token ratios outside [0.8, 1.2]",
                              "trajectory log-ratio range", "trajectory-ratio ESS", "reward mean at θ_(t−k)"],
                             [[k, _interval(results["lags"][k]["gradient_cosine_old_current"]),
                               f"{results['lags'][k]['ratios']['kl_k3_per_token']:.4f}",
                               f"{results['lags'][k]['ratios']['token_ratio_outside_0.8_1.2']:.3f}",
                               f"{results['lags'][k]['ratios']['trajectory_log_ratio_min']:.2f} … "
                               f"{results['lags'][k]['ratios']['trajectory_log_ratio_max']:.2f}",
                               f"{results['lags'][k]['ratios']['trajectory_ratio_ess']:.3f}",
                               f"{results['reward_mean'][str(config['step'] - int(k))]:.3f}"] for k in lags]), "",
              f"Reward mean at θ_t: {results['reward_mean'][str(config['step'])]:.3f}. One group's noise-to-signal "
              "tr Cov/‖E a‖² of every set (undefined: the squared norm's estimate is ≤ 0):", "",
              markdown_table(["k", "set", "noise-to-signal"],
                             [[k, name, _ratio(value)] for k in lags
                              for name, value in results["lags"][k]["noise_to_signal"].items()]),
              "", "![λ by lag](position.png)", ""]
    return "\n".join(lines)


def _plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, axis = plt.subplots(figsize=(6, 4))
    lags = [int(k) for k in results["lags"]]
    for offset, name in enumerate(results["config"]["objectives"]):
        stats = [results["lags"][str(k)]["variants"][name]["position"] for k in lags]
        shown = [(k * (1 + 0.04 * (offset - 1)), s) for k, s in zip(lags, stats, strict=True)
                 if math.isfinite(s["value"]) and s["undefined_frac"] <= 0.05]  # unresolved λ: not drawn
        axis.errorbar([x for x, _ in shown], [s["value"] for _, s in shown],
                      yerr=[[max(s["value"] - s["low"], 0) for _, s in shown],
                            [max(s["high"] - s["value"], 0) for _, s in shown]],
                      marker="o", capsize=3, label=name)
    axis.axhline(0, color="grey", lw=0.8, ls="--")
    axis.axhline(1, color="grey", lw=0.8, ls=":")
    axis.set_xscale("log", base=2)
    axis.set_xlim(min(lags) / 1.3, max(lags) * 1.3)
    axis.set_xticks(lags, [str(k) for k in lags])
    axis.set_xlabel("lag k (batches sampled by θ_(t−k))")
    axis.set_ylabel("λ (0: update at θ_(t−k), 1: at θ_t)")
    axis.set_title("drawn where λ is defined in ≥ 95% of the resamples", fontsize=9)
    axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_checkpoint_lag_outputs(results: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "results.json", out / "report.md", out / "position.png"]
    write_json(files[0], results)
    results = json.loads(files[0].read_text())  # the report shows the committed (rounded) numbers
    files[1].write_text(_report(results))
    _plot(results, files[2])
    return files


def summary_lines(results: dict[str, Any]) -> list[str]:
    return [f"k = {k}: λ " + ", ".join(f"{name} {_interval(s['position'])}" for name, s in stats["variants"].items())
            for k, stats in results["lags"].items()]


__all__ = [
    "POLICY_GRADIENT",
    "CheckpointLagConfig",
    "Products",
    "bootstrap_counts",
    "check_checkpoint_lag",
    "off_diagonal_mean",
    "restrict_gradients",
    "run_checkpoint_lag",
    "summary_lines",
    "write_checkpoint_lag_outputs",
]
