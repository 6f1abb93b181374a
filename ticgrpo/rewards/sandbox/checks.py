"""The dataset's tests, parsed into checks, and each check's verdict, computed on the trainer's
side from plain data: the program never sees a literal and never decides a comparison."""

from __future__ import annotations

import ast
from typing import Any

from ticgrpo.rewards.sandbox.protocol import Answer

Check = tuple[Any, ...]  # ("assert", operands, formula) | ("stdio", input, output); see `parse_test`

_MISSING = object()
_COMPARE = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
            ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not"}


def parse_test(test: Any) -> Check:
    """("assert", [operand expressions for the sandbox], formula) | ("stdio", input, output).

    formula: ("compare", [term, ...], [op, ...]) | ("not", f) | ("and" | "or", [f, ...]) |
    ("truth", term); term: ("literal", value) | ("operand", j) (the j-th expression's value)."""
    if isinstance(test, dict):
        if set(test) - {"input", "output"} or "output" not in test:
            raise ValueError(f"a stdin/stdout test needs keys 'input' and 'output', got {sorted(test)}")
        return ("stdio", str(test.get("input") or ""), str(test["output"]))
    if not isinstance(test, str):
        raise ValueError(f"a test must be an assert statement or an {{input, output}} pair, got {test!r}")
    try:
        tree = ast.parse(test.strip())
    except SyntaxError as exc:
        raise ValueError(f"test {test!r} is not valid Python: {exc.msg}") from None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        raise ValueError(f"test {test!r} must be a single assert statement")
    operands: list[str] = []

    def term(node: ast.AST) -> tuple:
        value = _literal(node)
        if value is not _MISSING:
            return ("literal", value)
        operands.append(ast.unparse(node))
        return ("operand", len(operands) - 1)

    def formula(node: ast.AST) -> tuple:
        if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
            return ("compare", [term(n) for n in (node.left, *node.comparators)],
                    [_COMPARE[type(op)] for op in node.ops])
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return ("not", formula(node.operand))
        if isinstance(node, ast.BoolOp):
            return ("and" if isinstance(node.op, ast.And) else "or", [formula(v) for v in node.values])
        return ("truth", term(node))

    return ("assert", operands, formula(tree.body[0].test))


def _literal(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _MISSING


class _Unanswered(Exception):
    """An operand the program did not answer with a value (it raised, exited, or is missing)."""


def holds(formula: tuple, answers: dict[int, Answer | None]) -> bool:
    """The test's verdict, computed here from plain data (never raises)."""
    def value(t: tuple) -> Any:
        if t[0] == "literal":
            return t[1]
        got = answers.get(t[1])
        if got is None or got[0] != "value":
            raise _Unanswered
        return got[1]

    def truth(f: tuple) -> bool:
        kind = f[0]
        if kind == "not":
            return not truth(f[1])
        if kind == "and":
            return all(truth(g) for g in f[1])
        if kind == "or":
            return any(truth(g) for g in f[1])
        if kind == "truth":
            return bool(value(f[1]))
        terms, ops = f[1], f[2]
        left = value(terms[0])
        for op, t in zip(ops, terms[1:], strict=True):
            right = value(t)
            if not _compare(left, op, right):
                return False
            left = right
        return True

    try:
        return truth(formula)
    except (_Unanswered, TypeError, ValueError, OverflowError, RecursionError):
        return False


def _compare(a: Any, op: str, b: Any) -> bool:
    if op in ("==", "!="):
        return _same(a, b) == (op == "==")
    if op in ("is", "is not"):  # None/True/False are the only identities that survive the boundary
        same = a is b if a is None or b is None or type(a) is bool or type(b) is bool else _same(a, b)
        return same == (op == "is")
    if op in ("in", "not in"):
        if isinstance(b, str):
            found = type(a) is str and a in b
        elif isinstance(b, bytes):
            found = type(a) is bytes and a in b
        else:
            found = isinstance(b, (list, tuple, set, frozenset, dict)) and any(_same(a, x) for x in b)
        return found == (op == "in")
    return bool({"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]) if _ordered(a, b) else False


def _ordered(a: Any, b: Any) -> bool:
    numbers = (int, float)
    return (isinstance(a, numbers) and isinstance(b, numbers)) or type(a) is type(b)


def _same(got: Any, expected: Any) -> bool:
    """Equality by exact type, deep (True is not 1), numbers across int/float (nan != nan, as in Python)."""
    numbers = (int, float)
    if type(got) in numbers and type(expected) in numbers and bool not in (type(got), type(expected)):
        return got == expected
    if type(got) is not type(expected):
        return False
    if isinstance(got, (list, tuple)):
        return len(got) == len(expected) and all(_same(x, y) for x, y in zip(got, expected, strict=True))
    if isinstance(got, dict):
        return got.keys() == expected.keys() and all(_same(got[k], expected[k]) for k in got)
    if isinstance(got, complex):
        return got == expected
    return got == expected


def normalise_output(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()).rstrip()
