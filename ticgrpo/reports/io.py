"""Reading run logs and writing report data: JSON lines in, compact or JSON-safe JSON out."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON-lines file; [] when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object file's contents; {} when it is missing, unreadable JSON or not an object."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def json_safe(value: Any) -> Any:
    """A copy that strict JSON can hold: non-finite floats → null, paths → strings."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _rounded(data: Any, digits: int) -> Any:
    if isinstance(data, float):
        return float(f"{data:.{digits}g}")
    if isinstance(data, dict):
        return {k: _rounded(v, digits) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_rounded(v, digits) for v in data]
    return data


def write_json(path: Path, data: Any, digits: int = 10) -> None:
    """Compact JSON, floats rounded to `digits` significant digits (keeps the committed outputs small)."""
    path.write_text(json.dumps(_rounded(data, digits), separators=(",", ":"), allow_nan=True) + "\n")


__all__ = ["json_safe", "read_json_object", "read_jsonl", "write_json"]
