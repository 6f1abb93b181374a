"""ticgrpo.reports: the statistics against independent computations, the report built from run
folders (both config forms), `ticgrpo report`, and the committed results in docs/results/."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import integrate

from ticgrpo.cli import main
from ticgrpo.compare.plan import DONE_MARKER, MARKER
from ticgrpo.config import TrainConfig
from ticgrpo.reports.markdown import table_lines
from ticgrpo.reports.report import build_report
from ticgrpo.reports.runs import comparison_meta, load_run, load_runs
from ticgrpo.reports.stats import (
    mean_std,
    paired_t_test,
    permutation_test,
    t_half_width,
    t_interval,
    welch_t_test,
)

ROOT = Path(__file__).resolve().parents[1]
A, B = [0.41, 0.47, 0.44, 0.52], [0.30, 0.52, 0.33]


# ---------------------------------------------------------------------- statistics


def student_t_two_sided_p(t: float, df: float) -> float:
    """2·P(T > |t|), integrating Student's t density written out (no scipy.stats)."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def density(x: float) -> float:
        return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))

    tail, _ = integrate.quad(density, abs(t), math.inf, epsabs=1e-14, epsrel=1e-12)
    return 2 * tail


def exact_permutation_p(a: list[float], b: list[float]) -> float:
    """Fraction of all relabellings whose |mean difference| reaches the observed one."""
    pooled, k = a + b, len(a)
    observed = abs(sum(a) / len(a) - sum(b) / len(b))
    hits = total = 0
    for chosen in itertools.combinations(range(len(pooled)), k):
        rest = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        diff = abs(sum(pooled[i] for i in chosen) / k - sum(rest) / len(rest))
        hits += diff >= observed - 1e-12
        total += 1
    return hits / total


def test_t_interval_uses_the_tabulated_quantile():
    mean, low, high = t_interval(A)
    sd = math.sqrt(sum((x - 0.46) ** 2 for x in A) / 3)
    half = 3.182446305284263 * sd / 2  # t_{0.975, 3} from a table; √4 = 2
    assert mean == pytest.approx(0.46) and (low, high) == pytest.approx((0.46 - half, 0.46 + half), rel=1e-12)
    assert t_interval([0.5]) == (0.5, 0.5, 0.5)
    assert all(math.isnan(v) for v in t_interval([]))
    columns = np.array([A, [x + 1 for x in A], [2 * x for x in A]]).T  # 4 seeds × 3 quantities
    means, halves = t_half_width(columns, axis=0)
    for j in range(3):
        m, lo, _ = t_interval(columns[:, j].tolist())
        assert (means[j], halves[j]) == pytest.approx((m, m - lo), rel=1e-12)
    assert t_half_width(np.array([[1.0, 2.0]]))[1].tolist() == [0.0, 0.0]


def test_welch_and_paired_tests_match_the_formulas():
    welch = welch_t_test(A, B)
    (ma, sa), (mb, sb) = mean_std(A), mean_std(B)
    va, vb = sa**2 / 4, sb**2 / 3
    t = (ma - mb) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)  # Welch–Satterthwaite
    assert (welch.statistic, welch.df) == pytest.approx((t, df), rel=1e-12)
    assert welch.p_value == pytest.approx(student_t_two_sided_p(t, df), rel=1e-8)

    paired = paired_t_test(A[:3], B)
    diffs = [x - y for x, y in zip(A[:3], B, strict=True)]
    md, sd = mean_std(diffs)
    t = md / (sd / math.sqrt(3))
    assert (paired.statistic, paired.df) == pytest.approx((t, 2.0), rel=1e-12)
    # two degrees of freedom have a closed form: P(|T| > t) = 1 − t/√(t² + 2)
    assert paired.p_value == pytest.approx(1 - abs(t) / math.sqrt(t * t + 2), rel=1e-10)


