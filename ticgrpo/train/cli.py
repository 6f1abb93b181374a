"""`ticgrpo train --config path.yaml [--set key=value ...] [--resume [--allow-config-change] | --overwrite]
[--output-dir DIR]`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ticgrpo.config import TrainConfig


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
    parser.add_argument("--resume", action="store_true", help="continue the run in the output folder from its "
                        "latest checkpoint (a finished run: nothing to do)")
    parser.add_argument("--overwrite", action="store_true", help="replace the run the output folder holds: its "
                        "logs, checkpoints and final model are deleted once the new run has loaded")
    parser.add_argument("--allow-config-change", action="store_true", help="with --resume: use the new values of "
                        "keys that change the run's trajectory (e.g. optim.lr), recorded in config_changes.jsonl")
    parser.add_argument("--output-dir", help="run folder (overrides output_dir)")
    parser.add_argument("--dry-run", action="store_true", help="validate the config, print it and exit")
    return parser


def run(args: argparse.Namespace) -> int:
    from ticgrpo.config import config_to_yaml, load_config

    config = load_config(args.config, args.overrides, args.output_dir)  # validated before any loading
    config_dir = Path(args.config).parent if args.config else None  # 'module:function' rewards live beside it
    if args.dry_run:
        summary = check_rewards_and_data(config, config_dir)
        print(config_to_yaml(config), end="")
        print(summary, file=sys.stderr)
        return 0
    from ticgrpo.train.trainer import train

    started = time.monotonic()
    if args.allow_config_change and not args.resume:
        raise ValueError("--allow-config-change only applies with --resume")
    result = train(config, resume=args.resume, overwrite=args.overwrite,
                   allow_config_change=args.allow_config_change, config_dir=config_dir)
    if result.rank != 0 or result.already_finished:  # process 0 reports for the job; the trainer said so
        return 0
    final = f", final model in {result.final_dir}" if result.final_dir else ""
    print(f"trained {result.steps} steps in {(time.monotonic() - started) / 60:.1f} min; "
          f"outputs in {result.output_dir}{final}")
    for line in accuracy_summary(Path(result.output_dir) / "eval.jsonl"):
        print(line)
    return 0


def check_rewards_and_data(config: TrainConfig, config_dir: Path | None) -> str:
    """What `--dry-run` checks beyond the config, as training would meet it: every data source
    (train and eval) loads, and every reward (training and eval) imports and can be called
    with the columns of its data. Returns a one-line summary; raises ValueError (one line)."""
    from ticgrpo.rewards import resolve_reward, reward_arguments
    from ticgrpo.rewards.scoring import TRAINER_REWARD_ARGUMENTS, dataset_columns
    from ticgrpo.train.prompts import load_rows

    a = config.algorithm
    train_rows, eval_rows = load_rows(config.data.train), load_rows(config.data.eval)
    train_rewards = [spec.name for spec in a.rewards] + (["overlong_soft"] if a.overlong_reward else [])
    for rows, rewards in ((train_rows, train_rewards), (eval_rows, [config.eval.reward] if eval_rows else [])):
        columns = [*dataset_columns(rows), *TRAINER_REWARD_ARGUMENTS, *a.reward_kwargs]  # as score_rollout passes
        for name in rewards:
            reward_arguments(resolve_reward(name, config_dir), name, columns)
    checked = ", ".join(dict.fromkeys(train_rewards + ([config.eval.reward] if eval_rows else [])))
    return f"dry run: {len(train_rows)} training rows and {len(eval_rows)} eval rows load; rewards import: {checked}"


def accuracy_summary(eval_log: Path) -> list[str]:
    """The run summary's evaluation lines, from a run's eval.jsonl: 'held-out accuracy A (step s)
    → B (step t), ±N points' and a warning when the last accuracy is at or below the constant
    baseline (the score of always giving the most common gold answer)."""
    from ticgrpo.reports.io import read_jsonl
    from ticgrpo.train.logging import EVALS_FOLDER

    records = [r for r in read_jsonl(eval_log) if "accuracy" in r]
    if not records:
        return []
    first, last = records[0], records[-1]
    lines = []
    if len(records) >= 2:
        delta = 100 * (last["accuracy"] - first["accuracy"])
        lines.append(f"held-out accuracy {first['accuracy']:.2f} (step {first['step']}) → "
                     f"{last['accuracy']:.2f} (step {last['step']}): {delta:+.1f} points "
                     f"on {int(last.get('num_examples', 0))} problems")
    baseline = last.get("constant_baseline")
    if isinstance(baseline, (int, float)) and last["accuracy"] <= baseline:
        details = eval_log.parent / EVALS_FOLDER / f"step-{last['step']:04d}" / "eval.json"
        answer = json.loads(details.read_text())["constant_baseline"]["answer"] if details.is_file() else None
        always = f"always answering {answer!r}" if answer is not None else "always the most common gold answer"
        lines.append(f"warning: held-out accuracy {last['accuracy']:.2f} at step {last['step']} is at or below the "
                     f"constant baseline {baseline:.2f} ({always}): the model may have learned the common answer, "
                     f"not the task; see the answer distribution in {details}")
    return lines
