"""`ticgrpo eval --model PATH|HUB_ID|alias --data SPEC [--k 1,8,32] [--temperature T] [--engine hf|vllm]
[--out DIR]`: evaluate a model without training (docs/eval.md)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ticgrpo.errors import UsageError
from ticgrpo.eval.files import EVAL_FILES, write_eval_files


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "eval", help="evaluate a model: greedy accuracy, pass@k, maj@k, avg@k with intervals",
        description="Evaluate a causal LM, a run's final/ or a checkpoint on a task or a standard math set "
                    "(docs/eval.md).")
    parser.add_argument("--model", required=True, help="local folder, hub id, alias (smollm2-135m-instruct), "
                        "tiny-test, a run folder, its final/ or checkpoints/step-N")
    parser.add_argument("--data", required=True, help="arithmetic:level=2 | gsm8k:PATH | math500:PATH | "
                        "aime24:PATH | aime25:PATH | dapo17k:PATH | jsonl:PATH (PATH: save_to_disk folder, "
                        ".json/.jsonl/.parquet file or hub id)")
    parser.add_argument("--k", default="1", help="comma-separated k of pass@k / maj@k / avg@k; n = max(k) samples "
                        "per problem (default 1)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the k samples "
                        "(default 1.0; greedy accuracy is decoded separately)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling of the samples (default 1.0)")
    parser.add_argument("--max-new-tokens", type=int, help="completion budget (default: the dataset's, "
                        "docs/eval.md)")
    parser.add_argument("--num-examples", type=int, help="evaluate the first N problems (default: all)")
    parser.add_argument("--split", help="dataset split (default: the dataset's usual one)")
    parser.add_argument("--data-config", help="hub dataset configuration (default: gsm8k 'main', else none)")
    parser.add_argument("--engine", choices=("hf", "vllm"), default="hf", help="hf generate or vLLM (.venv-vllm)")
    parser.add_argument("--greedy", action=argparse.BooleanOptionalAction, default=True,
                        help="also decode one greedy completion per problem (greedy_accuracy)")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per generate() call (default 16)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="weights dtype (a checkpoint uses its run's model.dtype)")
    parser.add_argument("--system-prompt", help="system message before every prompt (default: the run's, else none)")
    parser.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=None,
                        help="wrap prompts in the tokenizer's chat template (default: on, or the run's setting)")
    parser.add_argument("--environment", help="multi-turn episodes: an environment name (python_tool, "
                        "guess_number, ...), module:Class or a YAML mapping '{name: python_tool, timeout_s: 5}'; "
                        "'none' for single completions (default: the run's rollout.environment, else none)")
    parser.add_argument("--max-turns", type=int, help="agent turns per episode (default: the run's, else 4)")
    parser.add_argument("--max-episode-tokens", type=int,
                        help="agent + environment tokens per episode after the prompt (default: the run's, else none)")
    parser.add_argument("--out", help="output folder for eval.json and samples.jsonl (default: "
                        "evals/<model>-<data>)")
    parser.add_argument("--overwrite", action="store_true", help="replace eval.json / samples.jsonl in --out")
    parser.add_argument("--seed", type=int, default=0, help="sampling and bootstrap seed (default 0)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm progress bar")
    return parser


def parse_ks(text: str) -> tuple[int, ...]:
    """"1,8,32" → (1, 8, 32), sorted and without repeats."""
    try:
        ks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise UsageError(f"--k must be comma-separated integers, e.g. --k 1,8,32; got {text!r}") from None
    if not ks or ks[0] < 1:
        raise UsageError(f"--k: every k must be an integer >= 1, e.g. --k 1,8; got {text!r}")
    return tuple(ks)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text.strip("/")).strip("_")[-60:] or "model"


def output_folder(args: argparse.Namespace) -> Path:
    """--out (or evals/<model>-<data>), refused when it already holds our files and --overwrite is absent."""
    out = Path(args.out) if args.out else Path("evals") / f"{_slug(Path(args.model).name or args.model)}-" \
        f"{_slug(args.data)}"
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file; choose a folder (it is created if missing)")
    existing = [name for name in EVAL_FILES if (out / name).exists()]
    if existing and not args.overwrite:
        raise UsageError(f"--out {str(out)!r} already holds {', '.join(existing)}; pass --overwrite to replace "
                         f"them or choose another --out")
    return out


def run(args: argparse.Namespace) -> int:
    from ticgrpo.eval.datasets import load_eval_rows
    from ticgrpo.eval.runner import EvalSettings, format_table, generate_and_judge, summarize

    ks = parse_ks(args.k)
    if args.num_examples is not None and args.num_examples < 1:
        raise UsageError(f"--num-examples must be >= 1, got {args.num_examples}")
    out = output_folder(args)
    rows, data_name, default_tokens = load_eval_rows(args.data, args.split, args.data_config, args.num_examples)
    settings = EvalSettings(ks=ks, temperature=args.temperature, top_p=args.top_p,
                            max_new_tokens=args.max_new_tokens or default_tokens, greedy=args.greedy,
                            batch_size=args.batch_size, seed=args.seed)
    settings.check()
    skipped = [row.id for row in rows if row.gold is None]
    if skipped:
        print(f"warning: {len(skipped)} of {len(rows)} rows have an answer that cannot be parsed; they are skipped "
              f"and counted in eval.json (ids: {', '.join(skipped[:5])})", file=sys.stderr)
    policy = load_policy(args.model, args.dtype, args.seed)
    formatter = policy.formatter(args.chat_template, args.system_prompt)
    episodes = episode_settings(args, policy.episodes)
    engine = make_engine(args.engine, policy, args.seed, args.dtype)
    if episodes is not None:
        engine = episodes.wrap(engine, policy.tokenizer, formatter.chat_template, formatter.system_prompt)
    try:
        judged = [row for row in rows if row.gold is not None]
        records = generate_and_judge(engine, judged, [formatter({"prompt": row.prompt}) for row in judged],
                                     settings, progress=args.progress)
    finally:
        engine.close()
    summary = summarize(records, settings, skipped)
    report = {"model": args.model, "data": args.data, "dataset": data_name,
              "settings": {**settings.__dict__, "ks": list(ks), "engine": args.engine,
                           "episodes": None if episodes is None else episodes.to_json()}, **summary}
    write_eval_files(out, report, records)
    print(format_table(summary))
    print(f"wrote {out / 'eval.json'} and {out / 'samples.jsonl'}")
    return 0


@dataclass(frozen=True)
class EpisodeSettings:
    """The environment, its options and the episode limits of a multi-turn evaluation."""

    name: str
    options: dict[str, Any]
    max_turns: int
    max_episode_tokens: int | None
    config_dir: str | None = None  # where a module:Class path is looked up first

    @classmethod
    def of_run(cls, config: Any, config_dir: Path) -> EpisodeSettings | None:
        r = config.rollout
        if r.environment is None:
            return None
        return cls(r.environment.name, dict(r.environment.options), r.max_turns, r.max_episode_tokens,
                   str(config_dir))

    def wrap(self, engine: Any, tokenizer: Any, chat_template: bool, system_prompt: str | None) -> Any:
        from ticgrpo.rollout.episodes import EpisodeLimits, episode_engine

        try:
            return episode_engine(engine, tokenizer, self.name, self.options,
                                  EpisodeLimits(self.max_turns, self.max_episode_tokens), chat_template,
                                  system_prompt, self.config_dir)
        except ValueError as exc:
            raise UsageError(f"--environment: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        return {"environment": self.name, "options": self.options, "max_turns": self.max_turns,
                "max_episode_tokens": self.max_episode_tokens}


def episode_settings(args: argparse.Namespace, of_run: EpisodeSettings | None) -> EpisodeSettings | None:
    """The episodes of this evaluation: --environment (none: single completions), else the run's."""
    import yaml
    from pydantic import ValidationError

    from ticgrpo.config.schema import EnvironmentChoice, RolloutConfig

    base = of_run
    if args.environment is not None:
        if args.environment.strip().lower() == "none":
            base = None
        else:
            try:
                choice = EnvironmentChoice.model_validate(yaml.safe_load(args.environment))
            except yaml.YAMLError as exc:
                why = str(exc).splitlines()[0]
                raise UsageError(f"--environment {args.environment!r} is not YAML: {why}") from None
            except ValidationError as exc:
                error = exc.errors()[0]
                raise UsageError(f"--environment {args.environment!r}: {error['msg']}") from None
            defaults = RolloutConfig.model_fields  # the trainer's defaults, when the model comes from no run
            limits = ((of_run.max_turns, of_run.max_episode_tokens) if of_run
                      else (defaults["max_turns"].default, defaults["max_episode_tokens"].default))
            base = EpisodeSettings(choice.name, dict(choice.options), *limits)
    if base is None:
        if args.max_turns is not None or args.max_episode_tokens is not None:
            raise UsageError("--max-turns and --max-episode-tokens limit episodes: pass --environment too")
        return None
    for flag, value in (("--max-turns", args.max_turns), ("--max-episode-tokens", args.max_episode_tokens)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    return replace(base, max_turns=args.max_turns or base.max_turns,
                   max_episode_tokens=args.max_episode_tokens or base.max_episode_tokens)


class Policy:
    """A loaded model and tokenizer, with the prompt settings and the episodes (rollout.environment)
    of the run it comes from (if any)."""

    def __init__(self, model: Any, tokenizer: Any, path: str | None, chat_template: bool = True,
                 system_prompt: str | None = None, episodes: EpisodeSettings | None = None) -> None:
        self.model, self.tokenizer, self.path = model, tokenizer, path
        self.chat_template, self.system_prompt, self.episodes = chat_template, system_prompt, episodes

    def formatter(self, chat_template: bool | None, system_prompt: str | None) -> Any:
        from ticgrpo.train.prompts import PromptFormatter

        use_template = self.chat_template if chat_template is None else chat_template
        return PromptFormatter(self.tokenizer, use_template, system_prompt or self.system_prompt)


def _run_config(folder: Path) -> Any:
    """The TrainConfig of the run that holds `folder` (final/ or checkpoints/step-N), if any."""
    found = _run_config_file(folder)
    if found is None:
        return None
    from ticgrpo.config import load_saved_config

    return load_saved_config(found)


def _run_config_file(folder: Path) -> Path | None:
    for candidate in (folder.parent / "config.yaml", folder.parent.parent / "config.yaml"):
        if candidate.is_file():
            return candidate
    return None


def _policy_of_run(model: Any, tokenizer: Any, path: str | None, config: Any, folder: Path) -> Policy:
    config_file = _run_config_file(folder)
    episodes = EpisodeSettings.of_run(config, config_file.parent) if config_file is not None else None
    return Policy(model, tokenizer, path, config.model.chat_template, config.model.system_prompt, episodes)


def load_policy(name: str, dtype: str, seed: int) -> Policy:
    """A model from an alias, hub id or folder; a run folder means its final/; a checkpoint
    (checkpoints/step-N) is loaded into the model its run's config.yaml names."""
    from ticgrpo.train.setup import TINY_ALIAS

    if name == TINY_ALIAS:
        from ticgrpo import testing

        tokenizer = testing.make_tiny_tokenizer()
        return Policy(testing.make_tiny_model(seed=seed, tokenizer=tokenizer), tokenizer, None)
    folder = Path(os.path.expanduser(name))
    if folder.is_dir() and not (folder / "config.json").is_file() and (folder / "final").is_dir():
        folder = folder / "final"  # a run folder: its final model
    if folder.is_dir() and not (folder / "config.json").is_file():
        if (folder / "adapter_config.json").is_file():
            raise UsageError(f"{folder} holds a LoRA adapter only; pass one of the run's checkpoints/step-N "
                             f"(loaded into its base model) or a merged model folder")
        if (folder / "manifest.json").is_file() or (folder / "state.json").is_file():
            return _load_checkpoint(folder)
    from ticgrpo.models import load_model_and_tokenizer, resolve_model_path

    model, tokenizer = load_model_and_tokenizer(str(folder) if folder.is_dir() else name, dtype)
    config = _run_config(folder) if folder.is_dir() else None
    path = str(folder) if folder.is_dir() else resolve_model_path(name)
    if config is None:
        return Policy(model, tokenizer, path)
    return _policy_of_run(model, tokenizer, path, config, folder)


def _load_checkpoint(folder: Path) -> Policy:
    from ticgrpo.train.checkpoint import read_model_state, verify_checkpoint
    from ticgrpo.train.setup import load_model

    config = _run_config(folder)
    if config is None:
        raise UsageError(f"{folder} is a checkpoint but its run's config.yaml is not two folders up; pass the "
                         f"checkpoint inside its run folder (run/checkpoints/step-N) or the run's final/")
    verify_checkpoint(folder)
    model, tokenizer = load_model(config)
    result = model.load_state_dict(read_model_state(folder), strict=False)
    if result.unexpected_keys:
        raise UsageError(f"{folder} does not fit the model {config.model.name!r} of its run's config.yaml "
                         f"(unexpected tensors, e.g. {result.unexpected_keys[0]})")
    model.eval()
    return _policy_of_run(model, tokenizer, None, config, folder)


def make_engine(kind: str, policy: Policy, seed: int, dtype: str = "float32") -> Any:
    """HF generate on the loaded model, or vLLM (weights from the model's folder when it has one,
    in `dtype`, so that both engines decode the same weights)."""
    import torch

    if kind == "hf":
        from ticgrpo.rollout.hf import HFGenerateEngine

        if torch.cuda.is_available():
            policy.model.to("cuda")
        return HFGenerateEngine(policy.model, policy.tokenizer)
    try:
        from ticgrpo.rollout.vllm import VLLMEngine
    except ImportError as exc:
        raise UsageError(f"--engine vllm needs vLLM ({exc}); run ticgrpo from .venv-vllm (docs/vllm.md)") from None
    options: dict[str, Any] = {"seed": seed, "dtype": dtype}
    if policy.path is not None:
        options["model_path"] = policy.path  # else the engine saves the loaded model first
    return VLLMEngine(policy.model, policy.tokenizer, **options)
