"""`ticgrpo` command line: one sub-command module per part of the package.

Usage errors (bad flags, bad configs, bad data) print one line to stderr and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# sub-command name → module exposing add_parser(subparsers) and run(args) -> int
_COMMANDS = {
    "train": "ticgrpo.train.cli",
    "lab": "ticgrpo.lab.cli",
    "compare": "ticgrpo.compare.cli",
    "report": "ticgrpo.compare.report_cli",
}


class UsageError(Exception):
    """A problem with what the user asked for; reported in one line, exit code 2."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ticgrpo", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, module_name in _COMMANDS.items():
        module = importlib.import_module(module_name)
        module.add_parser(subparsers)
        modules[name] = module
    args = parser.parse_args(argv)
    try:
        return int(modules[args.command].run(args) or 0)
    except (UsageError, ValueError, FileNotFoundError) as exc:
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
