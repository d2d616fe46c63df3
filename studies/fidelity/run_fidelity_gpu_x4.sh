#!/usr/bin/env bash
# Issues 5 + 6 in ONE device call on nvidia-h200-x4 (4 GPUs), bounded to ~545 s of wall clock:
#   Phase A (GPUs in parallel, <= PHASE_A_S): GPUs 0,1: 2-GPU random:qwen3-8b SPD n=2 co-located α 0.6/0.8/0.95
#     + AR (issue 5 re-run), TP-2 AR, 2-rank all-reduce benchmark | GPU 2: single-GPU profile (stage layers for
#     n = 1..4, TP shards, drafter L_s = 1 with n+1 rows) | GPU 3: SmolLM2 from the carried GGUF, a small corpus,
#     SPD heads n=2 (L_s=1) and n=4 (L_s=1, 8,8,7,7) trained side by side.
#   Phase B (all 4 GPUs, one session at a time): random:qwen3-8b SPD n=4 co-located α 0.7/0.85 + AR, SPD n=3 with
#     a dedicated drafter GPU α 0.7/0.85 + AR, TP-4 AR; SmolLM2 (float32) with its trained heads: SPD n=2 on 2
#     GPUs and n=4 on 4 GPUs, each with AR on the same GPUs and a lossless check.
# Every job runs under `timeout`, writes its own log and never stops the others; the deadline clips every limit.
#
# Device calls (the second right after the first; /root survives only while the machine stays warm):
#   1. carry [".carry/smol_a"]           bash studies/fidelity/run_fidelity_gpu_x4.sh stash
#   2. carry [".carry/smol_b", ".whl"]   bash studies/fidelity/run_fidelity_gpu_x4.sh
# ($OUT gets fidelity_x4.tgz — run directories, profile bundles, logs, heads' training.json, stamp — and log.txt:
#  mkdir -p studies/fidelity/results/x4 && tar xzf <files_at>/fidelity_x4.tgz -C studies/fidelity/results/x4
#  then `python studies/fidelity/fidelity.py` validates them: calibrated on the 1/2-GPU data, every dist4_* run held out.)
# CPU dry run of the same steps (tiny random model, gloo, a few tokens, a seconds-long SmolLM2 training):
#   DRY=1 bash studies/fidelity/run_fidelity_gpu_x4.sh
set -u
if [ "${1:-}" = stash ]; then
  mkdir -p /root && cp .carry/smol_a/part /root/smol_a && ls -la /root/smol_a
  exit 0
fi
START=$(date +%s)
DRY=${DRY:-0}
OUT=${OUT:-/tmp/fidelity_x4_out}
WORK=${WORK:-/tmp/fidelity_x4}
HEADS=$WORK/heads
LOGS=$WORK/logs
rm -rf "$WORK"
mkdir -p "$OUT" "$WORK" "$HEADS" "$LOGS"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export SPDSIM_DIST_STACKS_AFTER_S=${SPDSIM_DIST_STACKS_AFTER_S:-100}
if [ "$DRY" = 1 ]; then
  MODEL=random:tiny-qwen3; DTYPE=float32; DEV=(--device cpu); PROMPTS=1; NEW=6; ITERS=3
  TP_DEGREES=1,2; TP_B=2; N3=(--stage-layers 2,1,1)  # 4 layers, 2 KV heads: no 4-way TP, no even n=3
  PHASE_A_S=${PHASE_A_S:-900}; BUDGET_S=${BUDGET_S:-1800}; GGUF_A=.carry/smol_a/part; LIMIT_SCALE=5
  export SPDSIM_CACHE_DIR=${SPDSIM_CACHE_DIR:-/tmp/spdsim_dry_cache}
  TRAIN_SMALL=(--device cpu --steps 2 --batch-size 1 --block-len 64 --gsm8k-questions 0 --source-mb 0.05
               --no-site-packages)
  CORPUS_ARGS="block_len=64, source_bytes=50_000, gsm8k_questions=0, site_packages=False"
  SMOL_TRAIN_MIN=0.05
else
  MODEL=random:qwen3-8b; DTYPE=bfloat16; DEV=(); PROMPTS=${PROMPTS:-3}; NEW=${NEW_TOKENS:-64}; ITERS=60
  TP_DEGREES=1,2,4; TP_B=4; N3=(--stages 3)
  PHASE_A_S=${PHASE_A_S:-250}; BUDGET_S=${BUDGET_S:-545}; GGUF_A=/root/smol_a; LIMIT_SCALE=1
  export SPDSIM_CACHE_DIR=${SPDSIM_CACHE_DIR:-/root/spdsim-cache}
  TRAIN_SMALL=(--gsm8k-questions 256 --source-mb 8)
  CORPUS_ARGS="source_bytes=8_000_000, gsm8k_questions=256"
  SMOL_TRAIN_MIN=2
