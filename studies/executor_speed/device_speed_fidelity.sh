#!/usr/bin/env bash
# One device call (carry [".whl"], the simpy wheel): GPU-marked executor tests, the chain and single-process SPD
# benchmarks, and the one-GPU fidelity measurements of the models in $MODELS (default random:qwen3-4b).
# Results under $OUT: logs, bench JSONs, and fidelity.tgz (run directories + profile bundles per model).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
MODELS=${MODELS:-random:qwen3-4b}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit --format=csv > "$OUT/gpu.txt"
if [ "${TESTS:-1}" = 1 ]; then
  timeout "${TESTS_S:-150}" python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_executor_*.py > "$OUT/gpu_tests.log" 2>&1
  tail -3 "$OUT/gpu_tests.log"
fi
if [ "${BENCH:-1}" = 1 ]; then
  timeout "${BENCH_S:-150}" python3 studies/benchmarks/bench_chain.py --model random:qwen3-4b --k 3 --alpha 0.8 --new-tokens 256 --prompts 4 \
    --out "$OUT/bench_chain_qwen3-4b_h200.json" > "$OUT/bench.log" 2>&1
  timeout "${BENCH_S:-150}" python3 studies/benchmarks/bench_spd.py --model random:qwen3-4b --stages 4 --alpha 0.8 --new-tokens 256 --prompts 4 \
    --out "$OUT/bench_spd_qwen3-4b_h200.json" >> "$OUT/bench.log" 2>&1
  tail -25 "$OUT/bench.log"
fi
timeout "${FID_S:-240}" python3 studies/fidelity_1gpu/measure.py --models "$MODELS" --out "$OUT/fidelity" > "$OUT/fidelity.log" 2>&1
grep -E "tok/s|Error|error" "$OUT/fidelity.log" | tail -25
tar czf "$OUT/fidelity.tgz" -C "$OUT" fidelity && rm -rf "$OUT/fidelity"
