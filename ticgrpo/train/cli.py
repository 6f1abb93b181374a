"""`ticgrpo train --config path.yaml [--set key=value ...] [--resume] [--output-dir DIR]`."""

from __future__ import annotations

import argparse


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

    result = train(config, resume=args.resume)
    final = f", final model in {result.final_dir}" if result.final_dir else ""
    print(f"trained {result.steps} steps; outputs in {result.output_dir}{final}")
    return 0