fi
PHASE_A_END=$(( START + PHASE_A_S ))
DEADLINE=$(( START + BUDGET_S ))
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
FG=(python3 studies/fidelity/fidelity_gpu.py)
COMMON=(--out "$WORK" --model "$MODEL" --dtype "$DTYPE" --prompts "$PROMPTS" --new-tokens "$NEW" "${DEV[@]}")
SMOL=(--out "$WORK" --model smollm2-135m --dtype float32 --prompts "$PROMPTS" --new-tokens "$NEW" "${DEV[@]}"
      --alphas none)

ts() { echo "$(( $(date +%s) - START ))s"; }

run_job() {  # run_job NAME LIMIT_S END_EPOCH GPUS CMD... : own log, limit clipped to END_EPOCH, never fatal
  local name=$1 limit=$2 end=$3 gpus=$4
  shift 4
  local left=$(( end - $(date +%s) ))
  limit=$(( limit * LIMIT_SCALE ))
  (( limit > left )) && limit=$left
  if (( limit < 20 )); then
    echo "[$(ts)] $name: SKIPPED (only ${left}s left)"; echo skipped > "$LOGS/$name.rc"; return 0
  fi
  echo "[$(ts)] $name: start on GPUs $gpus, limit ${limit}s"
  local t0=$(date +%s)
  CUDA_VISIBLE_DEVICES=$gpus timeout -k 5 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  echo "$rc" > "$LOGS/$name.rc"
  echo "[$(ts)] $name: rc=$rc after $(( $(date +%s) - t0 ))s$( ((rc == 124 || rc == 137)) && echo ' (TIMED OUT)')"
  grep -E "session|lossless|tokens_per_s|written|Error|error|failed|corpus:|step " "$LOGS/$name.log" \
    | grep -v -E "Warning|warn" | tail -12 | sed "s/^/    [$name] /"
  return 0
}

rc_of() { cat "$LOGS/$1.rc" 2>/dev/null || echo none; }

lane_gpu01() {  # 2-GPU measurements (issue 5 re-run; eager stage steps if the graphed session fails), then the
                # 2-rank all-reduce (calibration data for TP) and TP-2 AR on the same pair
  run_job dist2 150 "$PHASE_A_END" 0,1 "${FG[@]}" dist "${COMMON[@]}" --name-prefix dist2 --stages 2 \
    --alphas 0.6,0.8,0.95
  if [ "$(rc_of dist2)" != 0 ]; then
    run_job dist2_eager 100 "$PHASE_A_END" 0,1 "${FG[@]}" dist "${COMMON[@]}" --name-prefix dist2 --stages 2 \
      --alphas 0.6,0.8,0.95 --no-graphs
  fi
  run_job allreduce2 40 "$PHASE_A_END" 0,1 "${FG[@]}" allreduce "${COMMON[@]}" --tp 2 --iters 100 \
    --profile-name profile_h200_qwen3-8b_allreduce2.json
  run_job tp2 70 "$PHASE_A_END" 0,1 "${FG[@]}" tp "${COMMON[@]}" --name-prefix dist2 --tp 2
}

lane_gpu2() {  # single-GPU phase profiles: random:qwen3-8b (incl. the 3/4-stage layer counts, TP shards and the
               # n+1-row drafter), then SmolLM2 in float32 once lane 3 has converted it (splits 2 and 8,8,7,7)
  run_job profile 200 "$PHASE_A_END" 2 "${FG[@]}" profile "${COMMON[@]}" --stage-counts 1,2,3,4 \
    --profile-spec-layers 1 --tp-degrees "$TP_DEGREES" --iters "$ITERS"
  while [ ! -f "$SPDSIM_CACHE_DIR/smollm2/hf/config.json" ] && (( $(date +%s) < PHASE_A_END - 40 )); do sleep 2; done
  run_job smol_profile 90 "$PHASE_A_END" 2 "${FG[@]}" profile "${SMOL[@]}" --stage-counts 1,2,4 \
    --profile-spec-layers 1 --iters "$ITERS" --kv-lens 32,128,512 --profile-name profile_h200_smollm2-135m.json
}

