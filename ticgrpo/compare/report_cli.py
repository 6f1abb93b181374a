"""`ticgrpo report RUN_DIR... [--out DIR] [--threshold X]`: rebuild a comparison report from run folders.

RUN_DIR may be a comparison folder (every run below it is used), a `runs/<algorithm>` folder or
single run folders (also plain `ticgrpo train` outputs: grouped by their objective name).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "report",
        help="rebuild a comparison report (tables, tests, plots) from run folders",
        description=__doc__.splitlines()[0].split(": ", 1)[1],
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="comparison folders or run folders")
    parser.add_argument("--out", help="where report.md and plots/ go (default: the comparison folder when one "
                        "is given, else the folder holding the given ones)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="accuracy threshold (default: midpoint between initial and best mean accuracy)")
    return parser


def default_out(paths: list[Path]) -> Path:
    from ticgrpo.compare.plan import COMPARISON_FILE, MARKER

    if len(paths) == 1 and not (paths[0] / MARKER).is_file() and not (paths[0] / "metrics.jsonl").is_file():
        return paths[0]
    common = Path(os.path.commonpath([str(p.resolve()) for p in paths]))
    for candidate in (common, *common.parents):
        if (candidate / COMPARISON_FILE).is_file():
            return candidate
    return common if not (common / "metrics.jsonl").is_file() else common.parent


def run(args: argparse.Namespace) -> int:
    from ticgrpo.reports.report import build_report
    from ticgrpo.reports.runs import load_runs

    paths = [Path(p) for p in args.run_dirs]
    runs = load_runs(paths)
    out = Path(args.out) if args.out else default_out(paths)
    path = build_report(runs, out, args.threshold)
    complete = sum(r.complete for r in runs)
    print(f"report on {len(runs)} runs ({complete} complete): {path}")
    return 0
