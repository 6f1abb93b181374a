"""Naive loop implementations of the §4.4 variants (explicit loops, Python branching), used
to check the vectorised objectives in ticgrpo.core.objectives.{gspo,gmpo,cispo,dppo,gtpo}."""

from __future__ import annotations

import math

import torch
from naive import naive_aggregate, naive_grpo, naive_kl, naive_tic_grpo
from torch import Tensor


def _tokens(mask: Tensor, i: int) -> list[int]:
    return [t for t in range(mask.shape[1]) if mask[i, t] > 0]


def _mean_kl(logp, ref, i, tokens, kl):
    return sum(naive_kl(kl, logp[i, t], ref[i, t]) for t in tokens) / len(tokens)


def naive_gspo(logp, old, ref, mask, adv, *, eps_low, eps_high, beta, kl, n_seq):
    total = torch.zeros((), dtype=torch.float64)
    for i in range(logp.shape[0]):
        tokens = _tokens(mask, i)
        if not tokens:
            continue
        s = torch.exp(sum(logp[i, t] - old[i, t] for t in tokens) / len(tokens))
        lo = 1 - eps_low if eps_low is not None else -math.inf
        hi = 1 + eps_high if eps_high is not None else math.inf
        loss_i = -torch.minimum(s * adv[i], torch.clamp(s, lo, hi) * adv[i])
        if beta:
            loss_i = loss_i + beta * _mean_kl(logp, ref, i, tokens, kl)
        total = total + loss_i / n_seq
    return total


def naive_gmpo(logp, old, ref, mask, adv, *, eps, beta, kl, n_seq):
    total = torch.zeros((), dtype=torch.float64)
    for i in range(logp.shape[0]):
        tokens = _tokens(mask, i)
        if not tokens:
            continue
        clipped = []
        for t in tokens:
            x = logp[i, t] - old[i, t]
            if eps is not None and adv[i] > 0:
                x = torch.clamp(x, max=eps)
            elif eps is not None and adv[i] < 0:
                x = torch.clamp(x, min=-eps)
            clipped.append(x)
        loss_i = -adv[i] * torch.exp(sum(clipped) / len(tokens))
        if beta:
            loss_i = loss_i + beta * _mean_kl(logp, ref, i, tokens, kl)
        total = total + loss_i / n_seq
    return total


def naive_cispo(logp, old, ref, mask, adv, *, eps_low, eps_high, beta, kl, aggregation, n_seq, n_tok, l_max):
    rows = []
    for i in range(logp.shape[0]):
        terms = []
        for t in _tokens(mask, i):
            rho = math.exp(float(logp[i, t].detach() - old[i, t]))
            if eps_high is not None:
                rho = min(rho, 1 + eps_high)
            if eps_low is not None:
                rho = max(rho, 1 - eps_low)
            term = -rho * adv[i] * logp[i, t]
            if beta:
                term = term + beta * naive_kl(kl, logp[i, t], ref[i, t])
            terms.append(term)
        rows.append(terms)
    return naive_aggregate(rows, aggregation, n_seq, n_tok, l_max)


def naive_dppo_drop(p: float, q: float, a: float, divergence: str, delta: float) -> bool:
    """Is the token dropped? p = π (current), q = π_old, a = advantage."""
    if divergence == "tv":
        return (a > 0 and p - q > delta) or (a < 0 and p - q < -delta)
    d = q * math.log(q / p) + ((1 - q) * math.log((1 - q) / (1 - p)) if q < 1 else 0.0)
    return d > delta and ((a > 0 and p > q) or (a < 0 and p < q))


def naive_dppo(logp, old, ref, mask, adv, *, divergence, delta, cap, beta, kl, aggregation, n_seq, n_tok, l_max):
    rows = []
    for i in range(logp.shape[0]):
        terms = []
        for t in _tokens(mask, i):
            p, q, a = math.exp(float(logp[i, t].detach())), math.exp(float(old[i, t])), float(adv[i])
            w = math.exp(float(logp[i, t].detach() - old[i, t]))
            if cap is not None:
                w = min(w, cap)
            term = 0.0 * logp[i, t] if naive_dppo_drop(p, q, a, divergence, delta) else -a * w * logp[i, t]
            if beta:
                term = term + beta * naive_kl(kl, logp[i, t], ref[i, t])
            terms.append(term)
        rows.append(terms)
    return naive_aggregate(rows, aggregation, n_seq, n_tok, l_max)


