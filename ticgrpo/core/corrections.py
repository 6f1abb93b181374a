"""Off-policy corrections: the `algorithm.offpolicy_correction` registry (docs/offpolicy.md).

A batch is off-policy when the distribution μ that sampled it is not the policy the update
starts from: the rows are stale (sampled by weights some versions old: `rollout.lag`,
`rollout.mode: async`) or an inference engine sampled them with other numerics (vLLM). Each
entry here is a pure tensor function of one step's

    π_prox  log-probs of the sampled tokens under the current weights θ_t   [B, T]
    μ       log-probs under the sampling distribution                        [B, T]
    mask    completion tokens                                                [B, T]
    A       advantages                                                       [B]
    s       staleness (training steps since the sampling weights)            [B] long

and returns detached weights w ≥ 0, one per token ([B, T]) or per sequence ([B]), that
multiply the advantages ("decoupled" correction, AReaL-style: the objective's ratio is
against π_prox, the weights carry π_prox/μ). `none` has no weights: the objective's own ratio
is formed against the sampling policy instead ("bypass"; ticgrpo.train.offpolicy).

Composition with the objectives. Every objective in ticgrpo.core.objectives is linear in a
token's (or sequence's) advantage, and w ≥ 0 never flips A's sign, hence never changes which
clip branch applies: A·w is the policy-gradient term scaled by w (the KL penalty is not). An
objective registered with `sequence_advantages` (tic_grpo, gspo, gmpo, gtpo) reads one
advantage per sequence; a token-level entry acts on it through the product of its token
weights, w_i = Π_t w_{i,t} (`fold_to_sequences`). For `token_tis` that is Π_t min(r_t, C),
not `sequence_tis`'s min(Π_t r_t, C): a biased estimate of the sequence ratio, but bounded by
C^|o_i|; for `token_mask` it keeps a sequence only when every one of its tokens is inside the
band.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass as pydantic_dataclass
from torch import Tensor

from ticgrpo.core.options import OPTIONS_CONFIG, build_options
from ticgrpo.registry import Registry

# exp() of a log-weight above this would overflow float32 on long sequences; weights this large
# are truncated or masked by every entry anyway, and a metric stays finite
MAX_LOG_WEIGHT = 30.0

AtLeastOne = Annotated[float, Field(ge=1)]
PositiveRatio = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Versions = Annotated[int, Field(ge=0)]


# --------------------------------------------------------------------------- inputs and outputs


@dataclass(frozen=True)
class CorrectionInputs:
    """One step's tensors (see the module docstring); all detached."""

    prox_logprobs: Tensor  # [B, T] log π_prox (the trainer under θ_t)
    behavior_logprobs: Tensor  # [B, T] log μ (the sampling distribution)
    mask: Tensor  # [B, T] completion tokens (bool or float)
    advantages: Tensor  # [B]
    staleness: Tensor  # [B] long

    @property
    def dtype(self) -> torch.dtype:
        wide = torch.float64 in (self.prox_logprobs.dtype, self.behavior_logprobs.dtype)
        return torch.float64 if wide else torch.float32

    @property
    def float_mask(self) -> Tensor:
        return self.mask.to(self.dtype)

    def token_log_ratios(self) -> Tensor:
        """log π_prox/μ per token, 0 on padding."""
        prox = self.prox_logprobs.detach().to(self.dtype)
        mu = self.behavior_logprobs.detach().to(self.dtype).to(prox.device)
        m = self.float_mask.to(prox.device)
        return torch.where(m > 0, prox - mu, torch.zeros_like(prox))

    def sequence_log_ratios(self) -> Tensor:
        """log Π_t π_prox/μ per sequence."""
        return self.token_log_ratios().sum(dim=1)

    def real_sequences(self) -> Tensor:
        """1 for a sequence with at least one completion token, in the wide dtype."""
        return (self.float_mask.sum(dim=1) > 0).to(self.dtype)


