"""The algorithms the lab runs: entries of `ticgrpo.config.algorithms.ALGORITHMS` (or objectives).

An algorithm runs in the lab when its settings choose only an objective and an advantage (the
lab models the loss and the advantage estimator, not trainer mechanisms such as dynamic
sampling) and its objective's registered capabilities allow:

* not `couples_group`: the exact path puts every trajectory in ONE batch weighted by π_old, which
  needs a loss that is a sum of per-sequence terms. The Monte Carlo path gives every sampled group
  its own group id, so `lab bias` runs a group-coupled objective there only (`monte_carlo=True`:
  no exact row, the Monte Carlo mean of ĝ with its standard error);
* not `needs_token_ids`: whatever an objective reads across rows of token ids would then mix
  trajectories of different groups;
* not `needs_entropies`: the lab's batches carry no entropies;
* not `needs_hidden_states`, except on the Monte Carlo path, which feeds a fixed random embedding
  of each position's prefix (`ticgrpo.lab.estimators.prefix_features`) as the hidden state (nthr).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ticgrpo.config.algorithms import ALGORITHMS, Algorithm, algorithm_names, get_algorithm
from ticgrpo.config.schema import method_node
from ticgrpo.core.objectives import OBJECTIVES, make_objective_config

# objectives `all` lists first, in this order (the paper's three), then the rest by name
_FIRST = ("grpo", "no_is", "tic_grpo")


@dataclass(frozen=True)
class Variant:
    """An algorithm as the lab runs it: objective, its option overrides, advantage estimator."""

    name: str
    objective: str
    overrides: dict[str, Any] = field(default_factory=dict)
    advantage: str | None = None  # None: the objective's registered default
    description: str = ""
    advantage_options: dict[str, Any] = field(default_factory=dict)

    def config(self) -> Any:
        return make_objective_config(self.objective, self.overrides)

    @property
    def advantage_name(self) -> str:
        if self.advantage is not None:
            return self.advantage
        return OBJECTIVES.spec(self.objective).default_advantage

    def is_frozen(self) -> bool:
        """The estimator is evaluated at θ_old whatever θ is (the objective's frozen-gradient schedule)."""
        return OBJECTIVES.spec(self.objective).frozen_gradient(self.config())


def unsupported_reason(algorithm: Algorithm, monte_carlo: bool = False) -> str | None:
    """Why the lab cannot run `algorithm` (on the Monte Carlo path only, with `monte_carlo`), or None
    when it can (see the module doc)."""
    mechanisms = algorithm.trainer_mechanisms()
    if mechanisms:
        return f"it uses trainer mechanisms the lab does not model ({', '.join(mechanisms)})"
    objective, _ = method_node(f"algorithm {algorithm.name!r} objective", algorithm.settings["objective"])
    spec = OBJECTIVES.spec(str(objective))
    needs = [
        what
        for what, needed in (
            ("couples the completions of a group", spec.couples_group and not monte_carlo),
            ("reads token ids", spec.needs_token_ids),
            ("reads entropies", spec.needs_entropies),
            ("reads hidden states", spec.needs_hidden_states and not monte_carlo),
        )
        if needed
    ]
    return f"its objective {spec.name!r} {' and '.join(needs)}" if needs else None


def variant_of(algorithm: Algorithm) -> Variant:
    """The lab's reading of `algorithm` (no support check)."""
    objective, options = method_node(f"algorithm {algorithm.name!r} objective", algorithm.settings["objective"])
    advantage, advantage_options = method_node(f"algorithm {algorithm.name!r} advantage",
                                               algorithm.settings.get("advantage"))
    return Variant(algorithm.name, str(objective), options, advantage, algorithm.description, advantage_options)


def get_variant(name: str, monte_carlo: bool = False) -> Variant:
    """The lab variant of algorithm `name` (an ALGORITHMS entry or an objective with its defaults);
    `monte_carlo`: for the Monte Carlo path only (group-coupled objectives allowed)."""
    algorithm = get_algorithm(name)  # unknown names: one line listing the choices
    reason = unsupported_reason(algorithm, monte_carlo)
    if reason is not None:
        raise ValueError(f"the lab cannot run {name!r}: {reason}")
    return variant_of(algorithm)


def lab_algorithms() -> list[str]:
    """Every algorithm name the lab runs, table entries first."""
    return [name for name in algorithm_names() if unsupported_reason(get_algorithm(name)) is None]


def objective_default_name(objective: str) -> str | None:
    """The lab-runnable algorithm name that is `objective` with its defaults, if there is one."""
    defaults = make_objective_config(objective)
    default_advantage = OBJECTIVES.spec(objective).default_advantage
    for algorithm in (get_algorithm(objective), *ALGORITHMS.values()):  # its own name first
        if unsupported_reason(algorithm) is not None:
            continue
        variant = variant_of(algorithm)
        method = (variant.objective, variant.advantage_name, variant.advantage_options)
        if method == (objective, default_advantage, {}) and variant.config() == defaults:
            return algorithm.name
    return None


def all_objectives() -> tuple[str, ...]:
    """What `all` expands to: every registered objective the lab can run, each with its defaults,
    under its algorithm name (dapo's loss alone is `dapo_loss`: `dapo` adds trainer mechanisms)."""
    order = [*_FIRST, *(n for n in OBJECTIVES.names() if n not in _FIRST)]
    names = (objective_default_name(objective) for objective in order)
    return tuple(name for name in names if name is not None)


def expand_objectives(names: tuple[str, ...]) -> tuple[str, ...]:
    """`names` with `all` replaced by `all_objectives()`, duplicates dropped (first kept)."""
    out: list[str] = []
    for name in names:
        for n in all_objectives() if name == "all" else (name,):
            if n not in out:
                out.append(n)
    return tuple(out)


# the table's lab-runnable entries, read as variants (derived: the table is ALGORITHMS)
VARIANTS = MappingProxyType(
    {name: variant_of(entry) for name, entry in ALGORITHMS.items() if unsupported_reason(entry) is None}
)

__all__ = [
    "VARIANTS",
    "Variant",
    "all_objectives",
    "expand_objectives",
    "get_variant",
    "lab_algorithms",
    "objective_default_name",
    "unsupported_reason",
    "variant_of",
]