def naive_conflicts(token_ids, mask, adv, group_ids) -> set[tuple[int, int]]:
    """(i, t) pairs of conflict tokens: leading runs shared with opposite-sign completions."""
    flags = set()
    n = token_ids.shape[0]
    for i in range(n):
        for j in range(n):
            if group_ids[i] != group_ids[j] or not (adv[i] * adv[j] < 0):
                continue
            ti, tj = _tokens(mask, i), _tokens(mask, j)
            k = 0
            while k < len(ti) and k < len(tj) and token_ids[i, ti[k]] == token_ids[j, tj[k]]:
                flags.add((i, ti[k]))
                k += 1
            k = 0
            while k < len(ti) and k < len(tj) and token_ids[i, ti[-1 - k]] == token_ids[j, tj[-1 - k]]:
                flags.add((i, ti[-1 - k]))
                k += 1
    return flags


def naive_gtpo(logp, ref, mask, adv, token_ids, entropies, group_ids, *, threshold, penalty, w_pos, w_neg,
               normalize, beta, kl, aggregation, n_seq, n_tok, l_max):
    conflicts = naive_conflicts(token_ids, mask, adv, group_ids)
    rows: list[list[Tensor]] = []
    for i in range(logp.shape[0]):
        tokens = _tokens(mask, i)
        if not tokens:
            rows.append([])
            continue
        h = sum(float(entropies[i, t]) for t in tokens) / len(tokens)
        a = float(adv[i])
        a_adj = 0.0 if (threshold is not None and h > threshold) else a - penalty * h
        count = sum(1 for t in tokens if (i, t) in conflicts)
        terms = []
        for t in tokens:
            weight = 1.0
            if (i, t) in conflicts:
                weight = w_pos if a > 0 else w_neg
            term = -a_adj * weight * logp[i, t]
            if normalize:
                term = term / max(1, count)
            if beta:
                term = term + beta * naive_kl(kl, logp[i, t], ref[i, t])
            terms.append(term)
        rows.append(terms)
    return naive_aggregate(rows, aggregation, n_seq, n_tok, l_max)


def naive_ppo_rpe(logp, old, ref, mask, adv, *, relative_beta, eps, rpe_coef, beta, kl, aggregation, n_seq, n_tok,
                  l_max):
    """r = π/(b π + (1−b) π_old) from the probabilities themselves; PPO's clip on r; (|A|/2ε)(r − 1)²."""
    rows = []
    for i in range(logp.shape[0]):
        terms = []
        for t in _tokens(mask, i):
            a = adv[i, t] if adv.dim() == 2 else adv[i]
            p, q = torch.exp(logp[i, t]), math.exp(float(old[i, t]))
            r = p / (relative_beta * p + (1 - relative_beta) * q)
            s = torch.minimum(r * a, torch.clamp(r, 1 - eps, 1 + eps) * a)
            term = -s + rpe_coef * abs(float(a)) / (2 * eps) * (r - 1) ** 2
            if beta:
                term = term + beta * naive_kl(kl, logp[i, t], ref[i, t])
            terms.append(term)
        rows.append(terms)
    return naive_aggregate(rows, aggregation, n_seq, n_tok, l_max)


def naive_hpo(logp, old, ref, mask, adv, *, eps, classifier, beta, kl, aggregation, n_seq, n_tok, l_max):
    """|A|·max(0, ε − sgn(A)·f(ρ)) with ρ = π/π_old and f one of ρ − 1, log ρ, √ρ − 1, by hand."""
    rows = []
    for i in range(logp.shape[0]):
        terms = []
        for t in _tokens(mask, i):
            a = adv[i, t] if adv.dim() == 2 else adv[i]
            rho = torch.exp(logp[i, t]) / math.exp(float(old[i, t]))
            if classifier == "ratio_minus_one":
                score = rho - 1
            elif classifier == "log_ratio":
                score = torch.log(rho)
            else:
                score = torch.sqrt(rho) - 1
            label = 1.0 if a > 0 else (-1.0 if a < 0 else 0.0)
            margin = eps - label * score
            term = abs(float(a)) * margin if margin >= 0 else 0.0 * logp[i, t]
            if beta:
                term = term + beta * naive_kl(kl, logp[i, t], ref[i, t])
            terms.append(term)
        rows.append(terms)
    return naive_aggregate(rows, aggregation, n_seq, n_tok, l_max)


