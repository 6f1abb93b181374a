#!/usr/bin/env bash
# The test command: set-up, lint, then the whole test suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
.venv/bin/ruff check ticgrpo tests benchmarks
.venv/bin/python -m pytest -q "$@"
