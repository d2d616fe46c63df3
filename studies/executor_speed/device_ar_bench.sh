#!/usr/bin/env bash
# One device call: GPU-marked numerics tests and the AR bandwidth benchmark (per-kernel breakdown, compile variants,
# whole-step compile) of random:qwen3-4b and random:qwen3-8b. Carry [".whl"] (simpy wheel); results under $OUT.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit --format=csv > "$OUT/gpu.txt"
timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_executor_cache.py > "$OUT/gpu_tests.log" 2>&1
tail -3 "$OUT/gpu_tests.log"
mkdir -p "$OUT/q4" "$OUT/q8"
timeout 260 python3 studies/benchmarks/bench_executor_ar.py --model random:qwen3-4b --skip-hf --whole-step \
  --compile-modes default,default+cdt,max-autotune-no-cudagraphs --out-dir "$OUT/q4" > "$OUT/q4/log.txt" 2>&1
grep '^\[' "$OUT/q4/log.txt" | tail -12
timeout 200 python3 studies/benchmarks/bench_executor_ar.py --model random:qwen3-8b --skip-hf --whole-step \
  --compile-modes default,default+cdt --out-dir "$OUT/q8" > "$OUT/q8/log.txt" 2>&1
grep '^\[' "$OUT/q8/log.txt" | tail -12