def test_undefined_tests_say_why():
    assert math.isnan(welch_t_test([1, 1, 1], [1, 1, 1]).p_value)
    assert welch_t_test([1, 1, 1], [1, 1, 1]).note == "zero variance in both groups, equal means"
    assert welch_t_test([0.5], [0.4, 0.6]).note == "needs >= 2 values per group"
    one_constant = welch_t_test([0.5, 0.5, 0.5], [0.4, 0.6, 0.7])  # defined, and scipy stays quiet
    assert 0 < one_constant.p_value < 1 and one_constant.note == ""
    assert paired_t_test([1, 2], [0, 1]).note == "identical differences"
    with pytest.raises(ValueError, match="equal lengths"):
        paired_t_test([1, 2], [1])
    assert permutation_test([], [1.0]).note == "empty group"


@pytest.mark.parametrize("a, b", [([1, 2, 3], [4, 5, 6]), (A, B), ([0.5, 0.5, 0.7], [0.5, 0.6, 0.5, 0.5, 0.9])])
def test_permutation_test_is_exact(a, b):
    result = permutation_test(a, b)
    assert result.p_value == pytest.approx(exact_permutation_p(list(a), list(b)), abs=1e-12)
    assert result.note == f"exact, {math.comb(len(a) + len(b), len(a))} relabellings"
    assert result.statistic == pytest.approx(sum(a) / len(a) - sum(b) / len(b))


def test_permutation_test_samples_with_its_seed():
    a, b = [0.1 * i for i in range(8)], [0.1 * i + 0.25 for i in range(8)]
    exact = exact_permutation_p(a, b)  # C(16, 8) = 12870 relabellings
    sampled = permutation_test(a, b, max_exact=1000, samples=4000, seed=3)
    assert sampled.note == "sampled, 4000 relabellings"
    assert sampled.p_value == pytest.approx(exact, abs=0.03)
    assert permutation_test(a, b, max_exact=1000, samples=4000, seed=3).p_value == sampled.p_value


# ---------------------------------------------------------------------- reports from run folders


