#!/usr/bin/env bash
# The test command: set-up, the gates (lint incl. complexity ≤ 12, type check), then the whole test suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
.venv/bin/ruff check ticgrpo tests benchmarks
.venv/bin/mypy   # files and settings: [tool.mypy] in pyproject.toml (ticgrpo/)
.venv/bin/python -m pytest -q "$@"
