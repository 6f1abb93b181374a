"""Every committed lab report rebuilds from its committed results.json: `report.md` byte for byte
and every figure it names, through the same `write` stage that `ticgrpo lab <name>` runs (the
compare reports under docs/results/ are rebuilt by tests/test_reports.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ticgrpo.lab.cli import EXPERIMENTS

LAB = Path(__file__).parents[1] / "docs" / "lab"
FOLDERS = sorted(p.name for p in LAB.iterdir() if (p / "results.json").is_file())
# folders named after a variant of their study, not the study itself
STUDY = {"objectives": "bias", "baselines_rloo_step": "baselines", "factorial_short": "factorial",
         "checkpoint_lag_t4": "checkpoint_lag"}


def study_of(folder: str) -> str:
    return STUDY.get(folder, folder.split("_neural")[0])


def test_every_committed_lab_folder_names_a_study():
    assert len(FOLDERS) >= 20
    assert {study_of(name) for name in FOLDERS} == set(EXPERIMENTS)


@pytest.mark.parametrize("folder", FOLDERS)
def test_a_committed_lab_report_rebuilds_from_its_results(folder: str, tmp_path: Path):
    committed = LAB / folder
    written = EXPERIMENTS[study_of(folder)].write(json.loads((committed / "results.json").read_text()), tmp_path)
    assert (tmp_path / "report.md").read_text() == (committed / "report.md").read_text()
    for path in written:
        assert (committed / path.name).is_file(), f"{folder}: {path.name} is written but not committed"
    report = (committed / "report.md").read_text()
    for figure in (p.name for p in written if p.suffix == ".png"):
        assert figure in report or figure in (LAB.parent / "lab.md").read_text(), f"{folder}: {figure} is shown nowhere"
