"""The answer protocol: the harness's `<nonce> <json [index, kind, payload]>` lines read back
into plain data on the trainer's side; anything that is not exactly one well-formed answer per
operand is a `ProtocolError` (the program scores 0 with ``status="protocol"``)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

MAX_DEPTH = 20  # nesting of an answer value (the harness's `plain` stops at the same depth)
MAX_INT_DIGITS = 4300  # Python's own default int<->str limit

Answer = tuple[str, Any]  # ("value", decoded) | ("error", exception name) | ("violation", what)


class ProtocolError(ValueError):
    """An answer line from the sandbox that is not well-formed plain data."""


def read_answers(stdout: str, nonce: str, count: int) -> dict[int, Answer]:
    """index -> answer (index -1: a violation such as MemoryError); ProtocolError on anything
    that is not exactly one well-formed answer per index in 0..count-1."""
    answers: dict[int, Answer] = {}
    for line in stdout.splitlines():
        tag, _, payload = line.partition(" ")
        if tag != nonce:
            continue  # the program's own output, or a forgery without the nonce
        index, kind, body = _entry(payload)
        if kind == "violation":
            answers[-1] = ("violation", str(body)[:100])
            continue
        if type(index) is not int or not 0 <= index < count:
            raise ProtocolError(f"an answer index is not one of 0..{count - 1}")
        if index in answers:
            raise ProtocolError(f"answer {index} came twice")
        answers[index] = _answer(index, kind, body)
    return answers


def _entry(payload: str) -> tuple[Any, Any, Any]:
    try:
        item = json.loads(payload)
    except ValueError:
        raise ProtocolError("an answer line is not JSON") from None
    if type(item) is not list or len(item) != 3:
        raise ProtocolError("an answer is not [index, kind, payload]")
    return item[0], item[1], item[2]


def _answer(index: int, kind: Any, body: Any) -> Answer:
    if kind == "value":
        return ("value", decode_value(body))
    if kind == "error" and type(body) is str:
        return ("error", body[:100])
    raise ProtocolError(f"answer {index} has an unknown kind {str(kind)[:40]!r}")


def decode_value(tagged: Any, depth: int = 0) -> Any:
    """Plain data from its JSON form (see the harness's `plain`); ProtocolError on anything else."""
    if tagged is None or type(tagged) is bool:
        return tagged
    if depth > MAX_DEPTH:
        raise ProtocolError("a value is nested too deeply")
    if type(tagged) is not list or len(tagged) != 2 or type(tagged[0]) is not str:
        raise ProtocolError("a value is not a [kind, body] pair")
    kind, body = tagged
    scalar = _SCALARS.get(kind)
    if scalar is not None:
        return scalar(body)
    if type(body) is not list:
        raise ProtocolError(f"a {kind[:20]!r} value has no item list")
    if kind == "dict":
        return _decode_dict(body, depth)
    return _decode_collection(kind, body, depth)


def _text(kind: str, body: Any) -> str:
    if type(body) is not str:
        raise ProtocolError(f"a {kind} value is not text")
    return body


def _int(body: Any) -> int:
    text = _text("int", body)
    if len(text) > MAX_INT_DIGITS or not re.fullmatch(r"-?[0-9]+", text):
        raise ProtocolError("an int value is not a decimal integer of at most 4300 digits")
    return int(text)


def _float(body: Any) -> float:
    text = _text("float", body)
    if len(text) > 40 or not re.fullmatch(r"-?(inf|nan|[0-9.e+-]+)", text):
        raise ProtocolError("a float value is not a float")
    try:
        return float(text)
    except ValueError:
        raise ProtocolError("a float value is not a float") from None


def _complex(body: Any) -> complex:
    if type(body) is not list or len(body) != 2 or not all(type(x) is str for x in body):
        raise ProtocolError("a complex value is not [real, imag]")
    return complex(_float(body[0]), _float(body[1]))


_SCALARS: dict[str, Callable[[Any], Any]] = {
    "int": _int,
    "float": _float,
    "str": lambda body: _text("str", body),
    "bytes": lambda body: bytes.fromhex(_text("bytes", body)),
    "complex": _complex,
}
_COLLECTIONS: dict[str, Callable[[Any], Any]] = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}


def _decode_dict(body: list[Any], depth: int) -> dict[Any, Any]:
    if not all(type(pair) is list and len(pair) == 2 for pair in body):
        raise ProtocolError("a dict value is not a list of [key, value] pairs")
    try:
        return {decode_value(k, depth + 1): decode_value(v, depth + 1) for k, v in body}
    except TypeError:
        raise ProtocolError("a dict key is unhashable") from None


def _decode_collection(kind: str, body: list[Any], depth: int) -> Any:
    collection = _COLLECTIONS.get(kind)
    if collection is None:
        raise ProtocolError(f"unknown value kind {kind[:20]!r}")
    try:
        return collection(decode_value(x, depth + 1) for x in body)
    except TypeError:
        raise ProtocolError(f"a {kind} item is unhashable") from None
