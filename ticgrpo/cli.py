"""`ticgrpo` command line: one sub-command module per part of the package.

Usage errors (bad flags, bad configs, bad data) print one line to stderr and exit 2. Warnings
of the package (`logging.getLogger(__name__).warning(...)` in its modules) print one line each,
`warning: ...`, to stderr while a command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
from collections.abc import Iterator
from types import ModuleType

from ticgrpo.errors import UsageError

# sub-command name → (module exposing add_parser(subparsers) and run(args) -> int, one-line help).
# Only the module of the command being run is imported: `ticgrpo train` never pays for (or
# depends on) what the lab or the comparison reports import.
_COMMANDS = {
    "train": ("ticgrpo.train.cli", "train a policy with a GRPO-family objective"),
    "lab": ("ticgrpo.lab.cli", "exact policy gradients on small enumerable policies"),
    "compare": ("ticgrpo.compare.cli", "run several algorithms × seeds on one task and write a report with plots"),
    "report": ("ticgrpo.compare.report_cli", "rebuild a comparison report (tables, tests, plots) from run folders"),
    "eval": ("ticgrpo.eval.cli", "evaluate a model: greedy accuracy, pass@k, maj@k, avg@k with intervals"),
}

__all__ = ["UsageError", "main"]


class OneLineStderrHandler(logging.Handler):
    """`warning: <message>` on one line, written to the sys.stderr of the moment it is emitted
    (so that a replaced stderr, as under pytest's capsys, gets it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(f"{record.levelname.lower()}: {' '.join(record.getMessage().split())}\n")
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def warnings_to_stderr() -> Iterator[None]:
    """While a command runs, the package's warnings (and errors it logs) go to stderr, one line each."""
    package = logging.getLogger("ticgrpo")
    handler = OneLineStderrHandler(logging.WARNING)
    package.addHandler(handler)
    try:
        yield
    finally:
        package.removeHandler(handler)


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
    with warnings_to_stderr():
        return _run(module, args)


def _run(module: ModuleType, args: argparse.Namespace) -> int:
    """The command's exit code; errors that are the user's to fix are one line, not a traceback."""
    try:
        return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError) as exc:  # UsageError and ConfigError are ValueErrors
        print(f"ticgrpo {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)  # one line
        return 2
    except Exception as exc:
        exit_code = getattr(exc, "exit_code", None)
        if not isinstance(exit_code, int):  # e.g. TrainingHalted: one line, its code
            raise
        print(f"ticgrpo {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return exit_code
    except KeyboardInterrupt:
        print(f"ticgrpo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
