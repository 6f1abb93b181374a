"""The `objectives` registry. Entries: fn(batch, config, norms) -> (loss, metrics).

Entry metadata: `default_advantage` (the advantage estimator the method is defined with)
and `uses_old_logprobs` (whether the loss reads ℓ^old, i.e. forms an importance ratio), and
`sequence_advantages` (the loss reads one advantage per sequence, [B], never [B, T]).
"""

from ticgrpo.registry import Registry

OBJECTIVES: Registry = Registry("objective")
