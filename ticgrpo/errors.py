"""Exceptions that the `ticgrpo` command reports in one line.

They live here, not in `ticgrpo.cli`: under `python -m ticgrpo.cli` that module runs a
second time as `__main__`, and a class defined there would not be the one sub-commands raise.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UsageError(ValueError):
    """A problem with what the user asked for; reported in one line, exit code 2."""


def closest(value: object, choices: Iterable[str]) -> str | None:
    """The choice nearest to `value` by spelling (difflib), or None when none is near."""
    near = difflib.get_close_matches(str(value), list(choices), n=1)
    return near[0] if near else None


def unknown_choice(what: str, value: object, choices: Iterable[str]) -> str:
    """`unknown <what> 'x' (did you mean 'y'?); choose one of: a, b, ...`: a name not among the choices."""
    choices = list(choices)
    near = closest(value, choices)
    hint = f" (did you mean {near!r}?)" if near else ""
    return f"unknown {what} {value!r}{hint}; choose one of: {', '.join(choices)}"


def unknown_key(key: str, allowed: Iterable[str]) -> str:
    """`unknown key 'a.x'; did you mean 'a.y'? (allowed: y, z)`: the last part of a dotted key is
    not among `allowed`; the suggestion keeps the key's parent."""
    allowed = list(allowed)
    parent, _, name = key.rpartition(".")
    near = closest(name, allowed)
    hint = f"; did you mean '{parent + '.' if parent else ''}{near}'?" if near else ""
    return f"unknown key '{key}'{hint} (allowed: {', '.join(allowed)})"
