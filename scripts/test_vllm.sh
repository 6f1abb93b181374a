#!/usr/bin/env bash
# The vLLM rollout engine's tests, against real vLLM (CPU build) in .venv-vllm:
# layout vs HFGenerateEngine, greedy agreement, behaviour log-probs, weight updates, server mode,
# asynchronous rollouts through the server (weight versions, the vLLM producer, async training).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap_vllm.sh
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"  # GiB of KV cache per engine
export VLLM_ENABLE_V1_MULTIPROCESSING=0
.venv-vllm/bin/python -m pytest -q -m vllm tests/vllm_rollout "$@"
