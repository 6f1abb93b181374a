"""Size of the config layer (issue #13's measure): config + presets + compare's algorithm
resolution, before the redesign and at a given commit; the lab's variants (whose table joined
ALGORITHMS) beside it.

    python scripts/config_size.py              # the baseline and HEAD
    python scripts/config_size.py 0b3df87 HEAD # any commits after the redesign

Per commit: raw lines; code lines (without blank lines, comments and docstrings); statements;
the field declarations among them (one per config key, with its default, range and
description, and the fields of the tables' records); and the rest ("machinery": loading,
overrides, coercion, validation, error messages, the algorithm tables' code). Needs the git
history (a full clone).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass

BASELINE = "a62b86e"  # the last commit before the redesign (ticgrpo/config.py, presets.py)

# (path, top-level names or None for the whole file) of each layout
_BEFORE = (
    ("ticgrpo/config.py", None),
    ("ticgrpo/presets.py", None),
    ("ticgrpo/compare/runner.py", ("BUILTIN_ALGORITHMS", "_REPLACED", "_SPEC_EXTRA", "known_algorithms",
                                   "resolve_algorithm", "_preset_spec", "apply_algorithm")),
)
_LAB_BEFORE = ("ticgrpo/lab/estimators.py", ("Variant", "_NO_CLIP", "VARIANTS", "get_variant"))
_AFTER = (
    ("ticgrpo/config/__init__.py", None),
    ("ticgrpo/config/schema.py", None),
    ("ticgrpo/config/loading.py", None),
    ("ticgrpo/config/algorithms.py", None),
    ("ticgrpo/config/migrations.py", None),
    ("ticgrpo/compare/plan.py", ("_REPLACED", "_SPEC_EXTRA", "known_algorithms", "resolve_algorithm", "_check_keys",
                                 "apply_algorithm")),
)
_LAB_AFTER = ("ticgrpo/lab/variants.py", None)
# written by the redesign for a job nothing did before (docs/config.md was written by hand)
_DOCS = ("ticgrpo/config/docs.py", None)


@dataclass
class Size:
    lines: int = 0
    code: int = 0
    statements: int = 0
    fields: int = 0
    field_lines: int = 0

    def add(self, other: Size) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def _show(commit: str, path: str) -> str | None:
    done = subprocess.run(["git", "show", f"{commit}:{path}"], capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


def _top_level_name(node: ast.stmt) -> str | None:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return node.name
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
    return next((t.id for t in targets if isinstance(t, ast.Name)), None)


def measure(source: str, names: tuple[str, ...] | None) -> Size:
    tree = ast.parse(source)
    nodes = [n for n in tree.body if names is None or _top_level_name(n) in names]
    if names is not None and len(nodes) != len(names):
        found = {_top_level_name(n) for n in nodes}
        raise SystemExit(f"missing top-level names: {sorted(set(names) - found)}")
    size, lines, docstring_lines = Size(), set(), set()
    for top in nodes:
        lines.update(range(top.lineno, (top.end_lineno or top.lineno) + 1))
        for node in ast.walk(top):
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) \
                    and isinstance(node.value.value, str):
                docstring_lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
            elif isinstance(node, ast.stmt):
                size.statements += 1
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) \
                            and item.target.id != "model_config":
                        size.fields += 1
                        size.field_lines += (item.end_lineno or item.lineno) - item.lineno + 1
    if names is None:  # the whole file: imports, module docstring and comments between definitions count as lines
        lines = set(range(1, len(source.splitlines()) + 1))
        docstring_lines.update(range(1, (tree.body[0].end_lineno or 1) + 1) if tree.body and isinstance(
            tree.body[0], ast.Expr) else ())
    text = source.splitlines()
    size.lines = len(lines)
    size.code = sum(1 for i in lines - docstring_lines
                    if text[i - 1].strip() and not text[i - 1].strip().startswith("#"))
    return size


def _part(commit: str, path: str, names: tuple[str, ...] | None) -> Size | None:
    source = _show(commit, path)
    return measure(source, names) if source is not None else None


def commit_size(commit: str) -> tuple[Size, Size | None, Size | None]:
    """(the config layer, the lab's variants, the docs generator) at `commit`."""
    before = _show(commit, "ticgrpo/config.py") is not None
    total = Size()
    for path, names in _BEFORE if before else _AFTER:
        total.add(_part(commit, path, names) or Size())
    return total, _part(commit, *(_LAB_BEFORE if before else _LAB_AFTER)), _part(commit, *_DOCS)


def main(argv: list[str]) -> None:
    commits = argv or [BASELINE, "HEAD"]
    print(f"{'commit':10s} {'lines':>6s} {'code':>6s} {'stmts':>6s} {'fields':>6s} {'field lines':>11s} "
          f"{'machinery code':>14s} {'machinery stmts':>15s} | lab variants lines, docs generator lines")
    for commit in commits:
        size, lab, docs = commit_size(commit)
        label = subprocess.run(["git", "rev-parse", "--short", commit], capture_output=True, text=True).stdout.strip()
        print(f"{label:10s} {size.lines:6d} {size.code:6d} {size.statements:6d} {size.fields:6d} "
              f"{size.field_lines:11d} {size.code - size.field_lines:14d} {size.statements - size.fields:15d} | "
              f"{lab.lines if lab else '-'}, {docs.lines if docs else '-'}")


if __name__ == "__main__":
    main(sys.argv[1:])
