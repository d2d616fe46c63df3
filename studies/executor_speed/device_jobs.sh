#!/usr/bin/env bash
# One device call (carry [".whl"]) that works through a queue of measurement jobs under one deadline, so a call
# that starts late or compiles slowly still returns every job it finished. Jobs (JOBS, space-separated):
#   fid:MODEL   studies/fidelity_1gpu/measure.py: profile bundle, AR, EAGLE-3 chain grid, SPD n = 2, 4 (issue 11)
#   q35:MODEL   bench_executor_ar.py (AR_S=0 skips it) + measure.py --chain-k "" --spec-layers 2,3,4 (issue 17, Qwen3.5)
#   bench:MODEL studies/benchmarks/bench_chain.py (K = 3) and bench_spd.py (n = 4) at alpha 0.8, 4 prompts x 256 tokens
#   gemv        studies/executor_speed/bench_gemv.py: the step's matmuls, cuBLAS / inductor / executor.gemv (Triton);
#               then bench_executor_ar.py on qwen3-4b: the compiled layer plain, with the GEMV (+gemv), and as
#               executor.fused_decode's one-token layer (+fused); the kernel breakdown in its JSON is the last one's
#               (GEMV_S=0 skips the per-matrix bench; AR_MODES picks the compile modes)
#   tests       the GPU-marked executor tests, one pytest per file (TEST_FILE_S each; TEST_FILES: a space-separated
#               list of files, in the order to run them, instead of every tests/test_executor_*.py)
# SEED_FROM: a committed campaign folder (studies/fidelity_1gpu/results/<campaign> for fid jobs,
# studies/qwen35_h200/results/<session> for q35 jobs): the job starts from its model folder, so on the same GPU kind
# --resume keeps its bundle and runs and measures only what is missing (new phases, unfinished runs).
# FID_ARGS: extra measure.py options for fid jobs (e.g. "--spd-stages= --spec-layers=": no SPD runs, and no SPD
# drafter in the bundle, its slowest phase to profile: a chain-only campaign).
# Results under $OUT: gpu.txt and results.tgz (results/<job>/..., one log per job), re-packed after every job.
# Results are kept in the git-ignored .cache/results: on a machine still warm from the last call, fid/q35 jobs
# resume (measure.py --resume: the bundle and finished runs are kept), so a campaign may span back-to-back calls.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
JOBS=${JOBS:-"fid:random:qwen3-4b q35:random:qwen3.5-4b fid:random:qwen3-8b q35:random:qwen3.5-9b tests"}
DEADLINE=$((SECONDS + ${TOTAL_S:-560}))
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
# compiled kernels and their tuning stay on a warm machine between calls (.cache/ is git-ignored)
export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor TRITON_CACHE_DIR=$PWD/.cache/triton
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit --format=csv > "$OUT/gpu.txt"
RES=$PWD/.cache/results
mkdir -p "$RES"

left() { echo $((DEADLINE - SECONDS)); }
cap() { local want=$1 have; have=$(left); have=$((have > 5 ? have : 5)); echo $((want < have ? want : have)); }  # never 0: timeout 0 waits forever
seed() {  # resume a committed campaign: copy its model folder once, before the job's first run on this machine
  if [ -n "${SEED_FROM:-}" ] && [ -d "$SEED_FROM/$2" ] && [ ! -d "$1/$2" ]; then mkdir -p "$1" && cp -r "$SEED_FROM/$2" "$1/"; fi
}
pack() { tar czf "$OUT/results.tgz.tmp" -C "$PWD/.cache" results && mv "$OUT/results.tgz.tmp" "$OUT/results.tgz"; }

