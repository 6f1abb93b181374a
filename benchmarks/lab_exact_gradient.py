"""Time of the lab's exact J and ∇J over every enumerated trajectory, vs a per-trajectory loop.

Vectorised: one [P, V] log-prob table, one gather of all N·L token log-probs, J = Σ π(o) r(o),
one backward. Naive peer: a Python loop over trajectories and positions, each step computing the
log-softmax of its prefix's logits (the MLP for `neural`), timed on a random subset of
`--naive-subset` trajectories (forward + backward) and scaled up to N. One CPU thread.

    python benchmarks/lab_exact_gradient.py                      # V=5, L=7: 21,845 trajectories
    python benchmarks/lab_exact_gradient.py --policy neural --vocab 6 --max-len 6
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ticgrpo.lab import Problem, enumerate_trajectories, exact_gradient, make_policy, make_rewards
from ticgrpo.lab.policies import NeuralPolicy


def naive_subset_time(problem: Problem, theta: torch.Tensor, rows: torch.Tensor) -> float:
    """Seconds for Σ_{o ∈ rows} π(o) r(o) and its gradient, one trajectory and one token at a time."""
    space, policy = problem.space, problem.policy
    start = time.perf_counter()
    th = theta.clone().requires_grad_(True)
    total = th.new_zeros(())
    for i in rows.tolist():
        logp = th.new_zeros(())
        for t in range(int(space.lengths[i])):
            p = int(space.prefix_ids[i, t])
            if policy.name == "tabular":
                row = torch.log_softmax(th.view(space.num_prefixes, space.vocab_size)[p], dim=-1)
            else:  # the MLP on this one prefix
                assert isinstance(policy, NeuralPolicy)
                w = policy.unflatten(th)
                x = w["tok"][space.prefix_last[p]] + w["pos"][space.prefix_len[p]]
                x = x + (space.prefix_counts[p] / space.max_len) @ w["cnt"]
                row = torch.log_softmax(torch.tanh(x @ w["w1"] + w["b1"]) @ w["w2"] + w["b2"], dim=-1)
            logp = logp + row[space.tokens[i, t]]
        total = total + logp.exp() * problem.rewards[i]
    total.backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", choices=("tabular", "neural"), default="tabular")
    parser.add_argument("--vocab", type=int, default=5)
    parser.add_argument("--max-len", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--naive-subset", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(1)

    start = time.perf_counter()
    space = enumerate_trajectories(args.vocab, args.max_len)
    enum_s = time.perf_counter() - start
    problem = Problem(space, make_policy(args.policy, space), make_rewards("target", space))
    theta = problem.policy.init(0)
    exact_gradient(problem, theta)  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        exact_gradient(problem, theta)
        times.append(time.perf_counter() - start)
    fast = min(times)
    gen = torch.Generator().manual_seed(0)
    n = space.num_trajectories
    rows = torch.randperm(n, generator=gen)[: min(args.naive_subset, n)]
    naive = naive_subset_time(problem, theta, rows) * n / rows.numel()
    result = {
        "policy": args.policy,
        "vocab": args.vocab,
        "max_len": args.max_len,
        "num_trajectories": n,
        "num_params": problem.policy.num_params,
        "enumerate_s": round(enum_s, 4),
        "exact_grad_s": round(fast, 4),
        "naive_loop_s_scaled": round(naive, 2),
        "naive_subset": int(rows.numel()),
        "speedup": round(naive / fast, 1),
    }
    print(f"{n} trajectories: enumerate {enum_s:.3f} s, exact J + ∇J {fast * 1e3:.1f} ms (best of {args.repeats})")
    print(f"naive per-trajectory loop (from {rows.numel()}, scaled to {n}): {naive:.2f} s → ×{naive / fast:.0f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
