"""`ticgrpo` command line: one sub-command module per part of the package.

Usage errors (bad flags, bad configs, bad data) print one line to stderr and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ticgrpo.errors import UsageError

# sub-command name → (module exposing add_parser(subparsers) and run(args) -> int, one-line help).
# Only the module of the command being run is imported: `ticgrpo train` never pays for (or
# depends on) what the lab or the comparison reports import.
_COMMANDS = {
    "train": ("ticgrpo.train.cli", "train a policy with a GRPO-family objective"),
    "lab": ("ticgrpo.lab.cli", "exact policy gradients on small enumerable policies"),
    "compare": ("ticgrpo.compare.cli", "run several algorithms × seeds on one task and write a report with plots"),
    "report": ("ticgrpo.compare.report_cli", "rebuild a comparison report (tables, tests, plots) from run folders"),
}

__all__ = ["UsageError", "main"]


def _parser(argv: list[str]) -> argparse.ArgumentParser:
    """The full parser of the chosen sub-command; the others are listed by name and help only."""
    parser = argparse.ArgumentParser(prog="ticgrpo", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    # the top level has no options but -h, so the first word that is not an option is the command
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    for name, (module_name, help_text) in _COMMANDS.items():
        if name == chosen:
            importlib.import_module(module_name).add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser(argv).parse_args(argv)
    module = importlib.import_module(_COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError) as exc:  # UsageError and ConfigError are ValueErrors
        print(f"ticgrpo {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)  # one line
        return 2
    except Exception as exc:
        if not isinstance(getattr(exc, "exit_code", None), int):  # e.g. TrainingHalted: one line, its code
            raise
        print(f"ticgrpo {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"ticgrpo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
