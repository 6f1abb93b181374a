"""`ticgrpo lab factorial`: which component of TIC-GRPO matters, measured with exact J.

TIC-GRPO (arXiv 2508.02833) differs from GRPO in several components at once. This experiment
crosses them, each arm a registered objective with options and an advantage estimator:

* ratio: `token` (grpo's per-token ratio), `trajectory` (tic_grpo's product of token ratios),
  `none` (no_is, frozen: the gradient at θ_old applied at every inner step);
* clip: `symmetric` [1−ε, 1+ε], `upper_only` min(ρ, 1+ε), `none`;
* aggregation: `per_sequence` (1/|o|: grpo/no_is seq-mean-token-mean, tic_grpo length_normalize),
  `token_sum` (seq-mean-token-sum; tic_grpo's default per-sequence surrogate w_i·A_i),
  `token_mean` (token-mean, DAPO style);
* advantage: `group_norm`, `length_corrected` (rewards / |o| before group normalisation).

Cells not run, and why (`omission_reason`): with no ratio there is nothing to clip, so `none`'s
three clip levels are one arm (kept as clip `none`); tic_grpo cannot express token-mean
aggregation of its per-sequence surrogate. Every arm trains with the `lab converge` loop
(`converge.train`: same θ_init and sampler per seed across arms, so differences are paired) at
its own learning rate, chosen per (arm, reward) on tuning seeds that the verdicts never use.

Effects are paired differences per verdict seed of the primary metric (mean exact J over
iterations 1..N) and of the final J: a main effect averages the difference between the two
levels over every pair of run cells that differ only in that factor; an interaction is the
difference of two such differences. The pre-declared comparisons (`COMPARISONS`) are tested
with a one-sample t-test over seeds, Holm-corrected across comparisons × rewards (one family per
metric), and an equivalence test (TOST, ±margin, Holm-corrected the same way) says where an
effect is shown to be negligible.
"""

from __future__ import annotations

import itertools
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import asdict, astuple, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ticgrpo.lab.converge import OPTIMIZERS, ConvergeConfig, make_problem, mean_over_training, train
from ticgrpo.lab.options import SpaceConfig, check_options, option
from ticgrpo.lab.rewards import REWARDS
from ticgrpo.lab.variants import VARIANTS, Variant
from ticgrpo.reports.io import write_json
from ticgrpo.reports.markdown import markdown_table
from ticgrpo.reports.plots import pyplot
from ticgrpo.reports.stats import holm_adjust, paired_difference, t_half_width

RATIOS = ("token", "trajectory", "none")
CLIPS = ("symmetric", "upper_only", "none")
AGGREGATIONS = ("per_sequence", "token_sum", "token_mean")
ADVANTAGES = ("group_norm", "length_corrected")
FACTORS = ("ratio", "clip", "aggregation", "advantage")
METRICS = ("mean_J", "final_J")  # mean_J (area under the exact-J curve) is the primary metric
ALPHA = 0.05

_OBJECTIVE = {"token": "grpo", "trajectory": "tic_grpo", "none": "no_is"}
_AGGREGATION = {"per_sequence": "seq-mean-token-mean", "token_sum": "seq-mean-token-sum", "token_mean": "token-mean"}
_LENGTH_NORMALIZE = {"per_sequence": True, "token_sum": False}  # tic_grpo's only aggregation option


@dataclass(frozen=True, order=True)
class Cell:
    """One arm of the factorial: a level of each factor."""

    ratio: str
    clip: str
    aggregation: str
    advantage: str

    @property
    def name(self) -> str:
        return "/".join(astuple(self))

    def level(self, factor: str) -> str:
        return str(getattr(self, factor))

    def with_level(self, factor: str, level: str) -> Cell:
        return replace(self, **{factor: level})


