"""Comparisons: several algorithms × seeds on one task (`ticgrpo compare`): `plan` resolves and
validates every run, `execute` runs them. Their report (`ticgrpo report`) is `ticgrpo.reports`.
See docs/compare.md."""
