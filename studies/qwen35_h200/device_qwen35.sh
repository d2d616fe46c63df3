#!/usr/bin/env bash
# One device call (carry [".whl"], the simpy wheel) for issue 17 item 4: the paper's model family measured on one
# H200. Per Qwen3.5 shape: the AR benchmark (compiled + graphed, fraction of copy bandwidth), then in one process
# AR, single-process SPD n = 2, 4 (synthetic α = 0.8) and the profile bundle (stages for n in {1, 2, 4, 8}, the
# drafter with L_s in {2, 3, 4}, the verify). Results under $OUT: logs, bench JSON/MD, qwen35.tgz (run dirs + bundles).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
MODELS=${MODELS:-random:qwen3.5-4b,random:qwen3.5-9b}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
# compiled kernels and their tuning stay on a warm machine between calls (.cache/ is git-ignored)
export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor TRITON_CACHE_DIR=$PWD/.cache/triton
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit --format=csv > "$OUT/gpu35.txt"
mkdir -p "$OUT/qwen35"
for model in ${MODELS//,/ }; do
  tag=${model#random:}
  timeout "${AR_S:-120}" python3 studies/benchmarks/bench_executor_ar.py --model "$model" --skip-hf \
    --new-tokens 128 --out-dir "$OUT/qwen35/ar_$tag" > "$OUT/qwen35/ar_$tag.log" 2>&1
  grep -E "fraction|tok/s|Error" "$OUT/qwen35/ar_$tag.log" | tail -4
  timeout "${FID_S:-200}" python3 studies/fidelity_1gpu/measure.py --models "$model" --chain-k "" --spec-layers 2,3,4 \
    --iters 30 --out "$OUT/qwen35" > "$OUT/qwen35/measure_$tag.log" 2>&1
  grep -E "tok/s|Error|error|FAILED" "$OUT/qwen35/measure_$tag.log" | tail -6
done
tar czf "$OUT/qwen35.tgz" -C "$OUT" qwen35 && rm -rf "$OUT/qwen35"
