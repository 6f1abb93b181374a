"""Seeds-needed calculations: checked against simulated experiments run with the very tests the
reports use (paired t-test, paired TOST from ticgrpo.reports.stats)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ticgrpo.reports.power import (
    difference_power,
    equivalence_power,
    plan_pairs,
    seeds_for_difference,
    seeds_for_equivalence,
)
from ticgrpo.reports.stats import paired_difference

ROOT = Path(__file__).resolve().parents[1]


def _simulated_rate(n: int, sd: float, true_difference: float, decide, trials: int = 1500) -> float:
    rng = np.random.default_rng(0)
    return float(np.mean([decide(paired_difference(rng.normal(true_difference, sd, n).tolist(), 0.05))
                          for _ in range(trials)]))


@pytest.mark.parametrize("n,delta", [(6, 0.2), (30, 0.1)])
def test_difference_power_matches_simulated_paired_t_tests(n, delta):
    simulated = _simulated_rate(n, 0.2, delta, lambda r: r.p_value < 0.05)
    assert difference_power(n, 0.2, delta, 0.05) == pytest.approx(simulated, abs=0.04)  # 1500 trials: SE ≤ 0.013


@pytest.mark.parametrize("n", [30, 120])
def test_equivalence_power_matches_simulated_tost(n):
    simulated = _simulated_rate(n, 0.2, 0.0, lambda r: r.equivalence_p_value < 0.05)
    assert equivalence_power(n, 0.2, 0.05, 0.05) == pytest.approx(simulated, abs=0.04)


def test_seeds_needed_is_the_smallest_n_that_reaches_the_power():
    n = seeds_for_difference(0.2, 0.1, 0.05, 0.8)
    assert difference_power(n, 0.2, 0.1, 0.05) >= 0.8 > difference_power(n - 1, 0.2, 0.1, 0.05)
    m = seeds_for_equivalence(0.2, 0.05, 0.05, 0.8)
    assert equivalence_power(m, 0.2, 0.05, 0.05) >= 0.8 > equivalence_power(m - 1, 0.2, 0.05, 0.05)
    assert m > n  # showing equality within ±0.05 takes more seeds than detecting a 0.1 difference
    assert seeds_for_difference(0.1, 0.1) < n  # pairing that halves the spread needs fewer seeds
    with pytest.raises(ValueError, match="sd and delta must be > 0"):
        seeds_for_difference(0.0, 0.1)


def test_plan_pairs_uses_the_shared_seeds_and_alpha_over_m():
    finals = {"a": {0: 0.5, 1: 0.6, 2: 0.4, 3: 0.7}, "b": {0: 0.4, 1: 0.6, 2: 0.2, 9: 0.1}, "c": {0: 0.5, 1: 0.5}}
    (ab, ac) = plan_pairs(finals, [("a", "b"), ("a", "c")], delta=0.1, margin=0.05)
    assert ab.seeds == 3 and ab.mean_difference == pytest.approx(0.1) and ab.sd == pytest.approx(0.1)
    assert ab.seeds_to_detect == seeds_for_difference(0.1, 0.1, 0.025)  # α/m with m = 2
    assert ac.seeds == 2
    assert difference_power(10, 0.1, ab.detectable_at_planned, 0.025) == pytest.approx(0.8, abs=1e-6)


def test_the_command_on_a_committed_summary_and_its_errors(tmp_path):
    summary = ROOT / "docs" / "results" / "ablation-h100" / "summary.json"
    done = subprocess.run([sys.executable, "-m", "ticgrpo.reports.power", str(summary), "--pairs", "tic_grpo:grpo"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("| tic_grpo − grpo"))
    finals = {r["algorithm"]: r["final_accuracies"] for r in json.loads(summary.read_text())["rows"]}
    differences = np.subtract(finals["tic_grpo"], finals["grpo"])
    assert f"| {differences.mean():+.3f} | {differences.std(ddof=1):.3f} |" in row
    bad = subprocess.run([sys.executable, "-m", "ticgrpo.reports.power", str(summary), "--pairs", "tic:grpo"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "'tic:grpo' is not a:b" in bad.stderr
