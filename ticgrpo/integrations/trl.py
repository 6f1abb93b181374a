"""TIC-GRPO (and every other ticgrpo objective) inside TRL's `GRPOTrainer`.

    from ticgrpo.integrations.trl import TicGRPOConfig, TicGRPOTrainer

    args = TicGRPOConfig(output_dir="out", ticgrpo_objective="tic_grpo",
                         ticgrpo_objective_options={"epsilon_high": 0.2})
    trainer = TicGRPOTrainer(model="Qwen/Qwen3-1.7B", reward_funcs=my_reward,
                             args=args, train_dataset=dataset)
    trainer.train()

Written against TRL 1.16 (`trl.trainer.grpo_trainer`). What is replaced, and where:

Loss (`_compute_loss`). TRL's own loss types are bypassed; the per-token log-probs of the
current policy (TRL's `_get_per_token_logps_and_entropies`, i.e. with TRL's temperature),
`old_per_token_logps` (None when TRL decides the step is on-policy, which ticgrpo reads as
ℓ^old = ℓ.detach()), `ref_per_token_logps`, `completion_mask` × `tool_mask` and the
advantages are packed into a `PolicyBatch` and handed to `ticgrpo.core.objectives.compute_loss`.

Normalisers (spec §3: counts of the whole optimizer step). TRL computes the loss once per
micro-batch of `per_device_train_batch_size` rows and sums the gradients of
`gradient_accumulation_steps` (GA) micro-batches on each of P processes; DDP/FSDP/ZeRO then
*average* the gradients over the P processes. In `_generate_and_score_completions` we
count, over the whole generation batch and all processes, the non-empty completions
(`ticgrpo_num_sequences`, a 0-d tensor carried with the batch) and the loss tokens (TRL's
own `num_items_in_batch`). Every micro-batch of a training step then gets

    N_seq = ticgrpo_num_sequences · GA / (steps_per_generation · P)
    N_tok = num_items_in_batch    · GA / (steps_per_generation · P)
    L_max = max_completion_length

(the same rescaling TRL applies to `num_items_in_batch` for its `dapo` loss). With the
default `steps_per_generation == GA` the generation batch *is* one optimizer step, the
factor P cancels DDP's average, and the summed-and-averaged gradient equals the gradient of
the whole step with the spec's counts: splitting it into micro-batches or processes changes
nothing. With `steps_per_generation = k·GA` one generation batch feeds k optimizer steps and
the counts are their average per step. The loss returned is already scaled for gradient
accumulation (TRL's `loss_is_scaled_for_ga = True`, so HF's Trainer does not divide again).
In evaluation N = count / P (no accumulation).

Relation to TRL's `loss_type="grpo"`: TRL takes the mean over the micro-batch's rows and
divides by GA, i.e. N_seq = rows · GA per process, counting fully masked rows (possible with
`mask_truncated_completions=True`). ticgrpo's N_seq excludes fully masked rows (spec §3);
whenever no row is fully masked the two losses and gradients are identical (tested).

Advantages (`ticgrpo_advantage`). "auto" (default): the objective's own default estimator
(`length_corrected` for `tic_grpo`, `group_norm` for `grpo`, ...); "trl": keep TRL's
advantages (`scale_rewards`, `multi_objective_aggregation`); any other name: that ticgrpo
estimator, with `ticgrpo_advantage_options`. We override `_calculate_rewards` only to
remember the rewards TRL gathered from all processes, then, after TRL's
`_generate_and_score_completions`, recompute the advantages from the weighted reward sum
(`reward_weights`) grouped by `num_generations`, with the completion lengths |o_i| gathered
from all processes (needed by `length_corrected`; a completion whose mask TRL zeroed with
`mask_truncated_completions` counts `max_completion_length` tokens, the length it was
truncated at), and slice this process's part back out. Completions that every reward
function scored None get the group's mean reward (so they do not move the baseline's mean)
and advantage 0, as in TRL. TRL's own advantages are kept in `self.ticgrpo_last_batch`.

Parameters taken from TRL, not from the options: β (`GRPOConfig.beta`, because TRL must
build the reference model; KL estimator `kl_estimator` option, default k3 like TRL; TRL's
`use_bias_correction_kl` is *not* applied). Ignored TRL options: `loss_type`, `epsilon`,
`epsilon_high` (the clip ranges come from `ticgrpo_objective_options`, spec defaults).
Rejected (ValueError), because they change the loss in ways a ticgrpo objective does not
model: `top_entropy_quantile < 1`, `off_policy_mask_threshold`, `importance_sampling_level
!= "token"`, `delta`, entropy bonus (`entropy_coef`, `use_adaptive_entropy`), and vLLM's
`vllm_importance_sampling_correction` (set it False when `use_vllm=True`).

Not available through TRL, as the objective's spec says (`unsupported_reason`): objectives
that couple a group (`couples_group`, e.g. `gtpo`: TRL shuffles a group's completions across
micro-batches) and options with a frozen gradient (`frozen_gradient`, e.g. `no_is` with
`mode="frozen"`: one gradient per rollout batch needs ticgrpo's trainer; the ALGORITHMS
table's `no_is_stale` names options that work, `mode="stale"`), and objectives that read the
policy's hidden states (`needs_hidden_states`, e.g. `nthr`: TRL's loss receives log-probs only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from trl import GRPOConfig, GRPOTrainer

from ticgrpo.config.algorithms import objective_option_sets
from ticgrpo.config.schema import DEFAULT_OBJECTIVE
from ticgrpo.core.advantages import ADVANTAGES, compute_advantages
from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.objectives import (
    OBJECTIVES,
    ObjectiveSpec,
    compute_loss,
    make_objective_config,
)

ADVANTAGE_CHOICES = ("auto", "trl")


def unsupported_reason(spec: ObjectiveSpec, options: Any) -> str | None:
    """Why objective `spec` with `options` cannot run as a per-micro-batch TRL loss; None if it can."""
    if spec.needs_hidden_states:
        return "it needs the policy's last-layer hidden states, which TRL's loss does not receive"
    if spec.couples_group:
        return "it needs every completion of a group in the same micro-batch (TRL shuffles them apart)"
    if spec.frozen_gradient(options):
        working = [options for options in objective_option_sets(spec.name).values()
                   if not spec.frozen_gradient(make_objective_config(spec.name, options))]
        hint = f"; in TRL use ticgrpo_objective_options={working[0]}" if working else ""
        return ("these options take one gradient at θ_old and apply it at every inner step, which needs "
                f"ticgrpo's trainer{hint}")
    return None


def trl_policy_loss(
    objective: str,
    options: Any,
    inputs: dict[str, Any],
    per_token_logps: torch.Tensor,
    entropies: torch.Tensor | None,
    norms: StepNormalizers,
    beta: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one TRL micro-batch: TRL's `inputs` (completion ids and mask, tool mask,
    advantages, old and reference log-probs) and the policy's per-token log-probs and entropies,
    packed into a PolicyBatch for objective `objective`. A pure function: no trainer needed."""
    batch = PolicyBatch(
        logprobs=per_token_logps,
        mask=_loss_mask(inputs),
        advantages=inputs["advantages"],
        old_logprobs=inputs.get("old_per_token_logps"),
        ref_logprobs=inputs.get("ref_per_token_logps") if beta != 0.0 else None,
        token_ids=inputs["completion_ids"],
        entropies=entropies,
    )
    return compute_loss(objective, batch, options, norms)


