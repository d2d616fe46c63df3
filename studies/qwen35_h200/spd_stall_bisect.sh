#!/usr/bin/env bash
# Where does single-process SPD on random:qwen3.5-4b stall on a GPU? (issue 17; session 10)
# Sessions 9-10: measure.py's spd_n2_a0.80 waits in the verify's host read (executor/host_sync.py to_host) for
# minutes: the GPU never finishes the cycle's work. This runs the same schedule from the CLI, one short prompt, with
# graphs and compile switched off one at a time, each under its own limit; a run past its limit prints its Python
# stacks (faulthandler) and is killed. nvidia-smi samples ($OUT/smi.csv) say whether the GPU is busy or idle
# meanwhile. Carry [".whl"]. Results: $OUT/spd_stall_bisect.log.
set -u
OUT=${OUT:-/tmp/out}
LOG=$OUT/spd_stall_bisect.log
RUN_S=${RUN_S:-70}
# LAUNCH_BLOCKING=1: every kernel launch waits for the kernel, so an eager run's stack dump names the op whose
# kernel does not end (session 10: eager runs stall too, the GPU 100% busy at ~258 W); for one variant only, begin
# it with CUDA_LAUNCH_BLOCKING=1 (see the loop)
[ "${LAUNCH_BLOCKING:-0}" = 1 ] && export CUDA_LAUNCH_BLOCKING=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor TRITON_CACHE_DIR=$PWD/.cache/triton
MODEL=${MODEL:-random:qwen3.5-4b}
# --stall-s: a run whose device read waits STALL_S seconds ends in one line, its stacks in $OUT/logs (compiles and
# captures happen between reads and never count), so a stalling variant costs seconds, not RUN_S
export SPDSIM_LOG_DIR=$OUT/logs
ARGS="--model $MODEL --method spd --stages 2 --synthetic-alpha 0.8 --limit 1 --max-new-tokens 24 --stall-s ${STALL_S:-30}"
# the GPU's load every 5 s: busy (a long kernel) or idle (work waiting on something) while a run stalls
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw,clocks.sm --format=csv -l 5 > "$OUT/smi.csv" 2>&1 &
SMI=$!
trap 'kill $SMI 2>/dev/null' EXIT
IFS='|' read -r -a variants <<< "${VARIANTS:---no-graphs --no-compile|--no-graphs|--no-compile|--dtype float32 --no-graphs --no-compile}"
for flags in "${variants[@]}"; do
  # a variant's leading NAME=VALUE words set its environment only (e.g. "CUDA_LAUNCH_BLOCKING=1 --no-graphs")
  envs=(); opts=()
  for word in $flags; do
    if [ ${#opts[@]} = 0 ] && [[ $word =~ ^[A-Z_]+= ]]; then envs+=("$word"); else opts+=("$word"); fi
  done
  echo "== ${envs[*]} spdsim exec run $ARGS ${opts[*]}" | tee -a "$LOG"
  # shellcheck disable=SC2086
  env "${envs[@]}" timeout $((RUN_S + 10)) python3 -X faulthandler -c "
import faulthandler, sys
faulthandler.dump_traceback_later($RUN_S, exit=True)
from spdsim.cli import main
sys.argv = ['spdsim', 'exec', 'run'] + sys.argv[1:]
main()
" $ARGS "${opts[@]}" >> "$LOG" 2>&1
  code=$?
  echo "exit $code" | tee -a "$LOG"
  grep -E "tok/s|lossless|realised|Error" "$LOG" | tail -3
  # STOP_AFTER_PASS=1: the first variant that finishes answers the call's question; the rest are not run
  if [ "${STOP_AFTER_PASS:-0}" = 1 ] && [ $code = 0 ]; then echo "stopped after the first finished variant" | tee -a "$LOG"; break; fi
done
