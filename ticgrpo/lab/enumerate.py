"""Every trajectory of an autoregressive policy over a small vocabulary, enumerated at once.

Tokens are 0..V−1 and token 0 is EOS. A trajectory o = (o_1..o_n) stops at its first EOS or
at the max length L: n ≤ L, o_t ≠ EOS for t < n, and o_n = EOS unless n = L (truncated).
With K = V − 1 non-EOS tokens:

    prefixes     (o_1..o_t), t = 0..L−1, all non-EOS:   P = Σ_{t=0}^{L−1} K^t
    trajectories N = Σ_{n=1}^{L−1} K^{n−1}  (end in EOS before L)  +  V·K^{L−1}  (length L)

A prefix of length t is numbered offset_t + Σ_j (o_{j+1} − 1)·K^{t−1−j} (base-K digits), so the
prefix under every position of every trajectory is pure arithmetic and the whole space is built
with tensor ops (no per-trajectory Python loop). log π(o) = Σ_t log π(o_t | prefix_{t−1}) is then a
single gather from the [P, V] table of next-token log-probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

EOS = 0


@dataclass(frozen=True)
class TrajectorySpace:
    """All trajectories of length ≤ L over V tokens (EOS = 0), as padded [N, L] tensors.

    tokens:        [N, L] long, token ids (0 at padding).
    mask:          [N, L] bool, True on the trajectory's tokens.
    lengths:       [N] long, |o| (counting the final EOS).
    truncated:     [N] bool, the trajectory reached L without EOS.
    prefix_ids:    [N, L] long, id of the prefix o_{<t} that generated o_t (0 at padding).
    flat_index:    [N, L] long, prefix_id·V + token: the entry of the flattened [P, V] table.
    prefix_len:    [P] long, length of each prefix.
    prefix_last:   [P] long, its last token, or V (a BOS id) for the empty prefix.
    prefix_counts: [P, V] float64, how often each token occurs in the prefix.
    """

    vocab_size: int
    max_len: int
    tokens: Tensor
    mask: Tensor
    lengths: Tensor
    truncated: Tensor
    prefix_ids: Tensor
    flat_index: Tensor
    prefix_len: Tensor
    prefix_last: Tensor
    prefix_counts: Tensor

    @property
    def num_trajectories(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def num_prefixes(self) -> int:
        return int(self.prefix_len.shape[0])

    def token_logprobs(self, table: Tensor, rows: Tensor | None = None) -> Tensor:
        """ℓ[i, t] = table[prefix_ids[i, t], tokens[i, t]] (0 at padding): [N, L] or [len(rows), L].

        `table` is the [P, V] log-softmax table of a policy; gradients flow into it.
        """
        index = self.flat_index if rows is None else self.flat_index[rows]
        mask = self.mask if rows is None else self.mask[rows]
        picked = table.reshape(-1)[index]
        return torch.where(mask, picked, torch.zeros_like(picked))

    def sequence_logprobs(self, table: Tensor) -> Tensor:
        """log π(o) = Σ_t ℓ[o, t] for every trajectory: [N]."""
        return self.token_logprobs(table).sum(dim=1)


def _digits(count: int, width: int, base: int) -> Tensor:
    """[count, width] base-`base` digits of 0..count−1, most significant first."""
    codes = torch.arange(count, dtype=torch.long)
    powers = base ** torch.arange(width - 1, -1, -1, dtype=torch.long)
    return (codes[:, None] // powers[None, :]) % base if width else codes[:, None][:, :0]


def enumerate_trajectories(vocab_size: int, max_len: int) -> TrajectorySpace:
    """Build the `TrajectorySpace` of V = `vocab_size` tokens (EOS = 0) and length ≤ `max_len`."""
    if vocab_size < 2:
        raise ValueError(f"vocab size must be at least 2 (EOS and one symbol), got {vocab_size}")
    if max_len < 1:
        raise ValueError(f"max length must be at least 1, got {max_len}")
    k, big_l = vocab_size - 1, max_len
    level_sizes = [k**t for t in range(big_l)]
    offsets = [sum(level_sizes[:t]) for t in range(big_l)]
    num_prefixes = sum(level_sizes)
    if num_prefixes * vocab_size > 50_000_000:
        raise ValueError(
            f"V={vocab_size}, L={max_len} has {num_prefixes * vocab_size} table entries; too many to enumerate"
        )

    # Prefix features, level by level (one tensor op per level, L levels).
    prefix_len = torch.cat([torch.full((n,), t, dtype=torch.long) for t, n in enumerate(level_sizes)])
    lasts, counts = [], []
    for t, n in enumerate(level_sizes):
        toks = _digits(n, t, k) + 1  # [n, t] non-EOS tokens
        lasts.append(toks[:, -1] if t else torch.full((n,), vocab_size, dtype=torch.long))
        c = torch.zeros(n, vocab_size, dtype=torch.float64)
        if t:
            c.scatter_add_(1, toks, torch.ones_like(toks, dtype=torch.float64))
        counts.append(c)

    # Trajectories: (prefix of length n−1) + EOS for n < L, and (prefix of length L−1) + any token.
    blocks_tok, blocks_pid = [], []
    for n in range(1, big_l + 1):
        t = n - 1  # prefix length
        prefix_tokens = _digits(level_sizes[t], t, k) + 1  # [K^t, t]
        codes = torch.arange(level_sizes[t], dtype=torch.long)
        # id of the sub-prefix of length s ≤ t: offset_s + code // K^(t−s)
        sub_ids = torch.stack([offsets[s] + codes // (k ** (t - s)) for s in range(t + 1)], dim=1)
        finals = torch.arange(vocab_size) if n == big_l else torch.tensor([EOS])
        reps = finals.numel()
        tok = torch.cat([prefix_tokens.repeat_interleave(reps, 0), finals.repeat(level_sizes[t])[:, None]], dim=1)
        pid = sub_ids.repeat_interleave(reps, 0)
        pad = big_l - n
        blocks_tok.append(torch.nn.functional.pad(tok, (0, pad)))
        blocks_pid.append(torch.nn.functional.pad(pid, (0, pad)))
    tokens = torch.cat(blocks_tok)
    prefix_ids = torch.cat(blocks_pid)
    positions = torch.arange(big_l)[None, :]
    eos_at = torch.where(tokens == EOS, positions, torch.full_like(tokens, big_l)).min(dim=1).values
    lengths = torch.clamp(eos_at + 1, max=big_l)
    mask = positions < lengths[:, None]
    tokens = torch.where(mask, tokens, torch.zeros_like(tokens))
    prefix_ids = torch.where(mask, prefix_ids, torch.zeros_like(prefix_ids))
    truncated = (lengths == big_l) & (tokens[:, -1] != EOS)
    return TrajectorySpace(
        vocab_size=vocab_size,
        max_len=max_len,
        tokens=tokens,
        mask=mask,
        lengths=lengths,
        truncated=truncated,
        prefix_ids=prefix_ids,
        flat_index=prefix_ids * vocab_size + tokens,
        prefix_len=prefix_len,
        prefix_last=torch.cat(lasts),
        prefix_counts=torch.cat(counts),
    )


def num_trajectories(vocab_size: int, max_len: int) -> int:
    """N = Σ_{n=1}^{L−1} K^{n−1} + V·K^{L−1} with K = V − 1 (closed-form count)."""
    k = vocab_size - 1
    return sum(k ** (n - 1) for n in range(1, max_len)) + vocab_size * k ** (max_len - 1)