def omission_reason(cell: Cell) -> str | None:
    """Why `cell` is not run (None: it is)."""
    if cell.ratio == "none" and cell.clip != "none":
        return "collapsed onto ratio none / clip none: with no ratio there is nothing to clip"
    if cell.ratio == "trajectory" and cell.aggregation == "token_mean":
        return (
            "not expressible: tic_grpo aggregates its per-sequence surrogate w_i·A_i as a sequence mean, "
            "with or without 1/|o| (length_normalize); it has no token-mean"
        )
    return None


def clip_options(clip: str, epsilon: float) -> dict[str, float | None]:
    """The epsilon_low/epsilon_high options of grpo and tic_grpo for a clip level."""
    low, high = {"symmetric": (epsilon, epsilon), "upper_only": (None, epsilon), "none": (None, None)}[clip]
    return {"epsilon_low": low, "epsilon_high": high}


def cell_variant(cell: Cell, epsilon: float = 0.2) -> Variant:
    """The registered objective, options and advantage that `cell` is; ValueError for an omitted cell."""
    reason = omission_reason(cell)
    if reason is not None:
        raise ValueError(f"cell {cell.name} is not run: {reason}")
    overrides: dict[str, Any]
    if cell.ratio == "none":
        overrides = {"mode": "frozen", "aggregation": _AGGREGATION[cell.aggregation]}
    elif cell.ratio == "token":
        overrides = {**clip_options(cell.clip, epsilon), "aggregation": _AGGREGATION[cell.aggregation]}
    else:
        overrides = {**clip_options(cell.clip, epsilon), "length_normalize": _LENGTH_NORMALIZE[cell.aggregation]}
    objective = _OBJECTIVE[cell.ratio]
    description = f"{objective} {overrides}, advantage {cell.advantage}"
    return Variant(cell.name, objective, overrides, cell.advantage, description)


def table_name(variant: Variant) -> str | None:
    """The ALGORITHMS entry that is the same method as `variant` (e.g. `grpo`, `tic_grpo`), if any."""
    method = (variant.objective, variant.config(), variant.advantage_name, variant.advantage_options)
    for name, entry in VARIANTS.items():
        if (entry.objective, entry.config(), entry.advantage_name, entry.advantage_options) == method:
            return name
    return None


@dataclass(frozen=True)
class Comparison:
    """A pre-declared comparison: Δ = treatment − baseline of one factor (`effects` of length 1),
    the interaction of two factors (length 2: the first factor's Δ at the second's treatment minus
    at its baseline), or two named cells (`cells` = (treatment, baseline))."""

    name: str
    effects: tuple[tuple[str, str, str], ...] = ()  # (factor, treatment, baseline)
    cells: tuple[Cell, Cell] | None = None


def _effect(name: str, *effects: tuple[str, str, str]) -> Comparison:
    return Comparison(name, tuple(effects))


GRPO_CELL = Cell("token", "symmetric", "per_sequence", "group_norm")
TIC_GRPO_CELL = Cell("trajectory", "upper_only", "token_sum", "length_corrected")
_TRAJECTORY = ("ratio", "trajectory", "token")
_TOKEN_SUM = ("aggregation", "token_sum", "per_sequence")
_LENGTH_CORRECTED = ("advantage", "length_corrected", "group_norm")
_UPPER_ONLY = ("clip", "upper_only", "symmetric")

COMPARISONS = (
    _effect("ratio: trajectory − token", _TRAJECTORY),
    _effect("ratio: none − token (unclipped)", ("ratio", "none", "token")),
    _effect("clip: upper_only − symmetric", _UPPER_ONLY),
    _effect("clip: none − symmetric", ("clip", "none", "symmetric")),
    _effect("aggregation: token_sum − per_sequence", _TOKEN_SUM),
    _effect("aggregation: token_mean − per_sequence", ("aggregation", "token_mean", "per_sequence")),
    _effect("advantage: length_corrected − group_norm", _LENGTH_CORRECTED),
    _effect("ratio × aggregation", _TRAJECTORY, _TOKEN_SUM),
    _effect("ratio × advantage", _TRAJECTORY, _LENGTH_CORRECTED),
    _effect("ratio × clip", _TRAJECTORY, _UPPER_ONLY),
    _effect("aggregation × advantage", _TOKEN_SUM, _LENGTH_CORRECTED),
    Comparison("tic_grpo − grpo (defaults)", cells=(TIC_GRPO_CELL, GRPO_CELL)),
    Comparison(
        "trajectory ratio in grpo: trajectory − token at grpo's other defaults",
        cells=(GRPO_CELL.with_level("ratio", "trajectory"), GRPO_CELL),
    ),
)


