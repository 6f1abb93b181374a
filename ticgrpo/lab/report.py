"""Output helpers of the lab: results.json, markdown tables, confidence intervals, plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats


def t_interval(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and half-width of the 95% Student-t interval along `axis` (half-width 0 for one value)."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[axis]
    mean = values.mean(axis=axis)
    if n < 2:
        return mean, np.zeros_like(mean)
    sem = values.std(axis=axis, ddof=1) / math.sqrt(n)
    return mean, stats.t.ppf(0.975, n - 1) * sem


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table; floats are written with 4 significant digits."""

    def cell(x: Any) -> str:
        text = f"{x:.4g}" if isinstance(x, float) else str(x)
        return text.replace("|", "\\|")  # a literal | (as in 1/|o|) would split the cell

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


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


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
