"""The verdict table of docs/results.md is recomputed from the committed results, by the pre-registered rules."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ticgrpo.reports import verdicts

ROOT = Path(__file__).parents[1]


def test_the_documented_verdicts_are_the_committed_results(capsys):
    assert verdicts.main(["--check", str(ROOT / "docs" / "results.md")]) == 0, capsys.readouterr().err


def test_a_changed_table_is_caught(tmp_path: Path, capsys):
    text = (ROOT / "docs" / "results.md").read_text().replace("| supported |", "| refuted |", 1)
    (tmp_path / "results.md").write_text(text)
    assert verdicts.main(["--check", str(tmp_path / "results.md")]) == 1
    assert "differs from the committed results" in capsys.readouterr().err
    (tmp_path / "none.md").write_text("no table")
    assert verdicts.main(["--check", str(tmp_path / "none.md")]) == 2
    assert verdicts.main(["--write", str(tmp_path / "results.md")]) == 0  # the recomputed table, the rest kept
    assert (tmp_path / "results.md").read_text() == (ROOT / "docs" / "results.md").read_text()


@pytest.mark.parametrize(("row", "expected"), [
    ({"mean": -0.3, "p_holm": 0.01}, "negative"),
    ({"mean": 0.3, "p_holm": 0.049}, "positive"),
    ({"mean": 0.3, "p_holm": 0.05}, "inconclusive"),
    ({"mean": 0.0, "p_holm": math.nan}, "inconclusive"),
])
def test_a_paired_comparison_is_read_by_its_sign_only_after_holm(row, expected):
    assert verdicts._tested(row, "positive", "negative") == expected


def _checkpoint_lag(tmp_path: Path, position: dict, gap_low: float) -> Path:
    folder = tmp_path / "lab" / "checkpoint_lag"
    folder.mkdir(parents=True)
    stats = {"position": {"undefined_frac": 0.0, **position}, "target_gap2": {"value": 1.0, "low": gap_low, "high": 2}}
    (folder / "results.json").write_text(json.dumps({
        "config": {"step": 8, "lags": [4], "groups": 64},
        "lags": {"4": {"variants": {"grpo": stats}}},
    }))
    return tmp_path


@pytest.mark.parametrize(("position", "gap_low", "expected"), [
    ({"value": 0.05, "low": -0.2, "high": 0.3}, 0.1, "supported"),
    ({"value": 0.9, "low": 0.6, "high": 1.2}, 0.1, "refuted"),
    ({"value": 0.5, "low": -0.5, "high": 1.5}, 0.1, "inconclusive"),
    ({"value": 0.05, "low": -0.2, "high": 0.3}, -0.1, "inconclusive (noise-dominated)"),
    ({"value": math.nan, "low": math.nan, "high": math.nan}, 0.1, "inconclusive (noise-dominated)"),
])
def test_the_real_model_rule_is_the_pre_registered_one(position, gap_low, expected, tmp_path, monkeypatch):
    monkeypatch.setattr(verdicts, "DOCS", _checkpoint_lag(tmp_path, position, gap_low))
    (row,) = list(verdicts.claim1_real_model())
    assert row.verdict == f"{expected} at k = 4"


def test_missing_studies_give_no_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(verdicts, "DOCS", tmp_path)
    assert verdicts.verdicts() == []