def write_run(folder: Path, algorithm_section: dict, seed: int, accuracies: list[float], *, steps: int = 4,
              max_steps: int | None = None, marker: str | None = None, done: bool = True,
              rollout: dict | None = None) -> Path:
    """A run folder as `ticgrpo train` (and, with `marker`, `ticgrpo compare`) leaves it after `steps` steps."""
    folder.mkdir(parents=True)
    config = {"seed": seed, "max_steps": max_steps or steps, "algorithm": algorithm_section}
    if rollout is not None:
        config["rollout"] = rollout
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    metrics = [{"step": s, "reward_mean": 0.1 * s + 0.01 * seed, "time_step": 2.0, "grad_norm": float(s),
                "grad_norm_max": 2.0 * s + seed, "clip_frac_high": 0.1, "log_w_min": -s - seed}
               for s in range(1, steps + 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    evals = [{"step": s, "accuracy": acc} for s, acc in zip(range(0, steps + 1, 2), accuracies, strict=False)]
    (folder / "eval.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    if marker is not None:
        (folder / MARKER).write_text(json.dumps({"algorithm": marker, "seed": seed, "spec": {"description": marker}}))
        if done:
            (folder / DONE_MARKER).write_text(json.dumps({"wall_s": 9.0}))
    return folder


@pytest.fixture
def comparison(tmp_path: Path) -> Path:
    runs = tmp_path / "cmp" / "runs"
    nested = {"objective": {"name": "cispo", "epsilon_high": 0.3}, "advantage": {"name": "beta_norm",
                                                                                 "reward_min": 0.0}}
    legacy = {"objective": "tic_grpo", "objective_options": {"epsilon_high": 0.2}, "advantage": "length_corrected"}
    for seed, (first, second) in enumerate([(0.3, 0.6), (0.35, 0.7)]):
        write_run(runs / "cispo" / f"seed-{seed}", nested, seed, [0.2, first, second], marker="cispo")
        write_run(runs / "tic" / f"seed-{seed}", legacy, seed, [0.2, 0.25, 0.3 + 0.1 * seed], marker="tic")
    write_run(runs / "tic" / "seed-2", legacy, 2, [0.2], marker="tic", done=False, steps=1, max_steps=4)
    return tmp_path / "cmp"


def test_report_from_run_folders(comparison: Path):
    runs = load_runs([comparison])
    assert sorted((r.algorithm, r.seed, r.complete) for r in runs) == [
        ("cispo", 0, True), ("cispo", 1, True), ("tic", 0, True), ("tic", 1, True), ("tic", 2, False)]
    path = build_report(runs, comparison, order=["tic", "cispo"])
    summary = json.loads((comparison / "summary.json").read_text())
    rows = {r["algorithm"]: r for r in summary["rows"]}
    assert [r["algorithm"] for r in summary["rows"]] == ["tic", "cispo"]
    assert rows["cispo"]["final_accuracies"] == [0.6, 0.7] and rows["tic"]["n"] == 2
    assert rows["cispo"]["best_step"] == 4 and rows["cispo"]["steps"] == 4
    # threshold: midpoint of the step-0 accuracy 0.2 and the best mean 0.65
    assert summary["threshold"] == pytest.approx(0.425) and rows["cispo"]["steps_to_threshold"] == 4
    assert rows["tic"]["steps_to_threshold"] is None
    diag = rows["tic"]["diagnostics"]
    assert diag["log_w_min"] == -5.0 and diag["grad_norm_max"] == 9.0 and diag["grad_norm"] == 2.5
    assert diag["clip_frac_high"] == pytest.approx(0.1) and diag["ratio_min"] is None
    assert summary["algorithms"]["cispo"] == {
        "description": "cispo", "objective": "cispo", "objective_options": {"epsilon_high": 0.3},
        "advantage": "beta_norm", "advantage_options": {"reward_min": 0.0}, "num_iterations": None,
        "num_minibatches": None}
    assert summary["algorithms"]["tic"]["objective_options"] == {"epsilon_high": 0.2}  # the older form
    text = path.read_text()
    assert '`{"epsilon_high": 0.3}`' in text and "| tic | 2 | incomplete (not in the tables) | 1/4 |" in text
    assert "| tic | cispo |" in text
    assert "- `grad_norm`: mean gradient norm" in text and "grad norm (median)" in text
    assert (comparison / "plots" / "accuracy.png").stat().st_size > 1000


def test_report_cli_rebuilds_the_same_table(comparison: Path, tmp_path: Path, capsys):
    build_report(load_runs([comparison]), comparison, order=["tic", "cispo"])
    (comparison / "comparison.json").write_text(json.dumps({"algorithms": ["tic", "cispo"]}))
    single = [str(p) for p in sorted((comparison / "runs").glob("*/seed-[01]"))]
    assert main(["report", *single, "--out", str(tmp_path / "again")]) == 0
    assert "report on 4 runs (4 complete)" in capsys.readouterr().out
    first = json.loads((comparison / "summary.json").read_text())["rows"]
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["rows"] == first
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_config_without_the_key_means_the_default(tmp_path: Path):
    run = load_run(write_run(tmp_path / "r", {"objective": "grpo"}, 0, [0.1], steps=2))
    defaults = TrainConfig().rollout
    assert run.algorithm == "grpo"
    assert run.axes()[2][0] == 2 * defaults.prompts_per_step * defaults.num_generations
    with_rollout = load_run(write_run(tmp_path / "s", {"objective": "grpo"}, 0, [0.1], steps=2,
                                      rollout={"prompts_per_step": 2, "num_generations": 3}))
    assert with_rollout.axes()[2] == (12.0, 4.0)


@pytest.mark.parametrize("name", ["ablation-cpu", "ablation-h100"])
def test_committed_results_still_read(name: str):
    folder = ROOT / "docs" / "results" / name
    summary = json.loads((folder / "summary.json").read_text())
    text = (folder / "report.md").read_text().split("## Results", 1)[1].strip().splitlines()
    committed = [line for line in text[: text.index("")] if line.startswith("|")]
    assert table_lines(summary) == committed
    meta = comparison_meta([], folder)
    assert meta["algorithms"][0] == "tic_grpo" and meta["specs"]["tic_grpo"]["objective_options"]
