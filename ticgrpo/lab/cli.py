"""`ticgrpo lab bias|converge|factorial|lag`: exact policy-gradient experiments on enumerable policies.

    python -m ticgrpo.cli lab bias --policy tabular --steps 0,1,2,4,8,16 --out docs/lab/bias
    python -m ticgrpo.cli lab bias --objectives all --out docs/lab/objectives   # every supported objective
    python -m ticgrpo.cli lab converge --seeds 0,1,2,3,4 --iterations 60 --out docs/lab/converge
    python -m ticgrpo.cli lab factorial --out docs/lab/factorial   # ratio × clip × aggregation × advantage
    python -m ticgrpo.cli lab lag --out docs/lab/lag   # bias/noise with k-stale samples, length sweep
    python -m ticgrpo.cli lab reuse --out docs/lab/reuse   # trajectory reuse (window ω) vs fresh samples
    python -m ticgrpo.cli lab baselines --out docs/lab/baselines   # none / mean / RLOO / value: variance, PG and NPG
    python -m ticgrpo.cli lab ustat --out docs/lab/ustat   # GRPO's gradient as a U-statistic, variance vs G
    python -m ticgrpo.cli lab active_is --out docs/lab/active_is   # the variance-minimising behaviour policy
    python -m ticgrpo.cli lab ope --out docs/lab/ope   # IS / SNIS / policy convolution estimates of J, stale samples
    python -m ticgrpo.cli lab checkpoint_lag --run runs/claim1-path --step 8   # claim 1 on a real run's checkpoints

Each writes results.json (every number), report.md (tables) and PNG plots into --out. The
experiment flags are the fields of its config dataclass (`BiasConfig`, `LagConfig`, ...: name, type, default and
help from the field), so a default is written once, in the dataclass. Adding an experiment is one `Experiment`
entry in `EXPERIMENTS` (its config, check, run, write and summary).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ticgrpo.config import check_output_dir
from ticgrpo.errors import UsageError
from ticgrpo.lab.active_is import ActiveISConfig, check_active_is, run_active_is, write_active_is_outputs
from ticgrpo.lab.active_is import summary_lines as active_is_summary_lines
from ticgrpo.lab.baselines import BaselinesConfig, check_baselines, run_baselines, write_baselines_outputs
from ticgrpo.lab.baselines import summary_lines as baselines_summary_lines
from ticgrpo.lab.bias import BiasConfig, run_bias
from ticgrpo.lab.bias_report import summary_lines, write_bias_outputs
from ticgrpo.lab.checkpoint_lag import (
    CheckpointLagConfig,
    check_checkpoint_lag,
    run_checkpoint_lag,
    write_checkpoint_lag_outputs,
)
from ticgrpo.lab.checkpoint_lag import summary_lines as checkpoint_lag_summary_lines
from ticgrpo.lab.converge import ConvergeConfig, run_converge, write_converge_outputs
from ticgrpo.lab.factorial import FactorialConfig, check_factorial, run_factorial, write_factorial_outputs
from ticgrpo.lab.factorial import summary_lines as factorial_summary_lines
from ticgrpo.lab.lag import LagConfig, check_lag, run_lag, write_lag_outputs
from ticgrpo.lab.lag import summary_lines as lag_summary_lines
from ticgrpo.lab.ope import OPEConfig, check_ope, run_ope, write_ope_outputs
from ticgrpo.lab.ope import summary_lines as ope_summary_lines
from ticgrpo.lab.options import check_options, flag
from ticgrpo.lab.reuse import ReuseConfig, check_reuse, run_reuse, write_reuse_outputs
from ticgrpo.lab.reuse import summary_lines as reuse_summary_lines
from ticgrpo.lab.ustat import UstatConfig, check_ustat, run_ustat, write_ustat_outputs
from ticgrpo.lab.ustat import summary_lines as ustat_summary_lines
from ticgrpo.lab.variants import get_variant


def _number_list(convert: Callable[[str], Any], kind: str) -> Callable[[str], tuple]:
    """An argparse type for "1,2,3": a tuple of `convert`ed values, at least one."""
    def parse(text: str) -> tuple:
        try:
            values = tuple(convert(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind}s, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"expected at least one {kind}")
        return values

    return parse


def _name_list(text: str) -> tuple[str, ...]:
    values = tuple(x.strip() for x in text.split(",") if x.strip())
    if not values:
        raise argparse.ArgumentTypeError("expected at least one name")
    return values


_PARSERS: dict[Any, Any] = {
    int: int,
    float: float,
    str: str,
    tuple[int, ...]: _number_list(int, "integer"),
    tuple[float, ...]: _number_list(float, "number"),
    tuple[str, ...]: _name_list,
}


def _shown(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One flag per field of `config_cls`: --field-name, parsed as the field's type, default and help from it."""
    hints = typing.get_type_hints(config_cls)
    for spec in dataclasses.fields(config_cls):
        choices = spec.metadata.get("choices")
        extra = f"; one of: {', '.join(choices())}" if choices is not None else ""
        parser.add_argument(
            flag(spec.name),
            dest=spec.name,
            type=_PARSERS[hints[spec.name]],
            default=spec.default,
            help=f"{spec.metadata.get('help', '')} (default {_shown(spec.default)}{extra})",
        )


