"""Per-token KL estimators between π_θ and π_ref (spec §2), x = ℓ^ref − ℓ.

k1 = −x (unbiased, high variance); k2 = x²/2; k3 = exp(x) − x − 1 (unbiased, ≥ 0; default).
Schulman, "Approximating KL divergence" (2020).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ticgrpo.registry import FunctionRegistry

KL_ESTIMATORS: FunctionRegistry = FunctionRegistry("kl estimator")

# exp(x) for |x| beyond this would overflow float32 products; the clamp only bites on
# tokens whose probability moved by a factor of e^20 from the reference.
_MAX_LOG_RATIO = 20.0


@KL_ESTIMATORS.register("k1")
def k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    return logprobs - ref_logprobs


@KL_ESTIMATORS.register("k2")
def k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    return 0.5 * (ref_logprobs - logprobs) ** 2


@KL_ESTIMATORS.register("k3")
def k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    x = (ref_logprobs - logprobs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return torch.exp(x) - x - 1.0


def token_kl(name: str, logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token KL estimate in float32 (or float64), same shape as the inputs."""
    wide = torch.float64 if logprobs.dtype == torch.float64 else torch.float32
    return KL_ESTIMATORS.get(name)(logprobs.to(wide), ref_logprobs.detach().to(wide))