def _paired_differences(
    values: Mapping[Cell, np.ndarray], factor: str, treatment: str, baseline: str
) -> dict[Cell, np.ndarray]:
    """{cell at `treatment`: values[cell] − values[same cell at `baseline`]} over cells where both exist."""
    out = {}
    for cell, value in values.items():
        partner = cell.with_level(factor, baseline)
        if cell.level(factor) == treatment and partner in values:
            out[cell] = value - values[partner]
    return out


def comparison_values(comparison: Comparison, values: Mapping[Cell, np.ndarray]) -> tuple[np.ndarray, int] | None:
    """Per-seed Δ of `comparison` from per-seed metric `values` [S] of the run cells, and the number
    of matched cell sets it averages over; None when no matched set was run."""
    if comparison.cells is not None:
        treatment_cell, baseline_cell = comparison.cells
        if treatment_cell not in values or baseline_cell not in values:
            return None
        return values[treatment_cell] - values[baseline_cell], 1
    differences = dict(values)
    for factor, treatment, baseline in comparison.effects:
        differences = _paired_differences(differences, factor, treatment, baseline)
    if not differences:
        return None
    return np.mean(np.stack(list(differences.values())), axis=0), len(differences)


@dataclass
class FactorialConfig(SpaceConfig):
    rewards: tuple[str, ...] = option(
        ("long", "short", "first"), "rewards, one factorial each", choices=lambda: REWARDS.names()
    )
    seeds: tuple[int, ...] = option(
        tuple(range(10)), "verdict seeds; a seed gives every arm the same θ_init and sampler"
    )
    tuning_seeds: tuple[int, ...] = option((100, 101, 102), "seeds that choose each arm's lr (never verdict seeds)")
    lrs: tuple[float, ...] = option((0.01, 0.03, 0.1, 0.3), "learning-rate grid of the tuning", above=0)
    ratios: tuple[str, ...] = option(RATIOS, "ratio levels", choices=lambda: RATIOS)
    clips: tuple[str, ...] = option(CLIPS, "clip levels", choices=lambda: CLIPS)
    aggregations: tuple[str, ...] = option(AGGREGATIONS, "aggregation levels", choices=lambda: AGGREGATIONS)
    advantages: tuple[str, ...] = option(ADVANTAGES, "advantage levels", choices=lambda: ADVANTAGES)
    epsilon: float = option(0.2, "clip ε of every clipped arm", above=0)
    margin: float = option(0.02, "equivalence margin in J for the TOST", above=0)
    iterations: int = option(60, "outer iterations N", minimum=1)
    inner_steps: int = option(4, "μ optimizer steps per rollout batch", minimum=1)
    groups: int = option(4, "groups per outer iteration", minimum=1)
    optimizer: str = option("adam", "optimizer of the inner steps", choices=lambda: OPTIMIZERS)

    def converge_config(self, reward: str, lr: float) -> ConvergeConfig:
        """The `lab converge` settings of one arm's runs (what `converge.train` reads)."""
        space = {name: getattr(self, name) for name in ("policy", "vocab", "max_len", "group_size", "init_scale")}
        schedule = {name: getattr(self, name) for name in ("iterations", "inner_steps", "groups", "optimizer")}
        return ConvergeConfig(**space, **schedule, reward=reward, lr=lr, seeds=self.seeds)