def config_from_args(config_cls: type, args: argparse.Namespace) -> Any:
    return config_cls(**{spec.name: getattr(args, spec.name) for spec in dataclasses.fields(config_cls)})


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    lab = subparsers.add_parser("lab", help="exact policy gradients on small enumerable policies")
    sub = lab.add_subparsers(dest="lab_command", required=True)
    for name, experiment in EXPERIMENTS.items():
        out = experiment.default_out
        parser = sub.add_parser(name, help=experiment.help)
        add_config_arguments(parser, experiment.config)
        parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
        parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
        parser.add_argument("--out", type=Path, default=Path(out), help=f"output folder (default {out})")


def check_bias(config: BiasConfig) -> None:
    for name in config.objectives:  # group-coupled objectives run on the Monte Carlo path only
        get_variant(name, monte_carlo=True)  # ValueError naming the choices


def check_converge(config: ConvergeConfig) -> None:
    for name in config.algorithms:
        get_variant(name)  # ValueError naming the choices


def _config(args: argparse.Namespace) -> Any:
    """The experiment's config from the flags, checked: one-line UsageError naming the flag."""
    check_output_dir("--out", args.out)  # before the experiment runs, not when its results are written
    experiment = EXPERIMENTS[args.lab_command]
    try:
        config = config_from_args(experiment.config, args)
        check_options(config, as_flags=True)
        experiment.check(config)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return config


def converge_summary_lines(results: dict[str, Any]) -> list[str]:
    return [
        f"{name:16s} final J {s['J_final']:.4f} ± {s['J_final_half_width']:.4f}   "
        f"mean J {s['J_mean_over_training']:.4f} ± {s['J_mean_over_training_half_width']:.4f}"
        for name, s in results["summary"].items()
    ]


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A `ticgrpo lab` subcommand: its flags (the config dataclass's fields) and its stages."""

    config: type  # dataclass; one flag per field
    help: str
    default_out: str
    check: Callable[[Any], None]  # raises ValueError (one line) on settings the flags' ranges cannot state
    run: Callable[..., dict[str, Any]]  # (config, progress=) -> results
    write: Callable[[dict[str, Any], Path], list[Path]]  # results, folder -> files written
    summary: Callable[[dict[str, Any]], list[str]]  # the lines printed at the end


EXPERIMENTS: dict[str, Experiment] = {
    "bias": Experiment(BiasConfig, "what each estimator estimates as θ leaves θ_old", "outputs/lab/bias",
                       check_bias, run_bias, write_bias_outputs, summary_lines),
    "converge": Experiment(ConvergeConfig, "training curves of exact J over seeds", "outputs/lab/converge",
                           check_converge, run_converge, write_converge_outputs, converge_summary_lines),
    "factorial": Experiment(
        FactorialConfig, "ratio × clip × aggregation × advantage, lr tuned per arm, paired effects",
        "outputs/lab/factorial", check_factorial, run_factorial, write_factorial_outputs, factorial_summary_lines),
    "lag": Experiment(
        LagConfig, "bias and noise of each arm's update with samples k policy versions stale, and a length sweep",
        "outputs/lab/lag", check_lag, run_lag, write_lag_outputs, lag_summary_lines),
    "reuse": Experiment(
        ReuseConfig, "trajectory reuse over the last ω policy versions against fresh samples, at equal sample budgets",
        "outputs/lab/reuse", check_reuse, run_reuse, write_reuse_outputs, reuse_summary_lines),
    "active_is": Experiment(
        ActiveISConfig, "the behaviour policy that minimises the gradient's variance, against on-policy and practical "
        "ones", "outputs/lab/active_is", check_active_is, run_active_is, write_active_is_outputs,
        active_is_summary_lines),
    "ope": Experiment(
        OPEConfig, "bias and variance of IS, self-normalised IS and policy-convolution estimates of J from stale "
        "samples", "outputs/lab/ope", check_ope, run_ope, write_ope_outputs, ope_summary_lines),
    "baselines": Experiment(
        BaselinesConfig, "baselines (none, group mean, leave-one-out, exact value): exact variance, plain and "
        "natural PG", "outputs/lab/baselines", check_baselines, run_baselines, write_baselines_outputs,
        baselines_summary_lines),
    "checkpoint_lag": Experiment(
        CheckpointLagConfig, "claim 1 on a real model: each objective's update from k-stale batches, between its "
        "on-policy updates at θ_(t−k) and θ_t, from a run's checkpoints", "outputs/lab/checkpoint_lag",
        check_checkpoint_lag, run_checkpoint_lag, write_checkpoint_lag_outputs, checkpoint_lag_summary_lines),
    "ustat": Experiment(
        UstatConfig, "GRPO's gradient as a U-statistic: exact variance against the oracle baseline as G grows",
        "outputs/lab/ustat", check_ustat, run_ustat, write_ustat_outputs, ustat_summary_lines),
}


def run(args: argparse.Namespace) -> int:
    config = _config(args)
    torch.set_num_threads(max(args.threads, 1))
    experiment = EXPERIMENTS[args.lab_command]
    results = experiment.run(config, progress=not args.no_progress)
    files = experiment.write(results, args.out)
    print("\n".join(experiment.summary(results)))
    print("wrote " + ", ".join(str(f) for f in files))
    return 0
