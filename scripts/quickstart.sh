#!/usr/bin/env bash
# The main job: set-up, then a real TIC-GRPO run on the bundled SmolLM2-135M-Instruct
# (two-digit addition, CPU). Extra arguments go to `ticgrpo train` (e.g. --set seed=1).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
exec .venv/bin/ticgrpo train --config configs/quickstart.yaml "$@"
