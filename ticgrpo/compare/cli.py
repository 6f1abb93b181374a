"""`ticgrpo compare`: several algorithms × seeds on one base config, then a report with plots.

    ticgrpo compare --config configs/ablation.yaml --algorithms tic_grpo,grpo,no_is --seeds 0,1,2 \\
        --out runs/ablation [--set key=value ...] [--parallel N] [--threshold 0.5] [--dry-run]

Every combination's config is validated before anything runs (a bad name or key: one line,
exit 2). Runs go to OUT/runs/<algorithm>/seed-<s>/; the report to OUT/report.md, OUT/plots/.
Run it again to resume: finished runs are skipped, interrupted ones continue from their last
checkpoint. See docs/compare.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "compare",
        help="run several algorithms × seeds on one task and write a report with plots",
        description=__doc__.splitlines()[0].split(": ", 1)[1] + " See docs/compare.md.",
    )
    parser.add_argument("--config", required=True, help="base YAML config (shared by every run)")
    parser.add_argument("--algorithms", help="comma-separated names: compare.algorithms entries of the config, "
                        "names of ticgrpo.config.algorithms.ALGORITHMS (presets and the TIC-GRPO ablation "
                        "tic_ratio_only, tic_ratio_lenadv, tic_ratio_clip) or objectives "
                        "(default: compare.run of the config)")
    parser.add_argument("--seeds", help="comma-separated seeds (default: compare.seeds of the config, else 0,1,2)")
    parser.add_argument("--out", help="output folder (default: runs/compare-<config name>)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value in every run, applied after the algorithm (repeatable; YAML values)",
    )
    parser.add_argument("--parallel", type=int, default=1,
                        help="runs at a time; 1 (default): one after another in this process; "
                        "N > 1: `ticgrpo train` subprocesses with CPU threads split between them")
    parser.add_argument("--threshold", type=float, default=None,
                        help="accuracy threshold for 'steps to threshold' (default: midpoint between the "
                        "initial and the best mean accuracy)")
    parser.add_argument("--dry-run", action="store_true", help="validate every run's config, list the runs, exit")
    parser.add_argument("--no-report", action="store_true", help="run only; build the report later with "
                        "`ticgrpo report OUT`")
    return parser


def run(args: argparse.Namespace) -> int:
    from ticgrpo.cli import UsageError
    from ticgrpo.compare.execute import run_plan
    from ticgrpo.compare.plan import plan_comparison

    if args.parallel < 1:
        raise UsageError(f"--parallel must be >= 1, got {args.parallel}")
    out = Path(args.out) if args.out else Path("runs") / f"compare-{Path(args.config).stem}"
    plan = plan_comparison(args.config, args.algorithms, args.seeds, out, args.overrides)  # validates all
    counts = {s: sum(r.status == s for r in plan.runs) for s in ("new", "done", "resume", "restart")}
    print(f"comparison: {len(plan.algorithms)} algorithms × {len(plan.seeds)} seeds = {len(plan.runs)} runs in "
          f"{out} ({counts['done']} finished, {counts['resume']} to resume, {counts['restart']} to restart, "
          f"{counts['new']} new)")
    if args.dry_run:
        for r in plan.runs:
            a = r.config.algorithm
            print(f"  {r.algorithm:<18} seed {r.seed:<3} {r.status:<8} objective={a.objective.name} "
                  f"advantage={a.advantage.name} → {r.run_dir}")
        return 0
    outcomes = run_plan(plan, parallel=args.parallel)
    failed = [o for o in outcomes if not o.ok]
    if not args.no_report:
        from ticgrpo.reports.report import build_report
        from ticgrpo.reports.runs import load_runs

        runs = [r for r in load_runs([out / "runs"]) if r.algorithm in plan.algorithms and r.seed in plan.seeds]
        if runs:
            meta = {"base_config": args.config, "overrides": args.overrides, "algorithms": plan.algorithms}
            path = build_report(runs, out, args.threshold, plan.algorithms, meta)
            print(f"report: {path}")
    if failed:
        print(f"{len(failed)} run(s) failed: " + "; ".join(f"{o.run.label}: {o.error}" for o in failed))
        return 1
    return 0
