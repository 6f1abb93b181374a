"""Per-token log-probs (and entropies) of sampled completion tokens, without B×T×V logits.

The policy-gradient losses only need ``log π(y_t | y_<t)`` of the *sampled* token at each
completion position (and optionally the entropy of the distribution).  Materialising the
full logits (``B×T×V``, ``V ≈ 150k`` for Qwen) and a float32 ``log_softmax`` of them dominates
the memory of an RL step.  This module instead

1. runs only the decoder body (which includes the final norm) to get last hidden states,
2. keeps only the hidden states of real completion positions (a flat ``[N, H]``; padding never
   reaches the LM head),
3. applies the LM head ``chunk_size`` rows at a time inside a custom autograd function that
   saves only the hidden states, the weight, the targets and one logsumexp per row, and
   recomputes each chunk's logits in backward (the "fused linear cross-entropy" trick).

So neither forward nor backward ever holds more than ``chunk_size × V`` logits at once.

Models whose logits are not just ``lm_head(hidden)`` (logit soft-capping, a logit scale, a
LoRA-wrapped or non-``Linear`` head, prompt-learning PEFT, or no findable decoder) take a
slower but correct fallback that calls the model with ``logits_to_keep``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["CompletionScores", "completion_logprobs", "completion_scores", "token_logprobs_from_hidden"]

# Config attributes that mean "the logits are not plain lm_head(hidden)".  A value of None
# (or 1.0 for multiplicative scales) is harmless.
_LOGIT_TRANSFORM_ATTRS = (
    "final_logit_softcapping",
    "logit_softcapping",
    "logit_scale",
    "logits_scaling",
    "lm_head_multiplier",
    "output_logits_scaling",
)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for every low-precision dtype, float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


_ENTROPY_SUBBLOCK = 8


def _subblocks(rows: int) -> list[slice]:
    step = max(1, -(-rows // _ENTROPY_SUBBLOCK))
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


def _chunk_logits(h: Tensor, w: Tensor, b: Tensor | None, temperature: float, compute_dtype: torch.dtype) -> Tensor:
    """logits = (h @ wᵀ + b) in ``compute_dtype``, upcast to the accumulation dtype, / T."""
    y = F.linear(h.to(compute_dtype), w, b)
    z = y.to(_acc_dtype(compute_dtype))
    del y  # drop the low-precision copy before anything else is allocated
    if temperature != 1.0:
        z.div_(temperature)
    return z


class _ChunkedLinearLogProbs(torch.autograd.Function):
    """log p(target) (and entropy) of softmax((hidden @ Wᵀ + b) / T), chunked over rows.

    Saves hidden [N, H], weight [V, H], bias [V], targets [N], the per-row logsumexp [N] and
    (if computed) the entropy [N].  Backward recomputes each chunk's logits.  With z the
    tempered logits, p = softmax(z), ℓ = z_y − lse and H = lse − Σ p z:

        ∂ℓ/∂z = onehot(y) − p,        ∂H/∂z = −p ⊙ (z − Σ p z) = −p ⊙ (log p + H),

    and the chain rule through z = (hWᵀ + b)/T divides by T once more.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size, with_entropy, compute_dtype):
        ctx.set_materialize_grads(False)
        n = hidden.shape[0]
        acc = _acc_dtype(compute_dtype)
        device = hidden.device
        lse = torch.empty(n, dtype=acc, device=device)
        logp = torch.empty(n, dtype=acc, device=device)
        ent = torch.empty(n, dtype=acc, device=device) if with_entropy else None
        with torch.autocast(device_type=device.type, enabled=False):
            w = weight.to(compute_dtype)
            b = bias.to(compute_dtype) if bias is not None else None
            for s in range(0, n, chunk_size):
                e = min(s + chunk_size, n)
                z = _chunk_logits(hidden[s:e], w, b, temperature, compute_dtype)
                tgt = z.gather(1, targets[s:e, None]).squeeze(1)
                m = z.amax(dim=1, keepdim=True)
                z.sub_(m)  # z - max, in place
                if ent is not None:
                    # H = log Σe^{z'} − Σ e^{z'} z' / Σ e^{z'} with z' = z − max; the exp temporary
                    # is only _ENTROPY_SUBBLOCK-th of the chunk.
                    sumexp = torch.empty(e - s, dtype=acc, device=device)
                    ez_z = torch.empty(e - s, dtype=acc, device=device)
                    for r in _subblocks(e - s):
                        zr = z[r]
                        ez = torch.exp(zr)
                        sumexp[r] = ez.sum(1)
                        ez_z[r] = torch.bmm(ez.unsqueeze(1), zr.unsqueeze(2)).view(-1)
                        del ez, zr  # a view keeps the whole chunk alive
                    ent[s:e] = sumexp.log() - ez_z / sumexp
                else:
                    sumexp = z.exp_().sum(1)
                del z
                lse[s:e] = m.squeeze(1) + sumexp.log()
                logp[s:e] = tgt - lse[s:e]
        ctx.save_for_backward(hidden, weight, bias, targets, lse, ent)
        ctx.temperature = temperature
        ctx.chunk_size = chunk_size
        ctx.compute_dtype = compute_dtype
        if ent is None:
            ent = logp.new_empty(0)
            ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        hidden, weight, bias, targets, lse, ent = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if ent is None:
            g_ent = None
        if (g_logp is None and g_ent is None) or not (need_h or need_w or need_b):
            return (None,) * 8
        temperature, chunk_size, cdt = ctx.temperature, ctx.chunk_size, ctx.compute_dtype
        acc = _acc_dtype(cdt)
        n = hidden.shape[0]
        grad_h = torch.empty_like(hidden) if need_h else None
        # Weight gradient is accumulated chunk by chunk with addmm in the compute dtype (like
        # fused-linear-CE kernels); with a float32 model this is exact float32 accumulation.
        grad_w = torch.zeros(weight.shape, dtype=cdt, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_b else None
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            w = weight.to(cdt)
            b = bias.to(cdt) if bias is not None else None
            for s in range(0, n, chunk_size):
                e = min(s + chunk_size, n)
                h = hidden[s:e].to(cdt)
                z = _chunk_logits(h, w, b, temperature, cdt)
                z.sub_(lse[s:e, None])  # log p
                grad = _logits_grad(
                    z,
                    g_logp[s:e] if g_logp is not None else None,
                    g_ent[s:e] if g_ent is not None else None,
                    ent[s:e] if g_ent is not None else None,
                    targets[s:e],
                    temperature,
                )
                del z  # `grad` is the only reference, so `del grad` below frees it
                if grad_b is not None:
                    grad_b += grad.sum(0)
                dy = grad.to(cdt)
                del grad
                if grad_h is not None:
                    grad_h[s:e] = dy @ w
                if grad_w is not None:
                    grad_w.addmm_(dy.t(), h)
                del dy
        if grad_w is not None:
            grad_w = grad_w.to(weight.dtype)
        if grad_b is not None:
            grad_b = grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None, None


def _logits_grad(
    log_p: Tensor,
    g_logp: Tensor | None,
    g_ent: Tensor | None,
    ent: Tensor | None,
    targets: Tensor,
    temperature: float,
) -> Tensor:
    """The gradient w.r.t. one chunk's logits of Σ g_ℓ ℓ + g_H H, written in place over
    `log_p` (the chunk's log-softmax, [rows, V]) and returned: no second [rows, V] buffer."""
    acc = log_p.dtype
    if g_ent is not None and ent is not None:
        ge = g_ent[:, None].to(acc)
        gl = g_logp[:, None].to(acc) if g_logp is not None else None
        for r in _subblocks(log_p.shape[0]):  # small exp temporary
            zr = log_p[r]
            p = torch.exp(zr)
            zr.add_(ent[r, None]).mul_(ge[r])  # g_H · (log p + H)
            if gl is not None:
                zr.add_(gl[r])
            zr.mul_(p).neg_()  # −p ⊙ (g_ℓ + g_H (log p + H))
            del p, zr  # a view keeps the whole chunk alive
    elif g_logp is not None:
        log_p.exp_().mul_(-g_logp[:, None].to(acc))  # −g_ℓ p
    if g_logp is not None:
        log_p.scatter_add_(1, targets[:, None], g_logp[:, None].to(acc))  # + g_ℓ onehot
    if temperature != 1.0:
        log_p.div_(temperature)
    return log_p


def token_logprobs_from_hidden(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Log-prob of ``targets`` under ``softmax((hidden @ weightᵀ + bias) / temperature)``.

    Args:
        hidden: [N, H] final hidden states (after the final norm) of the positions that predict
            ``targets``.
        weight: [V, H] LM-head weight; bias: [V] or None.
        targets: [N] token ids.
        temperature: divides the logits (> 0).
        chunk_size: rows of logits materialised at once, in forward and in backward.
        with_entropy: also return the entropy of each row's distribution.

    Returns:
        (logprobs [N], entropies [N] or None), float32 (float64 if the inputs are float64).
        Both are differentiable w.r.t. hidden, weight and bias; nothing of size N×V is kept for
        backward (logits are recomputed chunk by chunk).

    Logits are computed in the weight's dtype (or the active autocast dtype), then upcast to
    float32 for logsumexp.  For low-precision weights the weight gradient is accumulated across
    chunks in that dtype (one rounding per chunk).
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"expected hidden [N, H] and weight [V, H], got {tuple(hidden.shape)}, {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets must be [N]={tuple(hidden.shape[:1])}, got {tuple(targets.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    dev = hidden.device.type
    compute_dtype = weight.dtype
    if weight.is_floating_point() and torch.is_autocast_enabled(dev):
        compute_dtype = torch.get_autocast_dtype(dev)
    logp, ent = _ChunkedLinearLogProbs.apply(
        hidden,
        weight,
        bias,
        targets.long(),
        float(temperature),
        int(chunk_size),
        bool(with_entropy),
        compute_dtype,
    )
    return logp, (ent if with_entropy else None)


def _text_config(model: nn.Module):
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        with contextlib.suppress(Exception):
            return config.get_text_config()
    return config


def _transforms_logits(model: nn.Module) -> bool:
    """True when the model's logits are not plain ``lm_head(hidden)``."""
    config = _text_config(model)
    for cfg in (config, getattr(model, "config", None)):
        if cfg is None:
            continue
        for name in _LOGIT_TRANSFORM_ATTRS:
            value = getattr(cfg, name, None)
            if value is not None and not (isinstance(value, (int, float)) and value == 1):
                return True
    return hasattr(model, "logit_scale") or hasattr(model, "logits_scaling")


def _resolve_decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """(decoder body incl. final norm, linear LM head) or None when the fast path is unsafe."""
    if _transforms_logits(model):
        return None
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return None
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    # exact nn.Linear (a LoRA / modules_to_save wrapper is not one): logits = F.linear(h, W, b)
    if type(head) is not nn.Linear:
        return None
    decoder = None
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        with contextlib.suppress(Exception):
            decoder = get_decoder()
    if decoder is None or decoder is model:
        base = getattr(model, "base_model", None)
        decoder = base if base is not None and base is not model else None
    if decoder is None or decoder is model or not isinstance(decoder, nn.Module):
        return None
    if any(m is head for m in decoder.modules()):  # the "decoder" would already apply the head
        return None
    return decoder, head


def _check_inputs(input_ids, attention_mask, completion_ids, completion_mask) -> tuple[int, int]:
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"input_ids/attention_mask must both be [B, L], got {tuple(input_ids.shape)} "
            f"and {tuple(attention_mask.shape)}"
        )
    if completion_ids.dim() != 2 or completion_mask.shape != completion_ids.shape:
        raise ValueError(
            f"completion_ids/completion_mask must both be [B, T], got "
            f"{tuple(completion_ids.shape)} and {tuple(completion_mask.shape)}"
        )
    b, length = input_ids.shape
    t = completion_ids.shape[1]
    if completion_ids.shape[0] != b:
        raise ValueError(f"batch mismatch: input_ids B={b}, completion_ids B={completion_ids.shape[0]}")
    if length - t < 1:
        raise ValueError(f"need at least one prompt position: L={length}, T={t}")
    return length - t, t


def _scatter_rows(values: Tensor, mask: Tensor) -> Tensor:
    out = torch.zeros(mask.shape, dtype=torch.float32, device=values.device)
    out[mask] = values.to(torch.float32)
    return out


def _scatter_hidden(rows: Tensor, mask: Tensor) -> Tensor:
    """[N, H] rows of the real positions into [B, T, H] (zeros on padding), same dtype."""
    out = rows.new_zeros((*mask.shape, rows.shape[-1]))
    out[mask] = rows
    return out


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions counted from each row's first real token, as `generate` computes them for
    left-padded prompts, so that scoring sees the positions sampling saw."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.clamp(min=0)


def _model_inputs(input_ids: Tensor, attention_mask: Tensor) -> dict:
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids_from_mask(attention_mask),
        "use_cache": False,
    }


