"""Exceptions that the `ticgrpo` command reports in one line.

They live here, not in `ticgrpo.cli`: under `python -m ticgrpo.cli` that module runs a
second time as `__main__`, and a class defined there would not be the one sub-commands raise.
"""

from __future__ import annotations


class UsageError(ValueError):
    """A problem with what the user asked for; reported in one line, exit code 2."""
