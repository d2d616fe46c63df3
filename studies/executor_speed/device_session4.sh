#!/usr/bin/env bash
# One device call (carry [".whl"]): the one-GPU fidelity measurements of $MODELS first (run dirs + profile bundles,
# which also give issue 11's speed figures and issue 15's phase bundle), then the GPU-marked executor tests.
# Results under $OUT: gpu.txt, fidelity.log, fidelity.tgz, gpu_tests.log.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
MODELS=${MODELS:-random:qwen3-4b,random:qwen3-8b}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
# compiled kernels and their tuning stay on a warm machine between calls (.cache/ is git-ignored)
export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor TRITON_CACHE_DIR=$PWD/.cache/triton
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit --format=csv > "$OUT/gpu.txt"
timeout "${FID_S:-440}" python3 studies/fidelity_1gpu/measure.py --models "$MODELS" --limit "${LIMIT:-3}" --kv-lens "${KV:-256,512,1024}" \
  --out "$OUT/fidelity" > "$OUT/fidelity.log" 2>&1
grep -E "tok/s|Error|error|FAILED|host_issue" "$OUT/fidelity.log" | tail -40
tar czf "$OUT/fidelity.tgz" -C "$OUT" fidelity && rm -rf "$OUT/fidelity"
[ "${TESTS_S:-120}" = 0 ] || timeout "${TESTS_S:-120}" python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_executor_*.py > "$OUT/gpu_tests.log" 2>&1
grep -v "CUDAEvent\|Assertion" "$OUT/gpu_tests.log" | tail -12
