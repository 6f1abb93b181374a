#!/usr/bin/env bash
# Creates or reuses .venv-verl at the repository root: verl (pinned) + ticgrpo, for the verl
# policy-loss plug-in (ticgrpo.integrations.verl) and its tests against real verl.
# Kept apart from .venv because verl pins transformers < 5.11 and pulls ray.
# verl goes in with --no-deps: its declared deps (vLLM/SGLang-era extras, wandb, tensorboard,
# ray[default]) are not needed by the loss code; the few its imports do need are listed below.
# torch==2.13.0 goes first and stays pinned on every line: anything else pulls a multi-GB CUDA build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3}"
venv=".venv-verl"
verl_version="0.9.1"
# verl 0.9.1's own pin for its cpu/vllm/sglang extras; within ticgrpo's >= 4.56.
transformers_version="5.9.0"
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
stamp="$venv/.bootstrap-stamp"
want="$(cat pyproject.toml scripts/bootstrap_verl.sh | sha256sum | cut -c1-16)"
log="$venv/bootstrap.log"
pipq() {
  if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" >>"$log" 2>&1; then
    echo "[bootstrap_verl] 'pip install $*' failed; the end of $log:" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
}
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[bootstrap_verl] installing into $venv (first run takes a few minutes; log: $log)" >&2
  : > "$log"
  pipq --upgrade pip
  pipq "torch==2.13.0"
  pipq -e ".[dev]" "torch==2.13.0" "transformers==$transformers_version"
  pipq --no-deps "verl==$verl_version"
  # What `import verl`, its loss code, its configs and its trainer modules import.
  pipq "torch==2.13.0" "transformers==$transformers_version" "tensordict==0.10.0" ray hydra-core \
    codetiming orjson pylatexenc dill torchdata pillow packaging
  "$venv/bin/python" -c "import ticgrpo, torch, transformers, verl; print('verl', verl.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
  echo "$want" > "$stamp"
fi
