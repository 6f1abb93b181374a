"""Config keys that an earlier ticgrpo wrote and a newer key replaced, each written once.

A `Migration` turns a section written with the old keys into today's form. Two readers use it:
a run folder's saved config.yaml goes through every upgrade (`upgrade_saved_config`), so that
`--resume`, `ticgrpo compare` and `ticgrpo report` keep reading old runs; a config written
today that still uses an old key gets one line spelling out what the upgrade would write
(`check_removed_keys`), e.g.

    algorithm.objective_options was replaced by algorithm.objective: write
    algorithm.objective: {epsilon_high: 0.3} (the options nest under the method)

Renaming a key is one entry in MIGRATIONS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ticgrpo.config.schema import ConfigError

Section = dict[str, Any]


@dataclass(frozen=True)
class Migration:
    section: str  # the top-level section holding the keys ("algorithm", "eval")
    removed: tuple[str, ...]
    replacement: str  # today's key in that section
    upgrade: Callable[[Section], Section]  # the section (a copy the function may change) in today's form
    hint: str  # said after the spelling of the replacement

    def applies(self, section: Any) -> bool:
        return isinstance(section, dict) and any(key in section for key in self.removed)

    def error(self, section: Section, where: str) -> ConfigError:
        """The one line for a section written today with an old key; `where` is the section's dotted path."""
        node = self.upgrade(dict(section)).get(self.replacement)
        if isinstance(node, dict) and list(node) == ["name"]:
            node = node["name"]  # {name: x} is spelled x
        from ticgrpo.config.loading import flow_yaml  # loading imports this module

        spelled = flow_yaml(node)
        old = [f"{where}.{key}" for key in self.removed if key in section]
        new = f"{where}.{self.replacement}"
        verb = "was" if len(old) == 1 else "were"
        return ConfigError(f"{' and '.join(old)} {verb} replaced by {new}: write {new}: {spelled} ({self.hint})")


def _options_nested_under(method: str) -> Migration:
    """`<method>: x` + `<method>_options: {...}` → `<method>: {name: x, ...}` (no name: the default method)."""
    removed = f"{method}_options"

    def upgrade(section: Section) -> Section:
        options = section.pop(removed, None)
        node = section.get(method)
        if isinstance(options, dict) and options:
            base = dict(node) if isinstance(node, dict) else {} if node is None else {"name": node}
            section[method] = {**base, **options}
        return section

    return Migration("algorithm", (removed,), method, upgrade, "the options nest under the method")


_CORRECTION_NAMES = {None: "none", "token": "token_tis", "sequence": "sequence_tis"}


def _correction_node(section: Section) -> Section:
    """behavior_correction: token|sequence|null (+ behavior_correction_cap: C) → offpolicy_correction.
    A cap without a correction truncated nothing: that is `none`."""
    old = section.pop("behavior_correction", None)
    cap = section.pop("behavior_correction_cap", None)
    name = _CORRECTION_NAMES.get(old, old) if isinstance(old, (str, type(None))) else old
    node: dict[str, Any] = {"name": name}
    if name in ("token_tis", "sequence_tis") and cap is not None:
        node["cap"] = cap
    section.setdefault("offpolicy_correction", node)
    return section


def _ks(section: Section) -> Section:
    """eval.mean_at_k: k (k sampled completions, their mean accuracy) is eval.ks: [k], avg@k; 0 = []."""
    k = section.pop("mean_at_k", None)
    section.setdefault("ks", [k] if isinstance(k, int) and not isinstance(k, bool) and k > 0 else [])
    return section


MIGRATIONS = (
    _options_nested_under("objective"),
    _options_nested_under("advantage"),
    Migration("algorithm", ("behavior_correction", "behavior_correction_cap"), "offpolicy_correction",
              _correction_node, "token_tis and sequence_tis take a cap; docs/offpolicy.md"),
    Migration("eval", ("mean_at_k",), "ks", _ks, "avg@k is mean@k; pass@k and maj@k are logged too, eval.metrics"),
)


def upgrade_saved_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A config.yaml written by an earlier version of ticgrpo, in today's form."""
    saved = dict(saved)
    for migration in MIGRATIONS:
        if migration.applies(saved.get(migration.section)):
            saved[migration.section] = migration.upgrade(dict(saved[migration.section]))
    return saved


def check_removed_keys(section: Any, name: str, where: str | None = None) -> None:
    """Raise the one-line ConfigError of the first old key in the `name` section (shown as `where`)."""
    for migration in MIGRATIONS:
        if migration.section == name and migration.applies(section):
            raise migration.error(section, where or name)


def check_raw_config(raw: dict[str, Any]) -> None:
    """check_removed_keys over every section of a raw config."""
    for name in dict.fromkeys(migration.section for migration in MIGRATIONS):
        check_removed_keys(raw.get(name), name)