def check_factorial(cfg: FactorialConfig) -> None:
    """check_options plus what the fields cannot say alone: ValueError, one line."""
    check_options(cfg)
    shared = sorted(set(cfg.seeds) & set(cfg.tuning_seeds))
    if shared:
        raise ValueError(f"tuning_seeds must not be verdict seeds; both have {shared}")
    if not factorial_cells(cfg)[0]:
        raise ValueError("no cell of the chosen levels can be run")


def factorial_cells(cfg: FactorialConfig) -> tuple[list[Cell], dict[str, str]]:
    """The cells run, and {cell name: why not} for the other combinations of the chosen levels."""
    run, omitted = [], {}
    for levels in itertools.product(cfg.ratios, cfg.clips, cfg.aggregations, cfg.advantages):
        cell = Cell(*levels)
        reason = omission_reason(cell)
        if reason is None:
            run.append(cell)
        else:
            omitted[cell.name] = reason
    return run, omitted


def _arm_runs(
    cfg: FactorialConfig, reward: str, variant: Variant, problem: Any, tick: Callable[[], None]
) -> dict[str, Any]:
    """Tune the lr on the tuning seeds (by mean J over training), then run the verdict seeds at it."""
    tuning = {}
    for lr in cfg.lrs:
        settings = cfg.converge_config(reward, lr)
        tuned = [train(problem, variant, problem.policy.init(s), settings, s, tick)["J"] for s in cfg.tuning_seeds]
        tuning[str(lr)] = float(mean_over_training(np.array(tuned)).mean())
    lr = max(cfg.lrs, key=lambda x: tuning[str(x)])  # ties: the first (smallest) lr
    settings = cfg.converge_config(reward, lr)
    curves = np.array([train(problem, variant, problem.policy.init(s), settings, s, tick)["J"] for s in cfg.seeds])
    return {
        "lr": lr,
        "lr_at_grid_edge": len(cfg.lrs) > 1 and lr in (min(cfg.lrs), max(cfg.lrs)),
        "tuning_mean_J": tuning,
        "mean_J": mean_over_training(curves).tolist(),
        "final_J": curves[:, -1].tolist(),
        "J_curve_mean": curves.mean(axis=0).tolist(),
    }


def run_factorial(cfg: FactorialConfig, progress: bool = True) -> dict[str, Any]:
    """Every run cell × reward: tuned lr, per-seed metrics; then the comparisons (JSON-ready)."""
    from tqdm import tqdm

    check_factorial(cfg)
    cells, omitted = factorial_cells(cfg)
    variants = {cell: cell_variant(cell, cfg.epsilon) for cell in cells}
    runs_per_arm = len(cfg.lrs) * len(cfg.tuning_seeds) + len(cfg.seeds)
    total = len(cfg.rewards) * len(cells) * runs_per_arm * cfg.iterations
    runs: dict[str, dict[str, Any]] = {}
    problems = {}
    with tqdm(total=total, desc="lab factorial", disable=not progress, leave=False) as bar:
        for reward in cfg.rewards:
            problem = make_problem(cfg, reward)
            problems[reward] = {
                "num_trajectories": problem.space.num_trajectories,
                "num_params": problem.policy.num_params,
                "max_reward": float(problem.rewards.max()),
            }
            runs[reward] = {cell.name: _arm_runs(cfg, reward, variants[cell], problem, bar.update) for cell in cells}
    arms = {
        cell.name: {
            **asdict(cell),
            "objective": v.objective,
            "overrides": dict(v.overrides),
            "advantage_estimator": v.advantage_name,
            "table_name": table_name(v),
        }
        for cell, v in variants.items()
    }
    return {
        "config": asdict(cfg),
        "problems": problems,
        "arms": arms,
        "omitted": omitted,
        "runs": runs,
        "comparisons": compare_arms(runs, cells, cfg.rewards, cfg.margin),
    }