@dataclass(frozen=True)
class UnitWeights:
    """What an entry computes, per its unit (a token: [B, T]; a sequence: [B])."""

    weights: Tensor  # w ≥ 0, 0 on padding and wherever the entry masks
    log_ratios: Tensor  # the raw log π_prox/μ of each unit, before truncation or masking
    counted: Tensor  # 1 for a real unit (a completion token, a non-empty sequence)
    truncated: Tensor  # bool: the weight was cut at a cap
    masked: Tensor  # bool: the weight was set to 0


@dataclass(frozen=True)
class Correction:
    advantages: Tensor  # A·w: [B] for sequence weights or sequence-advantage objectives, else [B, T]
    weights: Tensor  # the weights that multiplied A (after folding to sequences where that applies)
    metrics: dict[str, float]


WeightsFn = Callable[[CorrectionInputs, Any], UnitWeights]


@dataclass(frozen=True)
class CorrectionSpec:
    name: str
    weights: WeightsFn | None  # None: `none`, the bypass (no weights; π_old := the sampler's log-probs)
    options: type  # the entry's options (a frozen pydantic dataclass); its defaults are the method's
    sequence_level: bool  # one weight per sequence ([B]); false: one per token ([B, T])
    reference: str  # where the method is published (docs/objectives.md lists it)

    @property
    def decoupled(self) -> bool:
        """π_old := π_prox (a recompute under the current weights) and the weights carry π_prox/μ."""
        return self.weights is not None


CORRECTIONS: Registry[CorrectionSpec] = Registry("off-policy correction")


def register_correction(name: str, *, options: type, sequence_level: bool,
                        reference: str) -> Callable[[WeightsFn], WeightsFn]:
    def decorator(fn: WeightsFn) -> WeightsFn:
        CORRECTIONS.add(CorrectionSpec(name, fn, options, sequence_level, reference))
        return fn

    return decorator


