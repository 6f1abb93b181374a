"""`ticgrpo lab bias|converge`: exact policy-gradient experiments on enumerable policies.

    python -m ticgrpo.cli lab bias --policy tabular --steps 0,1,2,4,8,16 --out docs/lab/bias
    python -m ticgrpo.cli lab bias --objectives all --out docs/lab/objectives   # every supported objective
    python -m ticgrpo.cli lab converge --seeds 0,1,2,3,4 --iterations 60 --out docs/lab/converge

Each writes results.json (every number), report.md (tables) and PNG plots into --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ticgrpo.config import check_output_dir
from ticgrpo.errors import UsageError
from ticgrpo.lab.bias import (
    DEFAULT_OBJECTIVES,
    BiasConfig,
    expand_objectives,
    run_bias,
    summary_lines,
    write_bias_outputs,
)
from ticgrpo.lab.converge import DEFAULT_ALGORITHMS, OPTIMIZERS, ConvergeConfig, run_converge, write_converge_outputs
from ticgrpo.lab.estimators import get_variant
from ticgrpo.lab.policies import POLICIES
from ticgrpo.lab.rewards import REWARDS


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _name_list(text: str) -> tuple[str, ...]:
    values = tuple(x.strip() for x in text.split(",") if x.strip())
    if not values:
        raise argparse.ArgumentTypeError("expected at least one name")
    return values


def _common(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--policy", choices=POLICIES, default="tabular")
    p.add_argument("--vocab", type=int, default=4, help="vocabulary size V including EOS (default 4)")
    p.add_argument("--max-len", type=int, default=5, help="max completion length L (default 5)")
    p.add_argument("--reward", default="target", help=f"one of: {', '.join(REWARDS.names())}")
    p.add_argument("--group-size", type=int, default=8, help="G (default 8)")
    p.add_argument("--lr", type=float, default=0.05, help="Adam learning rate of the inner steps")
    p.add_argument("--init-scale", type=float, default=1.0, help="scale of the random initial θ")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument("--out", type=Path, default=Path(out), help=f"output folder (default {out})")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    lab = subparsers.add_parser("lab", help="exact policy gradients on small enumerable policies")
    sub = lab.add_subparsers(dest="lab_command", required=True)
    bias = sub.add_parser("bias", help="what each estimator estimates as θ leaves θ_old")
    _common(bias, "outputs/lab/bias")
    bias.add_argument("--steps", type=_int_list, default=(0, 1, 2, 4, 8, 16), help="inner steps k")
    bias.add_argument(
        "--objectives",
        type=_name_list,
        default=DEFAULT_OBJECTIVES,
        help="lab variants or registered objectives; 'all' = every registered objective the lab supports "
        "(all but gtpo, whose loss couples a group's completions)",
    )
    bias.add_argument("--mc-groups", type=int, default=2000, help="Monte Carlo groups per estimate")
    bias.add_argument("--rollout-groups", type=int, default=4, help="groups of the batch that moves θ")
    bias.add_argument("--seed", type=int, default=0)
    conv = sub.add_parser("converge", help="training curves of exact J over seeds")
    _common(conv, "outputs/lab/converge")
    conv.add_argument("--algorithms", type=_name_list, default=DEFAULT_ALGORITHMS)
    conv.add_argument("--seeds", type=_int_list, default=(0, 1, 2, 3, 4, 5, 6, 7, 8, 9))
    conv.add_argument("--iterations", type=int, default=60, help="outer iterations N")
    conv.add_argument("--inner-steps", type=int, default=4, help="μ optimizer steps per rollout batch")
    conv.add_argument("--groups", type=int, default=4, help="groups per outer iteration")
    conv.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")


def _check(args: argparse.Namespace) -> None:
    check_output_dir("--out", args.out)  # before the experiment runs, not when its results are written
    if args.vocab < 2:
        raise UsageError(f"--vocab must be >= 2, got {args.vocab}")
    if args.max_len < 1:
        raise UsageError(f"--max-len must be >= 1, got {args.max_len}")
    if args.group_size < 2:
        raise UsageError(f"--group-size must be >= 2, got {args.group_size}")
    if args.reward not in REWARDS:
        raise UsageError(f"unknown --reward {args.reward!r}; choose one of: {', '.join(REWARDS.names())}")
    if args.lr <= 0:
        raise UsageError(f"--lr must be > 0, got {args.lr}")
    if args.lab_command == "bias":
        args.objectives = expand_objectives(args.objectives)
    names = args.objectives if args.lab_command == "bias" else args.algorithms
    for name in names:
        get_variant(name)  # ValueError naming the choices


def run(args: argparse.Namespace) -> int:
    _check(args)
    torch.set_num_threads(max(args.threads, 1))
    common = dict(
        policy=args.policy,
        vocab=args.vocab,
        max_len=args.max_len,
        reward=args.reward,
        group_size=args.group_size,
        lr=args.lr,
        init_scale=args.init_scale,
    )
    if args.lab_command == "bias":
        if args.mc_groups < 2:
            raise UsageError(f"--mc-groups must be >= 2, got {args.mc_groups}")
        if min(args.steps) < 0:
            raise UsageError(f"--steps must be >= 0, got {args.steps}")
        cfg = BiasConfig(
            **common,
            steps=tuple(sorted(set(args.steps))),
            objectives=args.objectives,
            mc_groups=args.mc_groups,
            seed=args.seed,
            rollout_groups=args.rollout_groups,
        )
        results = run_bias(cfg, progress=not args.no_progress)
        files = write_bias_outputs(results, args.out)
        print("\n".join(summary_lines(results)))
    else:
        if args.iterations < 1 or args.inner_steps < 1 or args.groups < 1:
            raise UsageError("--iterations, --inner-steps and --groups must be >= 1")
        cfg = ConvergeConfig(
            **common,
            algorithms=args.algorithms,
            seeds=args.seeds,
            iterations=args.iterations,
            inner_steps=args.inner_steps,
            groups=args.groups,
            optimizer=args.optimizer,
        )
        results = run_converge(cfg, progress=not args.no_progress)
        files = write_converge_outputs(results, args.out)
        for name, s in results["summary"].items():
            print(
                f"{name:16s} final J {s['J_final']:.4f} ± {s['J_final_half_width']:.4f}   "
                f"mean J {s['J_mean_over_training']:.4f} ± {s['J_mean_over_training_half_width']:.4f}"
            )
    print("wrote " + ", ".join(str(f) for f in files))
    return 0