def _verdict(p_holm: float, tost_holm: float, mean: float, margin: float) -> str:
    differs = p_holm < ALPHA
    equivalent = tost_holm < ALPHA
    if differs and equivalent:
        return f"differs ({'+' if mean > 0 else '−'}), within ±{margin:g}"
    if differs:
        return "higher" if mean > 0 else "lower"
    if equivalent:
        return f"equivalent (±{margin:g})"
    return "inconclusive"


def compare_arms(
    runs: Mapping[str, Mapping[str, Mapping[str, Any]]], cells: list[Cell], rewards: tuple[str, ...], margin: float
) -> list[dict[str, Any]]:
    """Every COMPARISON × reward × metric: paired Δ with its 95% interval, p, Holm p, TOST Holm p, verdict.

    Holm families: all comparisons × rewards of one metric (a comparison that no run cells
    support is listed with n_cell_sets 0 and nan, and does not count in the family)."""
    rows = []
    for metric in METRICS:
        family = []
        for reward in rewards:
            values = {cell: np.asarray(runs[reward][cell.name][metric]) for cell in cells}
            for comparison in COMPARISONS:
                found = comparison_values(comparison, values)
                diff = paired_difference(found[0] if found else [], margin)
                family.append(
                    {
                        "metric": metric,
                        "reward": reward,
                        "comparison": comparison.name,
                        "n_cell_sets": found[1] if found else 0,
                        **asdict(diff),
                    }
                )
        p_holm = holm_adjust([row["p_value"] for row in family])
        tost_holm = holm_adjust([row["equivalence_p_value"] for row in family])
        for row, p, q in zip(family, p_holm, tost_holm, strict=True):
            row["p_holm"], row["equivalence_p_holm"] = p, q
            row["verdict"] = _verdict(p, q, row["mean"], margin) if row["n_cell_sets"] else "not run"
        rows += family
    return rows


def _interval(row: Mapping[str, Any]) -> str:
    return f"{row['mean']:+.4f} [{row['low']:+.4f}, {row['high']:+.4f}]"


def _comparison_table(results: Mapping[str, Any], metric: str) -> str:
    rows = [
        [
            row["reward"],
            row["comparison"],
            row["n_cell_sets"],
            _interval(row),
            row["p_value"],
            row["p_holm"],
            row["equivalence_p_holm"],
            row["verdict"],
        ]
        for row in results["comparisons"]
        if row["metric"] == metric
    ]
    headers = ["reward", "comparison", "cell sets", "Δ [95% CI]", "p", "p Holm", "TOST p Holm", "verdict"]
    return markdown_table(headers, rows)


def _arm_table(results: Mapping[str, Any]) -> str:
    rewards = results["config"]["rewards"]
    rows = []
    for name, arm in results["arms"].items():
        row: list[Any] = [name, f"{arm['objective']} {arm['overrides']}", arm["table_name"] or ""]
        for reward in rewards:
            run = results["runs"][reward][name]
            mean, half = t_half_width(run["mean_J"])
            edge = "*" if run["lr_at_grid_edge"] else ""
            row.append(f"{mean:.4f} ± {half:.4f} (lr {run['lr']:g}{edge})")
        rows.append(row)
    headers = ["arm (ratio/clip/aggregation/advantage)", "objective options", "table name"]
    return markdown_table(headers + [f"mean J, {r}" for r in rewards], rows)


def _plot_effects(results: Mapping[str, Any], path: Path) -> None:
    """Forest plot of the primary metric's comparisons, one marker per reward."""
    plt = pyplot()
    rows = [r for r in results["comparisons"] if r["metric"] == METRICS[0] and r["n_cell_sets"]]
    names = list(dict.fromkeys(r["comparison"] for r in rows))
    rewards = results["config"]["rewards"]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(names) + 1.5))
    for k, reward in enumerate(rewards):
        mine = {r["comparison"]: r for r in rows if r["reward"] == reward}
        y = [names.index(n) + (k - (len(rewards) - 1) / 2) * 0.22 for n in mine]
        means = np.array([r["mean"] for r in mine.values()])
        errors = np.array([[r["mean"] - r["low"], r["high"] - r["mean"]] for r in mine.values()]).T
        ax.errorbar(means, y, xerr=errors, fmt="o", ms=4, capsize=2, label=reward)
    margin = results["config"]["margin"]
    ax.axvline(0, color="k", lw=0.8)
    for x in (-margin, margin):
        ax.axvline(x, color="gray", lw=0.8, ls="--")
    ax.set_yticks(range(len(names)), [textwrap.fill(n, 42) for n in names], fontsize=7)  # long names fit
    ax.invert_yaxis()
    ax.set_xlabel(f"paired Δ mean J over training, 95% CI (dashed: ±{margin:g} margin)")
    ax.legend(fontsize=8, title="reward")
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight")  # the long tick labels stay inside the image
    plt.close(fig)


