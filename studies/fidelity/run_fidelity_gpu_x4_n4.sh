#!/usr/bin/env bash
# Retry of run_fidelity_gpu_x4.sh's SPD n = 4 job alone (it timed out at 100 s there without output): a longer
# limit, fewer prompts, and every rank's Python stacks printed after SPDSIM_DIST_STACKS_AFTER_S if it hangs.
# Device call: carry [".whl"], kind nvidia-h200-x4:  bash studies/fidelity/run_fidelity_gpu_x4_n4.sh
set -u
OUT=${OUT:-/tmp/fidelity_x4_n4_out}
WORK=/tmp/fidelity_x4_n4
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export SPDSIM_DIST_STACKS_AFTER_S=${SPDSIM_DIST_STACKS_AFTER_S:-140}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
start=$(date +%s)
timeout -k 5 "${LIMIT_S:-190}" python3 studies/fidelity/fidelity_gpu.py dist --out "$WORK" --model random:qwen3-8b \
  --dtype bfloat16 --prompts 2 --new-tokens 48 --name-prefix dist4 --stages 4 --drafter colocated \
  --alphas 0.7,0.85 2>&1 | grep -v '^DEBUG' | tee "$WORK/log_n4.txt"
echo "rc=${PIPESTATUS[0]} after $(( $(date +%s) - start )) s" | tee -a "$WORK/log_n4.txt"
tar czf "$OUT/fidelity_x4_n4.tgz" -C "$WORK" .
cp "$WORK/log_n4.txt" "$OUT/log_n4.txt"