lane_gpu3() {  # SmolLM2: GGUF from the two carried pieces -> HF dir, a small corpus, two SPD heads side by side
  # CPU-light, so that host launch times of the timing lanes (eager drafter, profile) stay undisturbed
  export TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=8
  mkdir -p "$SPDSIM_CACHE_DIR/smollm2"
  local gguf=$SPDSIM_CACHE_DIR/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  if [ ! -f "$gguf" ]; then
    if [ ! -f "$GGUF_A" ] || [ ! -f .carry/smol_b/part ]; then
      echo "[$(ts)] SmolLM2: $GGUF_A or .carry/smol_b/part missing (stash call first?): SmolLM2 jobs skipped"
      return 0
    fi
    cat "$GGUF_A" .carry/smol_b/part > "$gguf.part" && mv "$gguf.part" "$gguf"
  fi
  run_job smol_fetch 90 "$PHASE_A_END" 3 python3 -m executor.cli fetch smollm2-135m
  run_job smol_corpus 100 "$PHASE_A_END" 3 python3 -c "
import torch
from executor.models import default_cache_dir, load_model
from executor.train.corpus import CorpusConfig, load_or_build_corpus
device = 'cuda' if torch.cuda.is_available() and '$DRY' != '1' else 'cpu'
loaded = load_model('smollm2-135m', device=device, dtype='bfloat16' if device == 'cuda' else 'float32')
corpus = load_or_build_corpus(loaded.hf_model, loaded.tokenizer, 'smollm2-135m', CorpusConfig($CORPUS_ARGS),
                              default_cache_dir())
print('corpus:', corpus.stats)"
  # Training minutes: what is left of phase A after loading and saving (~45 s), at most SMOL_TRAIN_MIN.
  local minutes
  minutes=$(python3 -c "print(round(max(0.25, min($SMOL_TRAIN_MIN, ($PHASE_A_END - $(date +%s) - 45) / 60)), 2))")
  local train=(python3 -m executor.cli train-head --model smollm2-135m --head spd --spec-layers 1 --no-progress
               --minutes "$minutes" "${TRAIN_SMALL[@]}")
  run_job smol_train_n2 400 "$PHASE_A_END" 3 "${train[@]}" --stages 2 --out "$HEADS/spd_n2_l1" &
  run_job smol_train_n4 400 "$PHASE_A_END" 3 "${train[@]}" --stages 4 --stage-layers 8,8,7,7 \
    --out "$HEADS/spd_n4_l1" &
  wait
}

{
  echo "run_fidelity_gpu_x4.sh: DRY=$DRY model $MODEL, $PROMPTS prompts x $NEW tokens (+ warm-up), budget ${BUDGET_S}s"
  git rev-parse HEAD 2>/dev/null || true
  nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
  nvidia-smi topo -m 2>/dev/null | head -8
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda,
    "gpus", torch.cuda.device_count(), "transformers", transformers.__version__)'
} > "$WORK/stamp.txt" 2>&1

{
  cat "$WORK/stamp.txt"
  echo "== phase A (parallel lanes, until +${PHASE_A_S}s)"
  lane_gpu01 &
  lane_gpu2 &
  lane_gpu3 &
  wait
  echo "== phase B (all GPUs, one session at a time, until +${BUDGET_S}s)"
  EAGER=()  # the pipeline's stage steps as phase A's 2-GPU session managed them
  if [ "$(rc_of dist2)" != 0 ] && [ "$(rc_of dist2_eager)" = 0 ]; then
    EAGER=(--no-graphs); echo "phase B: eager stage steps (phase A's graphed 2-GPU session failed)"
  fi
  run_job dist4_n4 100 "$DEADLINE" 0,1,2,3 "${FG[@]}" dist "${COMMON[@]}" --name-prefix dist4 --stages 4 \
    --drafter colocated --alphas 0.7,0.85 "${EAGER[@]}"
  run_job dist4_n3_ded 90 "$DEADLINE" 0,1,2,3 "${FG[@]}" dist "${COMMON[@]}" --name-prefix dist4 "${N3[@]}" \
    --drafter dedicated --alphas 0.7,0.85 --ar-name dist4_ar_ded "${EAGER[@]}"
  run_job tp4 70 "$DEADLINE" 0,1,2,3 "${FG[@]}" tp "${COMMON[@]}" --name-prefix dist4 --tp "$TP_B"
  n2_head=$(ls "$HEADS"/spd_n2_l1/*.pt 2>/dev/null | head -1)
  n4_head=$(ls "$HEADS"/spd_n4_l1/*.pt 2>/dev/null | head -1)
  if [ -n "$n2_head" ]; then
    run_job smol_dist2 60 "$DEADLINE" 0,1 "${FG[@]}" dist "${SMOL[@]}" --name-prefix dist2_smollm2 --stages 2 \
      --head "$n2_head" --ar-name dist2_smollm2_ar "${EAGER[@]}"
  else
    echo "[$(ts)] smol_dist2: SKIPPED (no trained n=2 head)"
  fi
  if [ -n "$n4_head" ]; then
    run_job smol_dist4 70 "$DEADLINE" 0,1,2,3 "${FG[@]}" dist "${SMOL[@]}" --name-prefix dist4_smollm2 \
      --stage-layers 8,8,7,7 --head "$n4_head" --ar-name dist4_smollm2_ar "${EAGER[@]}"
  else
    echo "[$(ts)] smol_dist4: SKIPPED (no trained n=4 head)"
  fi
  # Diagnosis only (4-GPU data never enters the calibration): the 4-rank all-reduce the ring fit extrapolates to.
  run_job allreduce4 30 "$DEADLINE" 0,1,2,3 "${FG[@]}" allreduce "${COMMON[@]}" --tp "$TP_B" --iters 100 \
    --profile-name profile_h200_qwen3-8b_allreduce4.json
  echo "== done at $(ts); run directories:"
  ls "$WORK"
} 2>&1 | tee "$WORK/log.txt"
# Checkpoints stay out of the archive (weights are not committed); their training.json and logs go in.
tar czf "$OUT/fidelity_x4.tgz" -C "$WORK" --exclude='*.pt' . 2>/dev/null
cp "$WORK/log.txt" "$OUT/log.txt"
ls -la "$OUT"
echo "packed at $(( $(date +%s) - START ))s"
