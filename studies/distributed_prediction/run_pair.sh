#!/usr/bin/env bash
# Issue 18 in one device call on two GPUs (kind nvidia-h200-x2 or nvidia-h100-x2): run_pair.py under one deadline,
# results packed into $OUT. SmolLM2's GGUF (94 MiB; 90 MiB as xz) is over one call's 64 MiB, so it travels in two
# pieces, the first one in a stash call right before (the machine stays warm 30 s between calls):
#   bash studies/distributed_prediction/run_pair.sh prepare  # here, once, in the checkout the calls send:
#                                                           # .whl (gguf, simpy) and .carry/smol_{a,b}/part
#   device call 1, carry [".carry/smol_a"]:          bash studies/distributed_prediction/run_pair.sh stash
#   device call 2, carry [".carry/smol_b", ".whl"]:  bash studies/distributed_prediction/run_pair.sh
# Without the stash call the SmolLM2 steps are skipped (said in one line) and the rest runs.
# $OUT gets: gpu.txt, log.txt, results.tgz (re-packed after every step), comparison.md, steps.json.
# Knobs: BUDGET_S (wall seconds of the whole command, default 560), RUN_ARGS (more run_pair.py options).
# A second call on the still-warm machine goes on where the first stopped (--resume; compile caches kept).
set -u
MODE=${1:-run}
START=$SECONDS
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
export SPDSIM_CACHE_DIR=${SPDSIM_CACHE_DIR:-/root/spdsim-cache}

prepare() {  # here (network): the wheels the device lacks and the GGUF as two xz pieces under .carry/
  local cache=${SPDSIM_LOCAL_CACHE:-$HOME/.cache/spdsim} gguf
  python3 -m pip download -q --no-deps -d .whl gguf==0.19.0 simpy==4.1.1 || return 1
  gguf=$cache/smollm2/$GGUF_NAME
  [ -f "$gguf" ] || SPDSIM_CACHE_DIR=$cache python3 -m executor.cli fetch smollm2-135m || return 1
  mkdir -p .carry/smol_a .carry/smol_b
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(open(sys.argv[1], "rb"), lzma.open(sys.argv[2], "wb"))' \
    "$gguf" /tmp/smol.gguf.xz || return 1
  split -n 2 -d /tmp/smol.gguf.xz /tmp/smol_piece_ && mv /tmp/smol_piece_00 .carry/smol_a/part \
    && mv /tmp/smol_piece_01 .carry/smol_b/part && rm -f /tmp/smol.gguf.xz
  ls -la .whl .carry/smol_a .carry/smol_b
}

case $MODE in
  prepare) prepare; exit $? ;;
  stash) mkdir -p /root && cp .carry/smol_a/part /root/smol_a && ls -la /root/smol_a; exit $? ;;
  run) ;;
  *) echo "run_pair.sh: error: unknown mode '$MODE' (prepare, stash or none)" >&2; exit 2 ;;
esac

export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# a distributed step still running after this long prints every rank's Python stacks into its log (a hang's where)
export SPDSIM_DIST_STACKS_AFTER_S=${SPDSIM_DIST_STACKS_AFTER_S:-170}
OUT=${OUT:-/tmp/pair_out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
else
  echo "no .whl/ carried: gguf (SmolLM2) and simpy (the comparison) may be missing"
  export PYTHONPATH=$PWD
fi
# compiled kernels stay on a warm machine between calls (.cache/ is git-ignored)
export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor TRITON_CACHE_DIR=$PWD/.cache/triton
{
  nvidia-smi --query-gpu=index,name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
  nvidia-smi topo -m
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__, "gpus", torch.cuda.device_count())'
  git rev-parse HEAD 2>/dev/null
} > "$OUT/gpu.txt" 2>&1
head -4 "$OUT/gpu.txt"

gguf=$SPDSIM_CACHE_DIR/smollm2/$GGUF_NAME
if [ ! -f "$gguf" ] && [ -f /root/smol_a ] && [ -f .carry/smol_b/part ]; then
  mkdir -p "$(dirname "$gguf")"
  cat /root/smol_a .carry/smol_b/part \
    | python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)' \
    > "$gguf.part" && mv "$gguf.part" "$gguf"
fi
[ -f "$gguf" ] || echo "SmolLM2-135M GGUF not on this machine (/root/smol_a from a stash call + .carry/smol_b): step 3 skipped"

RES=$PWD/.cache/pair_results
RESUME=()
[ -f "$RES/pair_run.json" ] && RESUME=(--resume)
left=$(( ${BUDGET_S:-560} - (SECONDS - START) - 10 ))  # 10 s for the last copies
set -o pipefail
timeout $((left + 5)) python3 studies/distributed_prediction/run_pair.py --out "$RES" --deadline-s "$left" \
  --pack "$OUT/results.tgz" "${RESUME[@]}" ${RUN_ARGS:-} 2>&1 | tee "$OUT/log.txt"
code=$?
cp "$RES/comparison.md" "$RES/steps.json" "$OUT/" 2>/dev/null
echo "run_pair.sh: exit $code after $((SECONDS - START)) s"
exit $code