def _fallback_rows(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    mask: Tensor,
    targets: Tensor,
    t: int,
    temperature: float,
    chunk_size: int,
    with_entropy: bool,
    with_hidden_states: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Correct path for any causal LM: logits of the T+1 last positions, log_softmax per chunk;
    with `with_hidden_states`, also the model's last `hidden_states` entry at the real completion
    positions ([N, H], detached)."""
    kwargs = _model_inputs(input_ids, attention_mask)
    if with_hidden_states:
        kwargs["output_hidden_states"] = True
    try:
        out = model(**kwargs, logits_to_keep=t + 1)
    except TypeError:  # model without logits_to_keep
        out = model(**kwargs)
    hidden_rows = out.hidden_states[-1][:, -(t + 1) : -1][mask].detach() if with_hidden_states else None
    logits = out.logits[:, -(t + 1) : -1]  # position P-1+t predicts completion token t
    del out
    rows = logits[mask]  # [N, V] in the model's dtype
    del logits

    def one_chunk(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        z = x.to(_acc_dtype(x.dtype)) / temperature
        logz = torch.log_softmax(z, dim=-1)
        lp = logz.gather(1, y[:, None]).squeeze(1)
        en = -(logz.exp() * logz).sum(-1) if with_entropy else lp.new_empty(0)
        return lp, en

    lps, ens = [], []
    for s in range(0, rows.shape[0], chunk_size):
        x, y = rows[s : s + chunk_size], targets[s : s + chunk_size]
        if torch.is_grad_enabled() and x.requires_grad:
            # don't keep a float32 [chunk, V] log_softmax per chunk for backward
            lp, en = checkpoint(one_chunk, x, y, use_reentrant=False)
        else:
            lp, en = one_chunk(x, y)
        lps.append(lp)
        ens.append(en)
    if not lps:
        empty = rows.new_zeros(0, dtype=torch.float32)
        return empty, (empty if with_entropy else None), hidden_rows
    return torch.cat(lps), (torch.cat(ens) if with_entropy else None), hidden_rows


@dataclass(frozen=True)
class CompletionScores:
    """What one forward pass of the policy gives for the sampled completion tokens."""

    logprobs: Tensor  # [B, T] float32, differentiable, 0.0 on padding
    entropies: Tensor | None  # [B, T] float32, differentiable; None unless asked for
    # [B, T, H] the last-layer (after the final norm) hidden state at the position that predicts
    # each completion token, detached, in the model's dtype, 0.0 on padding; None unless asked for
    hidden_states: Tensor | None


def completion_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_ids: Tensor,
    completion_mask: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """``(logprobs, entropies)`` of the sampled completion tokens: `completion_scores` without
    the hidden states."""
    scores = completion_scores(model, input_ids, attention_mask, completion_ids, completion_mask,
                               temperature=temperature, chunk_size=chunk_size, with_entropy=with_entropy)
    return scores.logprobs, scores.entropies


def completion_scores(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_ids: Tensor,
    completion_mask: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_entropy: bool = False,
    with_hidden_states: bool = False,
) -> CompletionScores:
    """Per-token log-probs (and entropies, and hidden states) of the sampled completion tokens.

    Convention: ``input_ids = cat([prompt_ids, completion_ids], dim=1)`` with the prompt
    left-padded to width P and the completion right-padded to width T, so ``L = P + T`` and the
    completion occupies the LAST T positions of ``input_ids``.  The logits predicting completion
    token ``t`` come from position ``P - 1 + t``.  ``attention_mask`` covers all L positions
    (0 on prompt left-padding and completion right-padding). Position ids are counted from
    each row's first real token (``cumsum(attention_mask) - 1``), as ``generate`` does, so
    left padding changes nothing and the log-probs match those of sampling.

    Args:
        model: a causal LM (``transformers.PreTrainedModel`` or PEFT wrapper of one).
        input_ids, attention_mask: [B, L].
        completion_ids: [B, T] sampled tokens (right-padded); must equal ``input_ids[:, -T:]``.
        completion_mask: [B, T] 1 (or True) for real completion tokens.
        temperature: logits are divided by it (use the sampling temperature).
        chunk_size: rows of LM-head logits materialised at once (forward and backward).
        with_entropy: also return the entropy of softmax(logits / temperature) per position.
        with_hidden_states: also return the last-layer hidden states of the completion
            positions (an objective whose spec has `needs_hidden_states`); detached.

    Returns:
        `CompletionScores`: logprobs and entropies [B, T] float32, 0.0 at positions where
        ``completion_mask`` is 0; ``entropies`` is None unless ``with_entropy``.  Both are
        differentiable (the entropy gradient is exact, not detached). ``hidden_states``
        [B, T, H] (None unless ``with_hidden_states``) are the states the LM head reads, 0.0 on
        padding, with no gradient.

    Fast path: decoder body → hidden states of real completion positions only → chunked
    LM head in a custom autograd function (see `token_logprobs_from_hidden`); memory is
    O(chunk_size × V) for the head instead of O(B × T × V), in forward and in backward.
    Logits are computed in the model's dtype and upcast to float32 for the logsumexp.
    Tied embeddings need no special handling (the same Parameter gets both gradients).
    Fallback (logit soft-capping, logit scaling, non-Linear/LoRA head, prompt-learning PEFT,
    no findable decoder): ``model(..., logits_to_keep=T+1)`` then a chunked, checkpointed
    float32 log_softmax; correct but holds the B×(T+1)×V logits of the model.
    """
    _, t = _check_inputs(input_ids, attention_mask, completion_ids, completion_mask)
    mask = completion_mask.bool()
    targets = completion_ids[mask].long()  # [N]
    resolved = _resolve_decoder_and_head(model)
    if resolved is None:
        logp, ent, hidden_rows = _fallback_rows(
            model, input_ids, attention_mask, mask, targets, t, temperature, chunk_size, with_entropy,
            with_hidden_states,
        )
    else:
        decoder, head = resolved
        out = decoder(**_model_inputs(input_ids, attention_mask))
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        del out
        hidden = hidden[:, -(t + 1) : -1][mask]  # [N, H]: only real completion positions
        hidden_rows = hidden.detach() if with_hidden_states else None
        logp, ent = token_logprobs_from_hidden(
            hidden, head.weight, head.bias, targets, temperature, chunk_size, with_entropy
        )
    return CompletionScores(
        logprobs=_scatter_rows(logp, mask),
        entropies=_scatter_rows(ent, mask) if with_entropy and ent is not None else None,
        hidden_states=None if hidden_rows is None else _scatter_hidden(hidden_rows, mask),
    )