def write_factorial_outputs(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """results.json, report.md and factorial_effects.png under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", results)
    plot = out_dir / "factorial_effects.png"
    _plot_effects(results, plot)
    cfg = results["config"]
    sizes = ", ".join(
        f"`{r}` ({p['num_trajectories']} trajectories, max reward {p['max_reward']:.4g})"
        for r, p in results["problems"].items()
    )
    omitted = [[name, reason] for name, reason in results["omitted"].items()]
    text = [
        "# lab factorial",
        "",
        f"Problem: {cfg['policy']} policy, V={cfg['vocab']}, L={cfg['max_len']}; rewards {sizes}. Per outer "
        f"iteration {cfg['groups']} groups × G={cfg['group_size']}, μ={cfg['inner_steps']} inner {cfg['optimizer']} "
        f"steps, {cfg['iterations']} iterations, clip ε={cfg['epsilon']}. Each arm's lr is chosen per reward from "
        f"{tuple(cfg['lrs'])} by mean J over training on tuning seeds {tuple(cfg['tuning_seeds'])}; verdicts on "
        f"seeds {tuple(cfg['seeds'])}.",
        "",
        "## Arms",
        "",
        "Mean J over training (iterations 1..N, the primary metric) ± 95% t half-width over verdict seeds, "
        "at the tuned lr (* = the lr is at an edge of the grid).",
        "",
        _arm_table(results),
        "",
        "## Cells not run",
        "",
        markdown_table(["cell", "why"], omitted) if omitted else "None.",
        "",
    ]
    for metric, title in zip(METRICS, ("mean J over training (primary)", "final J"), strict=True):
        text += [
            f"## Comparisons: {title}",
            "",
            "Δ = treatment − baseline, paired by seed, averaged over the matched cell sets; 95% Student-t "
            f"interval; p: two-sided t-test; Holm across every comparison × reward of this metric; TOST "
            f"±{cfg['margin']:g}, Holm-corrected the same way. Verdict at α = {ALPHA}: higher / lower (p Holm), "
            "equivalent (TOST p Holm), else inconclusive.",
            "",
            _comparison_table(results, metric),
            "",
        ]
    text += ["![effects](factorial_effects.png)", ""]
    (out_dir / "report.md").write_text("\n".join(text))
    return [out_dir / "results.json", out_dir / "report.md", plot]


def summary_lines(results: Mapping[str, Any]) -> list[str]:
    """The primary metric's comparisons, one line each (what the CLI prints)."""
    return [
        f"{row['reward']:6s} {row['comparison'][:48]:48s} {_interval(row)}  {row['verdict']}"
        for row in results["comparisons"]
        if row["metric"] == METRICS[0]
    ]


__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "CLIPS",
    "COMPARISONS",
    "FACTORS",
    "GRPO_CELL",
    "RATIOS",
    "TIC_GRPO_CELL",
    "Cell",
    "Comparison",
    "FactorialConfig",
    "cell_variant",
    "check_factorial",
    "clip_options",
    "compare_arms",
    "comparison_values",
    "factorial_cells",
    "omission_reason",
    "run_factorial",
    "summary_lines",
    "table_name",
    "write_factorial_outputs",
]
