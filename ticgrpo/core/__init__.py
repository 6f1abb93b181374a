"""The algorithm core: pure tensor functions, no model, no I/O.

`batch` (the tensors a loss reads), `advantages`, `objectives`, `aggregation`, `kl`,
`logprobs` (the memory-lean log-probs of sampled tokens) and `corrections` (off-policy
corrections of stale or engine-sampled batches). The trainer, the lab and the framework
plug-ins all call these same functions.
"""
