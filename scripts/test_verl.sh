#!/usr/bin/env bash
# The verl plug-in's tests against real verl (pinned in scripts/bootstrap_verl.sh) in .venv-verl:
# verl's policy-loss registry, its `vanilla` loss, its actor's `ppo_loss`, `import verl` with
# VERL_USE_EXTERNAL_MODULES, the example configs against verl's Hydra tree.
# Fails (instead of skipping) when verl cannot be imported there.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap_verl.sh
export RAY_USAGE_STATS_ENABLED=0
export TICGRPO_REQUIRE_VERL=1
.venv-verl/bin/python -m pytest -q tests/test_integration_verl.py "$@"
