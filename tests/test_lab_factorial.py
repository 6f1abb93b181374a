"""`ticgrpo lab factorial`: the arm table, the comparisons, the statistics and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from ticgrpo.cli import main
from ticgrpo.core.objectives import OBJECTIVES, make_objective_config
from ticgrpo.lab.enumerate import enumerate_trajectories
from ticgrpo.lab.factorial import (
    COMPARISONS,
    GRPO_CELL,
    TIC_GRPO_CELL,
    Cell,
    Comparison,
    FactorialConfig,
    cell_variant,
    comparison_values,
    factorial_cells,
    omission_reason,
    table_name,
)
from ticgrpo.lab.rewards import make_rewards
from ticgrpo.lab.variants import VARIANTS
from ticgrpo.reports.stats import holm_adjust, paired_difference


def _method(variant):  # what makes two variants the same method
    return variant.objective, variant.config(), variant.advantage_name, variant.advantage_options


# --- the arm table ------------------------------------------------------------------------------


def test_grpo_and_tic_grpo_cells_are_exactly_their_defaults() -> None:
    grpo = cell_variant(GRPO_CELL)
    assert grpo.objective == "grpo" and grpo.config() == make_objective_config("grpo")
    assert grpo.advantage_name == OBJECTIVES.spec("grpo").default_advantage == "group_norm"
    tic = cell_variant(TIC_GRPO_CELL)
    assert tic.objective == "tic_grpo" and tic.config() == make_objective_config("tic_grpo")
    assert tic.advantage_name == OBJECTIVES.spec("tic_grpo").default_advantage == "length_corrected"
    assert (table_name(grpo), table_name(tic)) == ("grpo", "tic_grpo")


@pytest.mark.parametrize(
    ("cell", "name"),
    [
        (Cell("token", "none", "per_sequence", "group_norm"), "grpo_noclip"),
        (Cell("token", "none", "token_sum", "group_norm"), "grpo_tokensum"),
        (Cell("none", "none", "per_sequence", "group_norm"), "no_is"),
        (Cell("none", "none", "token_sum", "group_norm"), "no_is_tokensum"),
        (Cell("trajectory", "none", "token_sum", "group_norm"), "tic_ratio_only"),
        (Cell("trajectory", "none", "token_sum", "length_corrected"), "tic_ratio_lenadv"),
        (Cell("trajectory", "upper_only", "token_sum", "group_norm"), "tic_ratio_clip"),
    ],
)
def test_cells_that_are_table_ablations_are_the_same_method(cell: Cell, name: str) -> None:
    assert _method(cell_variant(cell)) == _method(VARIANTS[name])
    assert table_name(cell_variant(cell)) == name


def test_every_factor_level_reaches_the_objective_options() -> None:
    config = cell_variant(Cell("token", "upper_only", "token_mean", "length_corrected")).config()
    assert (config.epsilon_low, config.epsilon_high, config.aggregation) == (None, 0.2, "token-mean")
    config = cell_variant(Cell("trajectory", "symmetric", "per_sequence", "group_norm"), epsilon=0.1).config()
    assert (config.epsilon_low, config.epsilon_high, config.length_normalize) == (0.1, 0.1, True)
    none = cell_variant(Cell("none", "none", "token_mean", "group_norm"))
    assert none.is_frozen() and none.config().aggregation == "token-mean"


def test_omitted_cells_say_why_and_are_never_run() -> None:
    cells, omitted = factorial_cells(FactorialConfig())
    assert len(cells) == 18 + 12 + 6 and len(omitted) == 3 * 3 * 3 * 2 - len(cells)
    collapsed = [name for name in omitted if name.startswith("none/") and not name.startswith("none/none/")]
    assert len(collapsed) == 2 * 3 * 2 and all("nothing to clip" in omitted[name] for name in collapsed)
    assert "no token-mean" in str(omission_reason(Cell("trajectory", "none", "token_mean", "group_norm")))
    with pytest.raises(ValueError, match="is not run: not expressible"):
        cell_variant(Cell("trajectory", "none", "token_mean", "group_norm"))


def test_first_token_reward_is_length_neutral() -> None:
    space = enumerate_trajectories(3, 4)
    rewards = make_rewards("first", space)
    assert set(rewards.tolist()) == {0.0, 1.0}
    assert bool(((rewards == 1) == (space.tokens[:, 0] == 1)).all())
    rewarded = space.lengths[rewards == 1]
    assert set(rewarded.tolist()) == set(range(2, 5))  # every length but the immediate EOS


# --- comparisons and statistics ---------------------------------------------------------------


def test_main_effects_and_interactions_on_known_cell_values() -> None:
    """values = seed + 1·[trajectory] + 2·[token_sum] + 4·[trajectory & token_sum]: the effects are known."""
    seeds = np.arange(4.0)
    values = {}
    for ratio in ("token", "trajectory"):
        for aggregation in ("per_sequence", "token_sum"):
            for advantage in ("group_norm", "length_corrected"):
                t, s = ratio == "trajectory", aggregation == "token_sum"
                values[Cell(ratio, "none", aggregation, advantage)] = seeds + 1 * t + 2 * s + 4 * (t and s)
    by_name = {c.name: c for c in COMPARISONS}
    ratio, n = comparison_values(by_name["ratio: trajectory − token"], values)
    assert n == 4 and np.allclose(ratio, 1 + 4 / 2)  # averaged over both aggregations
    interaction, n = comparison_values(by_name["ratio × aggregation"], values)
    assert n == 2 and np.allclose(interaction, 4)
    advantage, _ = comparison_values(by_name["advantage: length_corrected − group_norm"], values)
    assert np.allclose(advantage, 0)
    assert comparison_values(by_name["clip: none − symmetric"], values) is None  # no symmetric cell ran
    named = Comparison("x", cells=(Cell("trajectory", "none", "token_sum", "group_norm"),
                                   Cell("token", "none", "per_sequence", "group_norm")))  # fmt: skip
    assert np.allclose(comparison_values(named, values)[0], 7)


def test_paired_difference_matches_scipy_and_tost() -> None:
    d = [0.01, 0.02, 0.0, 0.015, 0.005]
    out = paired_difference(d, margin=0.02)
    assert out.mean == pytest.approx(0.01) and out.n == 5
    half = stats.t.ppf(0.975, 4) * stats.sem(d)
    assert (out.low, out.high) == (pytest.approx(0.01 - half), pytest.approx(0.01 + half))
    assert out.p_value == pytest.approx(stats.ttest_rel(d, np.zeros(5)).pvalue)
    # TOST: the upper one-sided test binds (mean 0.01 is nearer +0.02); t = (0.01 − 0.02)/sem
    upper = stats.t.cdf((0.01 - 0.02) / stats.sem(d), 4)
    assert out.equivalence_p_value == pytest.approx(upper)
    wide = paired_difference(d, margin=0.001)
    assert wide.equivalence_p_value > 0.5
    flat = paired_difference([0.1, 0.1, 0.1], margin=0.02)
    assert math.isnan(flat.p_value) and "zero variance" in flat.note


def test_holm_adjust() -> None:
    adjusted = holm_adjust([0.01, 0.04, 0.03, math.nan, 0.005])
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06]) and adjusted[4] == pytest.approx(0.02)
    assert math.isnan(adjusted[3])
    assert holm_adjust([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # 2·0.8 capped at 1, then monotone


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_runs_a_tiny_factorial_and_writes_its_files(tmp_path, capsys) -> None:
    out = tmp_path / "fx"
    rc = main(
        ["lab", "factorial", "--vocab", "3", "--max-len", "3", "--iterations", "2", "--inner-steps", "1",
         "--seeds", "0,1,2", "--tuning-seeds", "100", "--lrs", "0.05,0.1", "--rewards", "first,long",
         "--clips", "symmetric,none", "--aggregations", "per_sequence,token_sum", "--no-progress",
         "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["arms"]) == 2 * 2 * 2 + 2 * 2 * 2 + 2 * 2  # token, trajectory, none (clip none)
    run = results["runs"]["first"][GRPO_CELL.name]
    assert run["lr"] in (0.05, 0.1) and len(run["mean_J"]) == 3 and set(run["tuning_mean_J"]) == {"0.05", "0.1"}
    rows = [r for r in results["comparisons"] if r["metric"] == "mean_J"]
    assert len(rows) == 2 * len(COMPARISONS)
    assert {r["verdict"] for r in rows if r["comparison"].startswith("aggregation: token_mean")} == {"not run"}
    assert (out / "report.md").read_text().startswith("# lab factorial")
    assert (out / "factorial_effects.png").stat().st_size > 0
    assert "ratio × aggregation" in capsys.readouterr().out
