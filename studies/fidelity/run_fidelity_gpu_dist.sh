#!/usr/bin/env bash
# Second device call (nvidia-h200-x2): only the 2-GPU part of run_fidelity_gpu.sh (SPD n=2 co-located vs AR).
set -u
OUT=${OUT:-/tmp/fidelity_out}
WORK=/tmp/fidelity_gpu
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export SPDSIM_DIST_STACKS_AFTER_S=150
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
timeout 200 python3 studies/fidelity/fidelity_gpu.py dist --prompts 3 --out "$WORK" 2>&1 | tee "$WORK/log_dist.txt"
tar czf "$OUT/fidelity_gpu_dist.tgz" -C "$WORK" .
cp "$WORK/log_dist.txt" "$OUT/log_dist.txt"
