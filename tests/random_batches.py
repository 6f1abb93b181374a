"""Random float64 batches of one step shared by the objective tests (test_variants, the contract test).

Six sequences in two groups of three, right padding, log-probs < 0 (DPPO forms
probabilities), a small vocabulary and a shared prefix so that GTPO's conflict tokens occur.
"""

from __future__ import annotations

import torch

B, T, L_MAX, VOCAB = 6, 7, 9, 3
HIDDEN = 4  # width of the hidden states (nthr)
GROUPS = torch.tensor([0, 0, 0, 1, 1, 1])


def random_batch(seed: int, spread: float = 0.4, dtype=torch.float64):
    """Log-probs < 0 (DPPO forms probabilities), a small vocabulary (GTPO conflicts occur)."""
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3 - 1e-3
    old = (logp + spread * torch.randn(B, T, generator=g, dtype=torch.float64)).clamp(max=-1e-3)
    ref = logp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(torch.float64)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    adv[1] = 0.0
    tokens = torch.randint(0, VOCAB, (B, T), generator=g)
    tokens[4, :3] = tokens[3, :3]  # a shared prefix in group 1
    entropies = torch.rand(B, T, generator=g, dtype=torch.float64) * 1.2
    # a reuse window (trajectory_reuse): `old` and an older policy, sharing the pool 2:1;
    # window [B, J, T] token log-probs, shares [B, J] n_j/N, mixture [B] log Σ_j (n_j/N) P_j(o_i)
    older = (old + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)).clamp(max=-1e-3)
    window = torch.stack([old, older], dim=1)
    shares = torch.tensor([[2 / 3, 1 / 3]], dtype=torch.float64).expand(B, 2).clone()
    mixture = torch.logsumexp(shares.log() + (window * mask[:, None, :]).sum(dim=2), dim=1)
    # last-layer hidden states (nthr): an embedding of the token id plus noise, so that some tokens of
    # opposite-advantage completions are near (cosine above nthr's threshold) and others are not
    embedding = torch.randn(VOCAB, HIDDEN, generator=g, dtype=torch.float64)
    hidden = embedding[tokens] + 0.3 * torch.randn(B, T, HIDDEN, generator=g, dtype=torch.float64)
    return {"logp": logp.to(dtype), "old": old.to(dtype), "ref": ref.to(dtype), "mask": mask,
            "adv": adv.to(dtype), "tokens": tokens, "entropies": entropies, "groups": GROUPS.clone(),
            "window": window.to(dtype), "shares": shares.to(dtype), "mixture": mixture.to(dtype),
            "hidden": hidden.to(dtype)}
