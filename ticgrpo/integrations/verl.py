"""ticgrpo's objectives as verl policy losses.

Importing this module in a process where verl is importable registers, in verl's
`POLICY_LOSS_REGISTRY` (via `verl.trainer.ppo.core_algos.register_policy_loss`), one loss
per ticgrpo objective under the name ``ticgrpo_<objective>``:

    ticgrpo_tic_grpo, ticgrpo_grpo, ticgrpo_dr_grpo, ticgrpo_dapo, ticgrpo_gspo, ticgrpo_gmpo,
    ticgrpo_cispo, ticgrpo_dppo_tv, ticgrpo_dppo_kl, ticgrpo_no_is_stale, ticgrpo_grpo_noclip,
    ticgrpo_grpo_tokensum

— every objective whose spec verl can serve (`unsupported_reason`), plus one loss
``ticgrpo_<name>`` per entry of the ALGORITHMS table that is only an objective with other
options and that verl can serve (`no_is_stale`: `no_is`'s default mode freezes a gradient,
which needs ticgrpo's trainer; mode `stale` does not).
Not served: objectives that couple a group or read token ids or entropies (`gtpo`), which
verl's policy-loss call does not pass.

Select one with ``actor_rollout_ref.actor.policy_loss.loss_mode=ticgrpo_tic_grpo`` and make
verl import this module in its worker processes, either with
``actor_rollout_ref.model.external_lib=ticgrpo.integrations.verl`` (imported when the model
config is built) or with the environment variable
``VERL_USE_EXTERNAL_MODULES=ticgrpo.integrations.verl`` (imported by ``import verl``; forward it
to the Ray workers with ``+ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES=...``).
docs/scaling.md has the full recipe.

Written against verl 0.9.1, whose policy-loss signature is

    fn(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean",
       config: ActorConfig | None = None, rollout_is_weights=None) -> (pg_loss, pg_metrics: dict)

with [B, T] tensors (advantages broadcast over the response tokens, as verl's GRPO writes
them) and `config.global_batch_info` = {dp_size, batch_num_tokens, global_batch_size,
loss_scale_factor}, set by verl's `ppo_loss` for each micro-batch.

Normalisers. verl's `global_batch_size` is the number of sequences in the global PPO
mini-batch (one optimizer step, all data-parallel ranks) and `batch_num_tokens` its token
count; FSDP/Megatron average gradients over the `dp_size` ranks, which is why verl's own
`agg_loss` multiplies by `dp_size`. We pass, per rank and micro-batch,

    N_seq = global_batch_size / dp_size,   N_tok = batch_num_tokens / dp_size,
    L_max = loss_scale_factor, or the padded response width (verl's own default)

so that the averaged, accumulated gradient is the gradient of the whole mini-batch with the
spec's counts — identical to verl's `agg_loss` for every mode both libraries share. Without
`global_batch_info` (older callers), the micro-batch is taken to be the whole step.

Advantages. Objectives registered with ``sequence_advantages=True`` (one advantage per
sequence: `tic_grpo`, `gspo`, `gmpo`, and any objective registered later with that flag) get
each row's advantage read off its first response token; for those a row whose advantage is
not constant along its tokens (e.g. GAE) raises ValueError. Token-level objectives get the
[B, T] advantages unchanged. verl computes the advantages itself: use
``algorithm.adv_estimator=grpo`` (ticgrpo's `group_norm` up to verl's ε) — ticgrpo's
`length_corrected` is not available as a verl estimator here.

Options. Objective options (spec defaults otherwise) come from, in order: the
`options` given to `register_objective`; the JSON environment variable
``TICGRPO_VERL_OBJECTIVE_OPTIONS`` = ``{"tic_grpo": {"epsilon_high": 0.28}, ...}``. verl's
`clip_ratio*` settings are *not* read (each objective has its own clip options), and neither
is `actor.loss_agg_mode`: an objective aggregates as the spec defines it (`grpo`:
seq-mean-token-mean, `dapo`: token-mean, `dr_grpo`: seq-mean-token-sum-norm, ...), unless its
options set `aggregation` — to a ticgrpo mode, or to "verl" to follow `actor.loss_agg_mode`
(verl's `token-sum` has no ticgrpo counterpart and raises). verl still uses
`loss_agg_mode` for its own entropy and KL terms.
The KL penalty stays verl's (`actor.use_kl_loss`, `kl_loss_coef`): `beta` must stay 0 here.
verl's rollout-correction weights (`rollout_is_weights`, from `algorithm.rollout_correction`)
would multiply per-token losses, which a sequence-level objective has no place for: they
raise ValueError — disable rollout correction with these losses.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ticgrpo.config.algorithms import objective_option_sets
from ticgrpo.core.batch import PolicyBatch, StepNormalizers
from ticgrpo.core.objectives import OBJECTIVES, ObjectiveSpec, compute_loss, make_objective_config

PREFIX = "ticgrpo_"
OPTIONS_ENV = "TICGRPO_VERL_OBJECTIVE_OPTIONS"
VERL_AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")

PolicyLossFn = Callable[..., tuple[Tensor, dict[str, float]]]


def unsupported_reason(spec: ObjectiveSpec, options: Any) -> str | None:
    """Why verl cannot run objective `spec` with `options` as a policy loss; None if it can."""
    missing = [what for needed, what in ((spec.couples_group, "group ids"), (spec.needs_token_ids, "token ids"),
                                         (spec.needs_entropies, "entropies"),
                                         (spec.needs_hidden_states, "hidden states")) if needed]
    if missing:
        return f"it needs {', '.join(missing)}, which verl's policy-loss call does not pass"
    if spec.frozen_gradient(options):
        variants = [f"{PREFIX}{name}" for name, values in objective_option_sets(spec.name).items()
                    if not spec.frozen_gradient(make_objective_config(spec.name, values))]
        hint = f"; registered as {', '.join(variants)}" if variants else ""
        return ("these options take one gradient at θ_old for a whole rollout batch, which needs ticgrpo's "
                f"trainer{hint}")
    return None


def _env_options(objective: str) -> dict[str, Any]:
    raw = os.environ.get(OPTIONS_ENV, "").strip()
    if not raw:
        return {}
    try:
        table = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"{OPTIONS_ENV} is not valid JSON: {err}") from None
    if not isinstance(table, dict):
        raise ValueError(f"{OPTIONS_ENV} must map objective names to option objects")
    return dict(table.get(objective) or {})


def _global_batch_info(config: Any) -> Mapping[str, Any]:
    if config is None:
        return {}
    info = (
        config.get("global_batch_info") if isinstance(config, Mapping) else getattr(config, "global_batch_info", None)
    )
    return info or {}


def step_normalizers(response_mask: Tensor, config: Any = None) -> StepNormalizers:
    """N_seq, N_tok, L_max for one verl micro-batch on one data-parallel rank (module docstring)."""
    info = _global_batch_info(config)
    dp_size = float(info.get("dp_size") or 1)
    local = StepNormalizers.from_mask(response_mask)
    global_batch_size = info.get("global_batch_size")
    batch_num_tokens = info.get("batch_num_tokens")
    if (global_batch_size is None or batch_num_tokens is None) and dp_size > 1:
        raise ValueError("verl passed dp_size > 1 without global_batch_size / batch_num_tokens")
    num_sequences = float(global_batch_size) / dp_size if global_batch_size is not None else local.num_sequences
    num_tokens = float(batch_num_tokens) / dp_size if batch_num_tokens is not None else local.num_tokens
    max_new_tokens = info.get("loss_scale_factor") or response_mask.shape[-1]
    return StepNormalizers(num_sequences=num_sequences, num_tokens=num_tokens, max_new_tokens=int(max_new_tokens))


def _sequence_advantages(advantages: Tensor, mask: Tensor) -> Tensor:
    if advantages.dim() == 1:
        return advantages
    m = mask.bool()
    first = m.float().argmax(dim=1)
    per_seq = advantages.gather(1, first[:, None]).squeeze(1)
    spread = (advantages - per_seq[:, None]).abs().masked_fill(~m, 0.0)
    if spread.numel() and float(spread.max()) > 1e-5 * max(1.0, float(per_seq.abs().max())):
        raise ValueError(
            "this objective needs one advantage per sequence, but verl's advantages vary along the response "
            "(token-level estimator such as GAE); use an outcome-level estimator (e.g. adv_estimator=grpo)"
        )
    return torch.where(m.any(dim=1), per_seq, torch.zeros_like(per_seq))


def make_policy_loss(objective: str, options: Mapping[str, Any] | None = None) -> PolicyLossFn:
    """A function with verl's policy-loss signature running ticgrpo objective `objective`.

    `options` = None reads them from ``TICGRPO_VERL_OBJECTIVE_OPTIONS`` (now, at registration).
    Needs no verl: callable with plain tensors (config=None, a dict or verl's ActorConfig).
    """
    spec = OBJECTIVES.spec(objective)
    # The registry says whether the loss reads one advantage per sequence ([B]) rather than [B, T].
    needs_sequence_advantages = spec.sequence_advantages
    resolved = dict(options) if options is not None else _env_options(objective)
    if resolved.get("beta", 0.0) not in (0, 0.0):
        raise ValueError("keep beta = 0: verl adds the KL penalty itself (actor.use_kl_loss, kl_loss_coef)")
    follows_verl = resolved.get("aggregation") == "verl"
    # validates the options now (the aggregation verl will pass is checked at each call)
    checked = make_objective_config(objective, {k: v for k, v in resolved.items() if not (
        follows_verl and k == "aggregation")})
    reason = unsupported_reason(spec, checked)
    if reason is not None:
        raise ValueError(f"objective {objective!r} is not available in verl: {reason}")
    cache: dict[str, Any] = {}
    if not follows_verl:
        cache[""] = checked

    def _config(loss_agg_mode: str) -> Any:
        if "" in cache:
            return cache[""]
        if loss_agg_mode not in cache:
            opts = dict(resolved)
            if opts.get("aggregation") == "verl":  # follow verl's actor.loss_agg_mode
                if loss_agg_mode not in VERL_AGGREGATIONS:
                    raise ValueError(
                        f"loss_agg_mode {loss_agg_mode!r} has no ticgrpo counterpart; choose one of "
                        f"{', '.join(VERL_AGGREGATIONS)}"
                    )
                opts["aggregation"] = loss_agg_mode
            cache[loss_agg_mode] = make_objective_config(objective, opts)
        return cache[loss_agg_mode]

    def policy_loss(
        old_log_prob: Tensor,
        log_prob: Tensor,
        advantages: Tensor,
        response_mask: Tensor,
        loss_agg_mode: str = "token-mean",
        config: Any = None,
        rollout_is_weights: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        if rollout_is_weights is not None:
            raise ValueError(
                f"{PREFIX}{objective}: verl rollout-correction weights (algorithm.rollout_correction) are not "
                "supported by ticgrpo objectives; disable rollout correction"
            )
        if needs_sequence_advantages:
            advantages = _sequence_advantages(advantages, response_mask)
        batch = PolicyBatch(
            logprobs=log_prob,
            mask=response_mask,
            advantages=advantages,
            old_logprobs=old_log_prob,
        )
        loss, metrics = compute_loss(objective, batch, _config(loss_agg_mode), step_normalizers(response_mask, config))
        return loss, {f"actor/ticgrpo/{k}": float(torch.as_tensor(v).detach().float()) for k, v in metrics.items()}

    policy_loss.__name__ = f"{PREFIX}{objective}"
    policy_loss.__doc__ = f"verl policy loss running ticgrpo objective {objective!r} (ticgrpo.integrations.verl)."
    return policy_loss


def default_losses() -> dict[str, PolicyLossFn]:
    """verl loss name → function, for every objective verl can run."""
    losses = {}
    for spec in OBJECTIVES.specs():
        if unsupported_reason(spec, make_objective_config(spec.name)) is None:
            losses[f"{PREFIX}{spec.name}"] = make_policy_loss(spec.name)  # options from the environment
        for name, values in objective_option_sets(spec.name).items():
            if unsupported_reason(spec, make_objective_config(spec.name, values)) is None:
                losses[f"{PREFIX}{name}"] = make_policy_loss(spec.name, values)
    for name, fn in losses.items():
        fn.__name__ = name
    return losses


def register_objective(loss_mode: str, objective: str, options: Mapping[str, Any] | None = None) -> PolicyLossFn:
    """Register objective `objective` with `options` in verl under `loss_mode` (needs verl)."""
    from verl.trainer.ppo.core_algos import register_policy_loss

    fn = make_policy_loss(objective, options)
    fn.__name__ = loss_mode
    register_policy_loss(loss_mode)(fn)
    return fn


def register_all() -> list[str]:
    """Register `default_losses()` in verl; returns the names (needs verl)."""
    from verl.trainer.ppo.core_algos import register_policy_loss

    names = []
    for name, fn in default_losses().items():
        register_policy_loss(name)(fn)
        names.append(name)
    return names


# Registration on import: this is what verl's external_lib / VERL_USE_EXTERNAL_MODULES rely on.
# Without verl the adapters still work as plain functions; with verl, import errors surface.
REGISTERED: list[str] = register_all() if importlib.util.find_spec("verl") is not None else []


__all__ = [
    "OPTIONS_ENV",
    "PREFIX",
    "REGISTERED",
    "default_losses",
    "make_policy_loss",
    "register_all",
    "register_objective",
    "step_normalizers",
    "unsupported_reason",
]
