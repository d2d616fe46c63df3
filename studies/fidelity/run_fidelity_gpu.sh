#!/usr/bin/env bash
# One device call (kind nvidia-h200-x2) for the fidelity report: 2-GPU SPD vs AR, a single-GPU phase profile and
# single-GPU chain SD, each part under its own timeout; everything lands in $OUT/fidelity_gpu.tgz + a log.
# Usage on the device: bash studies/fidelity/run_fidelity_gpu.sh   (carry .whl: simpy for spdsim's run-directory writer)
set -u
OUT=${OUT:-/tmp/fidelity_out}
WORK=/tmp/fidelity_gpu
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c 'import torch; print("torch", torch.__version__, "gpus", torch.cuda.device_count())'
  timeout 240 python3 studies/fidelity/fidelity_gpu.py dist --out "$WORK" \
    || { echo "dist part failed or timed out: rc=$?; retrying with eager stage steps";
         timeout 120 python3 studies/fidelity/fidelity_gpu.py dist --no-graphs --out "$WORK" || echo "dist retry failed: rc=$?"; }
  timeout 110 python3 studies/fidelity/fidelity_gpu.py profile --out "$WORK" || echo "profile part failed or timed out: rc=$?"
  timeout 90 python3 studies/fidelity/fidelity_gpu.py chain --out "$WORK" || echo "chain part failed or timed out: rc=$?"
} 2>&1 | tee "$WORK/log.txt"
tar czf "$OUT/fidelity_gpu.tgz" -C "$WORK" .
cp "$WORK/log.txt" "$OUT/log.txt"