def naive_copg(logp, old, ref, mask, adv, *, eps, beta, kl, aggregation, n_seq, n_tok, l_max):
    """min(A log π, A clip(log π, log((1−ε)π_old), log((1+ε)π_old))), from the probabilities."""
    rows = []
    for i in range(logp.shape[0]):
        terms = []
        for t in _tokens(mask, i):
            a = adv[i, t] if adv.dim() == 2 else adv[i]
            p_old = math.exp(float(old[i, t]))
            lo, hi = math.log((1 - eps) * p_old), math.log((1 + eps) * p_old)
            term = -torch.minimum(a * logp[i, t], a * torch.clamp(logp[i, t], lo, hi))
            if beta:
                term = term + beta * naive_kl(kl, logp[i, t], ref[i, t])
            terms.append(term)
        rows.append(terms)
    return naive_aggregate(rows, aggregation, n_seq, n_tok, l_max)


# ---------------------------------------------------------------- one oracle per registered objective
def naive_trajectory_reuse(logp, window, shares, ref, mask, adv, *, eps_low, eps_high, ratio_cap, length_normalize,
                           beta, kl, n_seq):
    """The balance heuristic by hand: log q_i = log Σ_j share_j exp(Σ_t window_j[t]), then tic_grpo's surrogate."""
    total = torch.zeros((), dtype=torch.float64)
    for i in range(logp.shape[0]):
        tokens = [t for t in range(logp.shape[1]) if mask[i, t] > 0]
        if not tokens:
            continue
        mixture = sum(shares[i, j] * math.exp(sum(float(window[i, j, t]) for t in tokens))
                      for j in range(window.shape[1]))
        w = torch.exp(sum(logp[i, t] for t in tokens) - math.log(mixture))
        c = torch.clamp(w, max=1 + eps_high) if eps_high is not None else w
        if eps_low is not None:
            c = torch.clamp(c, min=1 - eps_low)
        surrogate = torch.minimum(w * adv[i], c * adv[i])
        if ratio_cap is not None and adv[i] < 0:
            surrogate = torch.maximum(surrogate, ratio_cap * adv[i])
        if length_normalize:
            surrogate = surrogate / len(tokens)
        loss_i = -surrogate
        if beta:
            loss_i = loss_i + beta * sum(naive_kl(kl, logp[i, t], ref[i, t]) for t in tokens) / len(tokens)
        total = total + loss_i / n_seq
    return total


# ORACLES[name](d, options, counts) -> loss, from the loops above: `d` holds the batch (logp: the
# leaf, old, ref, mask, adv [B], tokens, entropies, groups), `options` the objective's options
# instance, `counts` n_seq, n_tok, l_max. tests/test_objective_contract.py checks every registered
# objective against its entry here: registering an objective without adding one fails there.
def naive_nthr_advantages(hidden, mask, adv, group_ids, *, threshold, scale):
    """[B][T] list of A'_{i,t}: A_i, times `scale` on a real token of a negative completion whose
    cosine similarity to some real token of a positive completion of its group reaches `threshold`."""
    def cosine(u, v):
        dot = sum(u[k] * v[k] for k in range(len(u)))
        norm_u = math.sqrt(sum(float(x) ** 2 for x in u))
        norm_v = math.sqrt(sum(float(x) ** 2 for x in v))
        return float(dot) / (max(norm_u, 1e-12) * max(norm_v, 1e-12))

    rows = []
    for i in range(mask.shape[0]):
        row = []
        for t in range(mask.shape[1]):
            weight = 1.0
            if mask[i, t] > 0 and adv[i] < 0:
                best = -math.inf
                for j in range(mask.shape[0]):
                    if group_ids[j] != group_ids[i] or not adv[j] > 0:
                        continue
                    for u in _tokens(mask, j):
                        best = max(best, cosine(hidden[i, t].tolist(), hidden[j, u].tolist()))
                if best >= threshold:
                    weight = scale
            row.append(weight * adv[i])
        rows.append(row)
    return rows


def _nthr_oracle(d, o, counts):
    rows = naive_nthr_advantages(d["hidden"], d["mask"], d["adv"], d["groups"],
                                 threshold=o.similarity_threshold, scale=o.penalty_scale)
    token_adv = torch.stack([torch.stack([torch.as_tensor(a, dtype=d["logp"].dtype) for a in row]) for row in rows])
    return naive_grpo(d["logp"], d["old"], d["ref"], d["mask"], token_adv, eps_low=o.epsilon_low,
                      eps_high=o.epsilon_high, beta=o.beta, kl=o.kl_estimator, aggregation=o.aggregation, **counts)


def _grpo_oracle(d, o, counts):
    return naive_grpo(d["logp"], d["old"], d["ref"], d["mask"], d["adv"], eps_low=o.epsilon_low,
                      eps_high=o.epsilon_high, beta=o.beta, kl=o.kl_estimator, aggregation=o.aggregation, **counts)


