"""Name → specification registries (objectives, advantages, rewards, corrections, tasks, ...).

Every algorithmic piece of ticgrpo is a pure function registered under a name with a typed
*spec*: the function and what the rest of the code must know about it (its options class,
the inputs it reads, the trainer schedule it needs). A config chooses a piece by string; the
trainer, the lab and the framework plug-ins read the spec's fields, never the name.

    OBJECTIVES.spec("tic_grpo").uses_old_logprobs      # True
    KL_ESTIMATORS.spec("k3").fn(logp, ref)             # a plain function registry
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from ticgrpo.errors import unknown_choice

F = TypeVar("F", bound=Callable)


class UnknownNameError(KeyError, ValueError):
    """A name that is not in a registry; the message lists the allowed names.

    A ValueError too, so that callers treating bad user input uniformly catch it."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class Named(Protocol):
    @property
    def name(self) -> str: ...


SpecT = TypeVar("SpecT", bound=Named)


@dataclass(frozen=True)
class FunctionSpec(Generic[F]):
    """The spec of a registry whose entries carry nothing but the function."""

    name: str
    fn: F


class Registry(Generic[SpecT]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._specs: dict[str, SpecT] = {}

    def add(self, spec: SpecT) -> SpecT:
        if spec.name in self._specs:
            raise ValueError(f"{self.kind} {spec.name!r} is registered twice")
        self._specs[spec.name] = spec
        return spec

    def spec(self, name: str) -> SpecT:
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownNameError(unknown_choice(self.kind, name, self.names())) from None

    def specs(self) -> list[SpecT]:
        return [self._specs[name] for name in self.names()]

    def names(self) -> list[str]:
        return sorted(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


class FunctionRegistry(Registry[FunctionSpec[F]]):
    """A registry of plain functions: `@REG.register("name")`, `REG.get("name")`."""

    def register(self, name: str) -> Callable[[F], F]:
        def decorator(fn: F) -> F:
            self.add(FunctionSpec(name, fn))
            return fn

        return decorator

    def get(self, name: str) -> F:
        return self.spec(name).fn
