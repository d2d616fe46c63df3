#!/usr/bin/env bash
# Executor checks in one device call (run from the repository root on the GPU machine; results under $OUT):
#   1. GPU-marked executor tests, 2. the AR benchmark, 3. the profile bundle of random:qwen3-4b,
#   4. with SmolLM2 carried (see below): its conversion, the smollm2 tests and a short SPD run.
# SmolLM2's GGUF (94 MiB) exceeds one call's 64 MiB: split it into two ignored folders first
#   split -b 49000000 -d ~/.cache/spdsim/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/p_
#   mkdir -p .carry/smol_a .carry/smol_b; mv /tmp/p_00 .carry/smol_a/part; cat /tmp/p_01 /tmp/p_02 > .carry/smol_b/part
# then call once with carry [".carry/smol_a"] and STASH_ONLY=1 (copies the piece to /root/smol_a), and within the
# machine's 30 s warm window again with carry [".carry/smol_b", ".whl"] (gguf wheel in .whl).
set -u
export PYTHONUNBUFFERED=1 SPDSIM_CACHE_DIR=/root/spdsim-cache
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if [ -d .carry/smol_a ]; then mkdir -p /root && cp .carry/smol_a/part /root/smol_a; fi
[ "${STASH_ONLY:-0}" = 1 ] && { ls -la /root/smol_a; exit 0; }
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
if [ -f /root/smol_a ] && [ -d .carry/smol_b ]; then
  mkdir -p "$SPDSIM_CACHE_DIR/smollm2"
  cat /root/smol_a .carry/smol_b/part > "$SPDSIM_CACHE_DIR/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  timeout 120 python3 -m executor.cli fetch smollm2-135m 2>&1 | tail -2 | tee "$OUT/smollm2.log"
  timeout 120 python3 -m executor.cli run --model smollm2-135m --method spd --stages 2 --limit 2 \
    --max-new-tokens 64 2>&1 | tail -30 | tee -a "$OUT/smollm2.log"
fi
timeout "${TESTS_S:-200}" python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_executor_*.py > "$OUT/gpu_tests.log" 2>&1
timeout 120 python3 -m pytest -q -p no:cacheprovider -k smollm2 tests/test_executor_*.py >> "$OUT/gpu_tests.log" 2>&1
grep -v '^DEBUG' "$OUT/gpu_tests.log" | tail -5
timeout "${BENCH_S:-240}" python3 studies/benchmarks/bench_executor_ar.py --out-dir "$OUT" \
  --compile-modes default,max-autotune-no-cudagraphs > "$OUT/bench.log" 2>&1
grep '^\[' "$OUT/bench.log" | tail -8
timeout "${PROFILE_S:-150}" python3 -m executor.cli profile --model random:qwen3-4b --iters 30 \
  --out "$OUT/random-qwen3-4b_h100.json" > "$OUT/profile.log" 2>&1
tail -2 "$OUT/profile.log"
