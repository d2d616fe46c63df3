#!/usr/bin/env bash
# Last device call of the session (carry [".whl"]): the graphed chain/SPD on CUDA after the private-pool fix,
# then the chain and SPD benchmarks on random:qwen3-4b, then the GPU-marked executor tests.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
for mode in graph spd eager; do
  timeout 60 python3 studies/executor_speed/cuda_smoke.py $mode > "$OUT/debug_$mode.log" 2>&1
  grep -v "CUDAEvent\|Assertion\|^KEY\|^  in" "$OUT/debug_$mode.log" | grep -E "ok|Error|error" | head -3
done
timeout 100 python3 studies/benchmarks/bench_chain.py --model random:qwen3-4b --k 3 --alpha 0.8 --new-tokens 128 --prompts 3 \
  --out "$OUT/bench_chain_qwen3-4b_h200.json" > "$OUT/bench.log" 2>&1
timeout 100 python3 studies/benchmarks/bench_spd.py --model random:qwen3-4b --stages 4 --alpha 0.8 --new-tokens 128 --prompts 3 \
  --out "$OUT/bench_spd_qwen3-4b_h200.json" >> "$OUT/bench.log" 2>&1
grep -v "CUDAEvent\|Assertion" "$OUT/bench.log" | grep -E "^\[|Error" | tail -20
timeout 80 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_executor_chain_graphed.py tests/test_executor_chain.py \
  tests/test_executor_spd.py tests/test_executor_cache.py tests/test_executor_ar.py > "$OUT/gpu_tests.log" 2>&1
grep -v "CUDAEvent\|Assertion" "$OUT/gpu_tests.log" | tail -8