for job in $JOBS; do
  [ "$(left)" -gt 30 ] || { echo "deadline: skipped $job"; continue; }
  kind=${job%%:*}; model=${job#*:}; tag=${model#random:}
  echo "[$(date +%T)] $job ($(left) s left)"
  case $kind in
    fid)
      seed "$RES/fidelity" "$tag"
      timeout "$(cap "${FID_S:-420}")" python3 studies/fidelity_1gpu/measure.py --models "$model" --limit "${LIMIT:-3}" \
        --kv-lens "${KV:-128,512}" --out "$RES/fidelity" --resume ${FID_ARGS:-} >> "$RES/fidelity_$tag.log" 2>&1
      grep -E "tok/s|FAILED|Error" "$RES/fidelity_$tag.log" | tail -16 ;;
    q35)
      mkdir -p "$RES/qwen35"
      seed "$RES/qwen35" "$tag"
      [ "${AR_S:-100}" = 0 ] || timeout "$(cap "${AR_S:-100}")" python3 studies/benchmarks/bench_executor_ar.py --model "$model" --skip-hf \
        --new-tokens 128 --out-dir "$RES/qwen35/ar_$tag" > "$RES/qwen35/ar_$tag.log" 2>&1
      grep -sE "fraction|tok/s|Error" "$RES/qwen35/ar_$tag.log" | tail -3
      timeout "$(cap "${Q35_S:-240}")" python3 studies/fidelity_1gpu/measure.py --models "$model" --chain-k "" \
        --spec-layers 2,3,4 --kv-lens "${KV:-128,512}" --limit "${LIMIT:-3}" --out "$RES/qwen35" --resume \
        >> "$RES/qwen35/measure_$tag.log" 2>&1
      grep -E "tok/s|FAILED|Error" "$RES/qwen35/measure_$tag.log" | tail -6 ;;
    bench)
      timeout "$(cap "${BENCH_S:-150}")" python3 studies/benchmarks/bench_chain.py --model "$model" --k 3 --alpha 0.8 \
        --new-tokens 256 --prompts 4 --out "$RES/bench_chain_$tag.json" > "$RES/bench_$tag.log" 2>&1
      timeout "$(cap "${BENCH_S:-150}")" python3 studies/benchmarks/bench_spd.py --model "$model" --stages 4 --alpha 0.8 \
        --new-tokens 256 --prompts 4 --out "$RES/bench_spd_$tag.json" >> "$RES/bench_$tag.log" 2>&1
      tail -8 "$RES/bench_$tag.log" ;;
    gemv)
      if [ "${GEMV_S:-150}" != 0 ]; then
        rm -rf "$RES/bench_gemv"
        timeout "$(cap "${GEMV_S:-150}")" python3 studies/executor_speed/bench_gemv.py --out "$RES/bench_gemv" \
          > "$RES/bench_gemv.log" 2>&1
        tail -12 "$RES/bench_gemv.log"
      fi
      timeout "$(cap "${AR_S:-240}")" python3 studies/benchmarks/bench_executor_ar.py --model random:qwen3-4b \
        --skip-hf --new-tokens 64 --compile-modes "${AR_MODES:-default,default+gemv,default+fused}" \
        --out-dir "$RES/ar_gemv" \
        > "$RES/ar_gemv.log" 2>&1
      grep -sE "of copy|Error" "$RES/ar_gemv.log" | tail -4 ;;
    tests)  # one pytest per file, each under its own limit: a slow file cannot hide the others' results
      : > "$RES/gpu_tests.log"
      for file in ${TEST_FILES:-tests/test_executor_*.py}; do
        grep -q "mark.gpu" "$file" || continue
        [ "$(left)" -gt 10 ] || { echo "deadline: skipped $file" >> "$RES/gpu_tests.log"; continue; }
        echo "== $file" >> "$RES/gpu_tests.log"
        timeout "$(cap "${TEST_FILE_S:-150}")" python3 -m pytest -v -rfE --tb=short -p no:cacheprovider -m gpu -o faulthandler_timeout=100 \
          --durations=3 "$file" >> "$RES/gpu_tests.log" 2>&1 || echo "exit $? for $file" >> "$RES/gpu_tests.log"
      done
      grep -E "^== | passed| failed| skipped|^exit|^FAILED|^ERROR|PASSED|FAILED|SKIPPED|Timeout" "$RES/gpu_tests.log" | cut -c1-160 ;;
  esac
  pack
done
echo "[$(date +%T)] done ($(left) s left)"