def make_correction_options(name: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """The options of correction `name` with `overrides`; ValueError (one line) on a bad key or value."""
    return build_options(CORRECTIONS.spec(name).options, overrides, "off-policy correction", name)


# --------------------------------------------------------------------------- options


@pydantic_dataclass(config=OPTIONS_CONFIG, frozen=True)
class NoOptions:
    """An entry without options."""


@pydantic_dataclass(config=OPTIONS_CONFIG, frozen=True)
class TruncationOptions:
    cap: AtLeastOne = 2.0  # C: weights above it are cut to C (Yao et al.'s TIS uses 2)


@pydantic_dataclass(config=OPTIONS_CONFIG, frozen=True)
class TokenMaskOptions:
    # [choice] the band [0.5, 2]: symmetric in log space (verl's rollout_rs takes lower = 1/upper
    # when unset); IcePop's own values were not in the sources read for this module
    lower: PositiveRatio = 0.5
    upper: PositiveRatio = 2.0

    def __post_init__(self) -> None:
        if not self.lower <= 1.0 <= self.upper:
            # a band that excludes 1 would mask rows that are exactly on-policy
            raise ValueError(f"the band must contain 1: lower <= 1 <= upper, got lower={self.lower}, "
                             f"upper={self.upper}")


@pydantic_dataclass(config=OPTIONS_CONFIG, frozen=True)
class SequenceMaskOptions(TokenMaskOptions):
    # product: the sequence's importance ratio Π_t π_prox/μ (verl rollout_rs "sequence");
    # geometric_mean: exp(mean_t log π_prox/μ), independent of the length (verl "geometric")
    ratio: Literal["product", "geometric_mean"] = "product"


@pydantic_dataclass(config=OPTIONS_CONFIG, frozen=True)
class OffPolicySequenceMaskOptions:
    # δ on the mean per-token KL(μ ‖ π_prox) of a sequence. [choice] 0.01: the DeepSeek-V3.2
    # report leaves δ a hyper-parameter without a published value
    delta: NonNegative = 0.01


@pydantic_dataclass(config=OPTIONS_CONFIG, frozen=True)
class DropStaleOptions:
    max_staleness: Versions = 0  # rows sampled more than this many versions ago get weight 0


# --------------------------------------------------------------------------- the entries

CORRECTIONS.add(CorrectionSpec("none", None, NoOptions, sequence_level=False,
                               reference="bypass: π_old := the sampling policy (no weights)"))


def _exp(log_weights: Tensor) -> Tensor:
    return log_weights.clamp(max=MAX_LOG_WEIGHT).exp()


def _truncate(log_ratios: Tensor, counted: Tensor, cap: float) -> UnitWeights:
    raw = _exp(log_ratios)
    truncated = (raw > cap) & (counted > 0)
    return UnitWeights(raw.clamp(max=cap) * counted, log_ratios, counted, truncated, torch.zeros_like(truncated))


def _keep(log_ratios: Tensor, counted: Tensor, keep: Tensor) -> UnitWeights:
    real = counted > 0
    masked = real & ~keep
    weights = (keep & real).to(counted.dtype)
    return UnitWeights(weights, log_ratios, counted, torch.zeros_like(masked), masked)


def _inside_band(log_ratios: Tensor, lower: float, upper: float) -> Tensor:
    # compared in log space, so a ratio exactly at a bound (log r == log lower) is inside
    return (log_ratios >= math.log(lower)) & (log_ratios <= math.log(upper))


@register_correction("token_tis", options=TruncationOptions, sequence_level=False,
                     reference="Yao et al. 2025, 'Your Efficient RL Framework Secretly Brings You Off-Policy RL "
                               "Training' (truncated importance sampling)")
def token_tis(inputs: CorrectionInputs, options: TruncationOptions) -> UnitWeights:
    """w_{i,t} = min(π_prox/μ, C) per token (truncated importance sampling, TIS)."""
    return _truncate(inputs.token_log_ratios(), inputs.float_mask, options.cap)


@register_correction("sequence_tis", options=TruncationOptions, sequence_level=True,
                     reference="Yao et al. 2025 (TIS), sequence-level")
def sequence_tis(inputs: CorrectionInputs, options: TruncationOptions) -> UnitWeights:
    """w_i = min(Π_t π_prox/μ, C) per sequence."""
    return _truncate(inputs.sequence_log_ratios(), inputs.real_sequences(), options.cap)


@register_correction("token_mask", options=TokenMaskOptions, sequence_level=False,
                     reference="IcePop (Ring team, 2025, 'Small Leak Can Sink a Great Ship'); masked importance "
                               "sampling (verl rollout_rs: token)")
def token_mask(inputs: CorrectionInputs, options: TokenMaskOptions) -> UnitWeights:
    """w_{i,t} = 1 if lower <= π_prox/μ <= upper else 0 (bounds included)."""
    log_ratios = inputs.token_log_ratios()
    return _keep(log_ratios, inputs.float_mask, _inside_band(log_ratios, options.lower, options.upper))


@register_correction("sequence_mask", options=SequenceMaskOptions, sequence_level=True,
                     reference="masked importance sampling per sequence (verl rollout_rs: sequence / geometric)")
def sequence_mask(inputs: CorrectionInputs, options: SequenceMaskOptions) -> UnitWeights:
    """w_i = 1 if lower <= ρ_i <= upper else 0, ρ_i = Π_t π_prox/μ (`ratio: product`) or its
    geometric mean exp(mean_t log π_prox/μ) (`ratio: geometric_mean`)."""
    log_ratios = inputs.sequence_log_ratios()
    if options.ratio == "geometric_mean":
        log_ratios = log_ratios / inputs.float_mask.sum(dim=1).clamp(min=1.0)
    return _keep(log_ratios, inputs.real_sequences(), _inside_band(log_ratios, options.lower, options.upper))


@register_correction("offpolicy_sequence_mask", options=OffPolicySequenceMaskOptions, sequence_level=True,
                     reference="DeepSeek-AI 2025, 'DeepSeek-V3.2' (arXiv 2512.02556), Off-Policy Sequence Masking")
def offpolicy_sequence_mask(inputs: CorrectionInputs, options: OffPolicySequenceMaskOptions) -> UnitWeights:
    """w_i = 0 if A_i < 0 and (1/|o_i|) Σ_t (log μ − log π_prox) > δ, else 1.

    The mean is the per-token estimate of KL(μ ‖ π_prox) over the sampled tokens (they are
    drawn from μ). Only negative-advantage sequences are dropped: pushing down a sequence the
    current policy has already moved away from is what destabilises training."""
    counted = inputs.real_sequences()
    log_ratios = inputs.sequence_log_ratios()
    kl = -log_ratios / inputs.float_mask.sum(dim=1).clamp(min=1.0)
    negative = inputs.advantages.to(kl.device) < 0
    return _keep(log_ratios, counted, ~(negative & (kl > options.delta)))


@register_correction("drop_stale", options=DropStaleOptions, sequence_level=True,
                     reference="dropping samples older than a staleness bound (asynchronous RL, e.g. AReaL's "
                               "max staleness)")
def drop_stale(inputs: CorrectionInputs, options: DropStaleOptions) -> UnitWeights:
    """w_i = 0 if the row's staleness s_i > max_staleness, else 1."""
    counted = inputs.real_sequences()
    fresh_enough = inputs.staleness.to(counted.device) <= options.max_staleness
    return _keep(inputs.sequence_log_ratios(), counted, fresh_enough)


# --------------------------------------------------------------------------- applying weights


def fold_to_sequences(token_weights: Tensor, mask: Tensor) -> Tensor:
    """w_i = Π_t w_{i,t} over the completion tokens (a zero weight makes the product 0; a row
    without tokens gets 0, like padding); the log of the product is capped at MAX_LOG_WEIGHT so
    that C^|o| stays finite."""
    m = mask.to(token_weights.device) > 0
    logs = torch.where(m, torch.log(token_weights), torch.zeros_like(token_weights))
    return _exp(logs.sum(dim=1)) * m.any(dim=1).to(token_weights.dtype)


def scale_advantages(advantages: Tensor, weights: Tensor) -> Tensor:
    """A·w: [B] advantages become [B, T] under token weights; stay [B] under sequence weights."""
    w = weights.to(advantages.device)
    adv = advantages.to(torch.promote_types(advantages.dtype, w.dtype))
    return adv[:, None] * w if w.dim() == 2 and adv.dim() == 1 else adv * w


def effective_sample_size(weights: Tensor, counted: Tensor) -> float:
    """(Σw)² / (n·Σw²) over the n counted units: 1 for equal weights, 1/n for one non-zero
    weight; 0 when every weight is 0 (no sample counts)."""
    w = weights * counted
    n = float(counted.sum())
    squares = float((w * w).sum())
    if n == 0 or squares == 0:
        return 0.0
    return float(w.sum()) ** 2 / (n * squares)


def _fraction(flags: Tensor, counted: Tensor) -> float:
    return float((flags.to(counted.dtype) * counted).sum() / counted.sum().clamp(min=1.0))


def _ratio_extremes(unit: UnitWeights) -> dict[str, float]:
    real = unit.counted > 0
    if not bool(real.any()):
        return {"offpolicy/ratio_min": 1.0, "offpolicy/ratio_max": 1.0}
    logs = unit.log_ratios[real].clamp(-80.0, 80.0)  # a finite number even for a hopeless ratio
    return {"offpolicy/ratio_min": math.exp(float(logs.min())), "offpolicy/ratio_max": math.exp(float(logs.max()))}


def k3_kl(log_ratios: Tensor, mask: Tensor) -> float:
    """Mean over tokens of r − 1 − log r, r = π_prox/μ: Schulman's k3 estimate of KL(μ ‖ π_prox)
    per token (the tokens are drawn from μ); ≥ 0, 0 iff the log-probs agree."""
    m = mask.to(log_ratios.dtype)
    d = log_ratios.clamp(max=MAX_LOG_WEIGHT) * m
    return float(((torch.expm1(d) - d) * m).sum() / m.sum().clamp(min=1.0))


def correct_advantages(name: str, inputs: CorrectionInputs, options: Any, sequence_advantages: bool) -> Correction:
    """The advantages scaled by entry `name`'s weights and the step's `offpolicy/*` metrics.

    `sequence_advantages`: the objective reads one advantage per sequence, so token weights
    act through their product per sequence (module docstring). ESS and weight_mean describe
    the weights that multiplied A; ratio_min/max, truncated_frac and masked_frac the entry's
    own units (tokens or sequences), before folding."""
    spec = CORRECTIONS.spec(name)
    if spec.weights is None:
        raise ValueError(f"off-policy correction {name!r} has no weights: it is the bypass (π_old := the sampler)")
    unit = spec.weights(inputs, options)
    folded = sequence_advantages and unit.weights.dim() == 2
    applied = fold_to_sequences(unit.weights, inputs.mask) if folded else unit.weights
    applied_counted = inputs.real_sequences() if folded else unit.counted
    metrics = {
        "offpolicy/ess": effective_sample_size(applied, applied_counted),
        "offpolicy/weight_mean": float((applied * applied_counted).sum() / applied_counted.sum().clamp(min=1.0)),
        **_ratio_extremes(unit),
        "offpolicy/truncated_frac": _fraction(unit.truncated, unit.counted),
        "offpolicy/masked_frac": _fraction(unit.masked, unit.counted),
        "offpolicy/kl_k3": k3_kl(inputs.token_log_ratios(), inputs.float_mask),
    }
    return Correction(scale_advantages(inputs.advantages, applied.detach()), applied.detach(), metrics)


def bypass_metrics() -> dict[str, float]:
    """The `offpolicy/*` metrics of `none`: no weights (every weight 1, ESS 1)."""
    return {"offpolicy/ess": 1.0, "offpolicy/weight_mean": 1.0, "offpolicy/truncated_frac": 0.0,
            "offpolicy/masked_frac": 0.0}


def mismatch_metrics(trainer_logprobs: Tensor, behavior_logprobs: Tensor, mask: Tensor) -> dict[str, float]:
    """How far an inference engine's log-probs μ are from the trainer's under the same weights.

    `mismatch/kl_k3`: k3 estimate of KL(μ ‖ π_trainer) per token; `mismatch/abs_diff_mean|max`:
    |ℓ^trainer − ℓ^μ| over the completion tokens."""
    dtype = torch.float64 if trainer_logprobs.dtype == torch.float64 else torch.float32
    m = mask.to(dtype)
    d = (trainer_logprobs.to(dtype) - behavior_logprobs.to(dtype).to(trainer_logprobs.device)) * m
    tokens = m.sum().clamp(min=1.0)
    k3 = (torch.expm1(d) - d) * m
    return {
        "mismatch/kl_k3": float(k3.sum() / tokens),
        "mismatch/abs_diff_mean": float(d.abs().sum() / tokens),
        "mismatch/abs_diff_max": float(d.abs().max()) if d.numel() else 0.0,
    }


__all__ = [
    "CORRECTIONS",
    "Correction",
    "CorrectionInputs",
    "CorrectionSpec",
    "UnitWeights",
    "bypass_metrics",
    "correct_advantages",
    "effective_sample_size",
    "fold_to_sequences",
    "k3_kl",
    "make_correction_options",
    "mismatch_metrics",
    "register_correction",
    "scale_advantages",
]
