"""`ticgrpo train --config path.yaml [--set key=value ...] [--resume] [--output-dir DIR]`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train a policy with a GRPO-family objective",
        description="Train a policy with a GRPO-family objective (see docs/training.md).",
    )
    parser.add_argument("--config", help="YAML config file (defaults apply to every missing key)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set algorithm.objective=grpo (repeatable; YAML values)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument("--output-dir", help="run folder (overrides output_dir)")
    parser.add_argument("--dry-run", action="store_true", help="validate the config, print it and exit")
    return parser


def run(args: argparse.Namespace) -> int:
    from ticgrpo.config import config_to_yaml, load_config

    config = load_config(args.config, args.overrides, args.output_dir)  # validated before any loading
    if args.dry_run:
        print(config_to_yaml(config), end="")
        return 0
    from ticgrpo.train.trainer import train

    started = time.monotonic()
    result = train(config, resume=args.resume)
    if result.rank != 0:  # under torchrun / accelerate launch, process 0 reports for the job
        return 0
    final = f", final model in {result.final_dir}" if result.final_dir else ""
    print(f"trained {result.steps} steps in {(time.monotonic() - started) / 60:.1f} min; "
          f"outputs in {result.output_dir}{final}")
    summary = accuracy_summary(Path(result.output_dir) / "eval.jsonl")
    if summary:
        print(summary)
    return 0


def accuracy_summary(eval_log: Path) -> str | None:
    """'held-out accuracy A (step s) → B (step t), ±N points' from a run's eval.jsonl."""
    from ticgrpo.reports.plots import read_jsonl

    records = [r for r in read_jsonl(eval_log) if "accuracy" in r]
    if len(records) < 2:
        return None
    first, last = records[0], records[-1]
    delta = 100 * (last["accuracy"] - first["accuracy"])
    return (f"held-out accuracy {first['accuracy']:.2f} (step {first['step']}) → "
            f"{last['accuracy']:.2f} (step {last['step']}): {delta:+.1f} points "
            f"on {int(last.get('num_examples', 0))} problems")