@dataclass
class TicGRPOConfig(GRPOConfig):
    """`GRPOConfig` plus the ticgrpo objective and advantage (see the module docstring)."""

    ticgrpo_objective: str = field(
        default=DEFAULT_OBJECTIVE, metadata={"help": "ticgrpo objective name (ticgrpo.core.objectives.OBJECTIVES)."}
    )
    ticgrpo_objective_options: dict | None = field(
        default=None, metadata={"help": "Options of the objective's config (spec defaults otherwise)."}
    )
    ticgrpo_advantage: str = field(
        default="auto",
        metadata={"help": "'auto' (the objective's default), 'trl' (TRL's), or a ticgrpo advantage name."},
    )
    ticgrpo_advantage_options: dict | None = field(
        default=None, metadata={"help": "Options of the advantage estimator (e.g. delta)."}
    )


class TicGRPOTrainer(GRPOTrainer):
    """TRL `GRPOTrainer` whose loss is a ticgrpo objective and whose advantages are, by
    default, the objective's own estimator.

    The ticgrpo settings come from `args` when it is a `TicGRPOConfig`; the keyword
    arguments below override them (and let a plain `GRPOConfig` be used).
    """

    def __init__(
        self,
        *args: Any,
        ticgrpo_objective: str | None = None,
        ticgrpo_objective_options: dict | None = None,
        ticgrpo_advantage: str | None = None,
        ticgrpo_advantage_options: dict | None = None,
        **kwargs: Any,
    ) -> None:
        grpo_args = kwargs.get("args", args[2] if len(args) > 2 else None)
        objective = ticgrpo_objective or getattr(grpo_args, "ticgrpo_objective", None) or DEFAULT_OBJECTIVE
        options = dict(
            ticgrpo_objective_options
            if ticgrpo_objective_options is not None
            else getattr(grpo_args, "ticgrpo_objective_options", None) or {}
        )
        advantage = ticgrpo_advantage or getattr(grpo_args, "ticgrpo_advantage", None) or "auto"
        advantage_options = dict(
            ticgrpo_advantage_options
            if ticgrpo_advantage_options is not None
            else getattr(grpo_args, "ticgrpo_advantage_options", None) or {}
        )
        if grpo_args is not None:
            _check_trl_args(grpo_args)
        spec = OBJECTIVES.spec(objective)  # unknown names raise here, listing the choices
        if "beta" in options:
            raise ValueError("set the KL coefficient with GRPOConfig.beta (TRL builds the reference model from it)")
        reason = unsupported_reason(spec, make_objective_config(objective, options))
        if reason is not None:
            raise ValueError(f"objective {objective!r} is not supported in TRL: {reason}")
        if advantage == "auto":
            advantage = spec.default_advantage
        if advantage != "trl":
            ADVANTAGES.spec(advantage)
        super().__init__(*args, **kwargs)
        self.ticgrpo_objective = objective
        self.ticgrpo_advantage = advantage
        self.ticgrpo_advantage_options = advantage_options
        # β is TRL's: it decides whether ref_per_token_logps exist.
        self.ticgrpo_config = make_objective_config(objective, {**options, "beta": float(self.beta)})
        self.ticgrpo_last_batch: dict[str, torch.Tensor] = {}
        self._ticgrpo_rewards_per_func: torch.Tensor | None = None

    def _ticgrpo_mode(self) -> str:
        """TRL's metrics key: "train" while the model trains, "eval" otherwise."""
        return "train" if self.model is not None and self.model.training else "eval"

    # ----------------------------------------------------------------- advantages
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._ticgrpo_rewards_per_func = rewards_per_func  # gathered over all processes
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        mode = self._ticgrpo_mode()
        loss_mask = _loss_mask(output)
        local_nonempty = (loss_mask.sum(dim=1) > 0).sum().to(torch.float32)
        output["ticgrpo_num_sequences"] = self.accelerator.gather(local_nonempty.reshape(1)).sum()
        self.ticgrpo_last_batch = {"trl_advantages": output["advantages"].detach().clone()}
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        if self.ticgrpo_advantage != "trl" and group_size is not None and group_size >= 2:
            output["advantages"] = self._ticgrpo_advantages(output, loss_mask, group_size, mode)
        self.ticgrpo_last_batch["advantages"] = output["advantages"].detach().clone()
        return output

    def _ticgrpo_advantages(
        self, output: dict[str, Any], loss_mask: torch.Tensor, group_size: int, mode: str
    ) -> torch.Tensor:
        rewards_per_func = self._ticgrpo_rewards_per_func
        if rewards_per_func is None:
            raise RuntimeError("TicGRPOTrainer: TRL did not call _calculate_rewards; cannot recompute advantages")
        device = rewards_per_func.device
        unscorable = torch.isnan(rewards_per_func).all(dim=1)
        rewards = (rewards_per_func * self.reward_weights.to(device).unsqueeze(0)).nansum(dim=1)
        rewards = rewards.masked_fill(unscorable, math.nan).view(-1, group_size)
        group_mean = torch.nanmean(rewards, dim=1, keepdim=True).nan_to_num(0.0)
        rewards = torch.where(torch.isnan(rewards), group_mean.expand_as(rewards), rewards)

        lengths = loss_mask.sum(dim=1).to(torch.float32)
        if self.max_completion_length is not None:
            # A row TRL masked out (truncated, with mask_truncated_completions) ran to the limit.
            lengths = torch.where(lengths > 0, lengths, torch.full_like(lengths, float(self.max_completion_length)))
        all_lengths = self.accelerator.gather(lengths.to(device)).view(-1, group_size)

        result = compute_advantages(self.ticgrpo_advantage, rewards, all_lengths, **self.ticgrpo_advantage_options)
        advantages = result.advantages.flatten().masked_fill(unscorable, 0.0)
        self._metrics[mode]["ticgrpo/frac_zero_std"].append(result.frac_zero_std)
        local = output["completion_ids"].size(0)
        start = self.accelerator.process_index * local
        return advantages[start : start + local].to(output["advantages"].dtype)

    # ----------------------------------------------------------------------- loss
    def step_normalizers(self, inputs: dict[str, Any], mode: str) -> StepNormalizers:
        """N_seq, N_tok, L_max for one micro-batch (module docstring)."""
        processes = self.accelerator.num_processes
        scale = 1.0 / processes
        if mode == "train":
            # GRPOConfig sets steps_per_generation (default: GA) in __post_init__; typed optional
            steps = cast(GRPOConfig, self.args).steps_per_generation or self.args.gradient_accumulation_steps
            scale *= self.current_gradient_accumulation_steps / steps
        mask = _loss_mask(inputs)
        if "ticgrpo_num_sequences" in inputs:
            num_sequences = float(inputs["ticgrpo_num_sequences"]) * scale
        else:  # inputs built elsewhere: assume every micro-batch looks like this one
            local = float((mask.sum(dim=1) > 0).sum()) * processes
            num_sequences = local * (self.current_gradient_accumulation_steps if mode == "train" else 1) * scale
        if "num_items_in_batch" in inputs:
            num_tokens = float(inputs["num_items_in_batch"]) * scale
        else:
            local = float(mask.sum()) * processes
            num_tokens = local * (self.current_gradient_accumulation_steps if mode == "train" else 1) * scale
        return StepNormalizers(
            num_sequences=max(num_sequences, 1e-8),
            num_tokens=max(num_tokens, 1e-8),
            max_new_tokens=self.max_completion_length,
        )

    def _compute_loss(self, model, inputs):
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        mask = _loss_mask(inputs)
        extra = {
            key: inputs.get(key)
            for key in (
                "pixel_values",
                "image_grid_thw",
                "num_images",
                "pixel_attention_mask",
                "spatial_shapes",
                "num_tiles",
                "image_sizes",
                "token_type_ids",
                "mm_token_type_ids",
                "image_position_ids",
            )
        }
        per_token_logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            completion_ids.size(1),
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            **extra,
        )
        mode = self._ticgrpo_mode()
        norms = self.step_normalizers(inputs, mode)
        loss, metrics = trl_policy_loss(
            self.ticgrpo_objective, self.ticgrpo_config, inputs, per_token_logps, entropies, norms, self.beta
        )

        if self.aux_loss_enabled:
            normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
            loss = loss + self.router_aux_loss_coef * aux_loss / normalizer
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())

        totals = self.accelerator.reduce(
            torch.stack([(entropies.detach() * mask).sum(), mask.sum().to(entropies.dtype)]), reduction="sum"
        )
        self._metrics[mode]["entropy"].append((totals[0] / totals[1].clamp(min=1.0)).item())
        for key, value in metrics.items():
            value = torch.as_tensor(value, device=loss.device, dtype=torch.float32).detach().reshape(1)
            self._metrics[mode][f"ticgrpo/{key}"].append(self.accelerator.gather(value).nanmean().item())
        return loss