def _no_is_oracle(d, o, counts):
    return naive_grpo(d["logp"], d["old"], d["ref"], d["mask"], d["adv"], eps_low=None, eps_high=None,
                      beta=o.beta, kl=o.kl_estimator, aggregation=o.aggregation, no_ratio=True, **counts)


def _tic_grpo_oracle(d, o, counts):
    return naive_tic_grpo(d["logp"], d["old"], d["ref"], d["mask"], d["adv"], eps_low=o.epsilon_low,
                          eps_high=o.epsilon_high, ratio_cap=o.ratio_cap, length_normalize=o.length_normalize,
                          beta=o.beta, kl=o.kl_estimator, n_seq=counts["n_seq"])


def _gspo_oracle(d, o, counts):
    return naive_gspo(d["logp"], d["old"], d["ref"], d["mask"], d["adv"], eps_low=o.epsilon_low,
                      eps_high=o.epsilon_high, beta=o.beta, kl=o.kl_estimator, n_seq=counts["n_seq"])


def _gmpo_oracle(d, o, counts):
    return naive_gmpo(d["logp"], d["old"], d["ref"], d["mask"], d["adv"], eps=o.epsilon, beta=o.beta,
                      kl=o.kl_estimator, n_seq=counts["n_seq"])


def _cispo_oracle(d, o, counts):
    return naive_cispo(d["logp"], d["old"], d["ref"], d["mask"], d["adv"], eps_low=o.epsilon_low,
                       eps_high=o.epsilon_high, beta=o.beta, kl=o.kl_estimator, aggregation=o.aggregation, **counts)


def _dppo_oracle(divergence):
    def oracle(d, o, counts):
        return naive_dppo(d["logp"], d["old"], d["ref"], d["mask"], d["adv"], divergence=divergence, delta=o.delta,
                          cap=o.is_cap, beta=o.beta, kl=o.kl_estimator, aggregation=o.aggregation, **counts)
    return oracle


def _gtpo_oracle(d, o, counts):
    return naive_gtpo(d["logp"], d["ref"], d["mask"], d["adv"], d["tokens"], d["entropies"], d["groups"],
                      threshold=o.entropy_threshold, penalty=o.entropy_penalty, w_pos=o.conflict_weight_positive,
                      w_neg=o.conflict_weight_negative, normalize=o.normalize_by_conflicts, beta=o.beta,
                      kl=o.kl_estimator, aggregation=o.aggregation, **counts)


def _trajectory_reuse_oracle(d, o, counts):
    return naive_trajectory_reuse(d["logp"], d["window"], d["shares"], d["ref"], d["mask"], d["adv"],
                                  eps_low=o.epsilon_low, eps_high=o.epsilon_high, ratio_cap=o.ratio_cap,
                                  length_normalize=o.length_normalize, beta=o.beta, kl=o.kl_estimator,
                                  n_seq=counts["n_seq"])


def _ppo_rpe_oracle(d, o, counts):
    return naive_ppo_rpe(d["logp"], d["old"], d["ref"], d["mask"], d["adv"], relative_beta=o.relative_beta,
                         eps=o.epsilon, rpe_coef=o.rpe_coef, beta=o.beta, kl=o.kl_estimator,
                         aggregation=o.aggregation, **counts)


def _hpo_oracle(d, o, counts):
    return naive_hpo(d["logp"], d["old"], d["ref"], d["mask"], d["adv"], eps=o.epsilon, classifier=o.classifier,
                     beta=o.beta, kl=o.kl_estimator, aggregation=o.aggregation, **counts)


def _copg_oracle(d, o, counts):
    return naive_copg(d["logp"], d["old"], d["ref"], d["mask"], d["adv"], eps=o.epsilon, beta=o.beta,
                      kl=o.kl_estimator, aggregation=o.aggregation, **counts)


ORACLES = {
    "grpo": _grpo_oracle,
    "dr_grpo": _grpo_oracle,
    "dapo": _grpo_oracle,
    "no_is": _no_is_oracle,
    "tic_grpo": _tic_grpo_oracle,
    "gspo": _gspo_oracle,
    "gmpo": _gmpo_oracle,
    "cispo": _cispo_oracle,
    "dppo_tv": _dppo_oracle("tv"),
    "dppo_kl": _dppo_oracle("kl"),
    "gtpo": _gtpo_oracle,
    "trajectory_reuse": _trajectory_reuse_oracle,
    "nthr": _nthr_oracle,
    "ppo_rpe": _ppo_rpe_oracle,
    "hpo": _hpo_oracle,
    "copg": _copg_oracle,
}