def _loss_mask(inputs: dict[str, Any]) -> torch.Tensor:
    mask = inputs["completion_mask"]
    tool_mask = inputs.get("tool_mask")
    return mask if tool_mask is None else mask * tool_mask


def _check_trl_args(args: Any) -> None:
    problems = []
    if getattr(args, "top_entropy_quantile", 1.0) < 1.0:
        problems.append("top_entropy_quantile < 1")
    if getattr(args, "off_policy_mask_threshold", None) is not None:
        problems.append("off_policy_mask_threshold")
    if getattr(args, "importance_sampling_level", "token") != "token":
        problems.append("importance_sampling_level != 'token' (the objective forms its own ratios)")
    if getattr(args, "delta", None) is not None:
        problems.append("delta (use ticgrpo's ratio_cap option)")
    if getattr(args, "entropy_coef", 0.0) != 0.0 or getattr(args, "use_adaptive_entropy", False):
        problems.append("entropy bonus (entropy_coef / use_adaptive_entropy)")
    if getattr(args, "use_vllm", False) and getattr(args, "vllm_importance_sampling_correction", False):
        problems.append("vllm_importance_sampling_correction=True (set it False)")
    if problems:
        raise ValueError("TicGRPOTrainer does not support these GRPOConfig settings: " + "; ".join(problems))


__all__ = ["TicGRPOConfig", "TicGRPOTrainer", "trl_policy_loss", "unsupported_reason"]
