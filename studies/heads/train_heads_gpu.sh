#!/usr/bin/env bash
# Issue 4 on one H100: train each head on SmolLM2-135M-Instruct and evaluate it, one device call per step.
# Run from the repository root; results land in $OUT as one small .tgz per step (tables, traces, training.json,
# log); checkpoints stay on the device under /root/heads (weights are not committed: this script rebuilds them).
#
# What the device lacks travels with the calls (the same conventions as studies/benchmarks/device_executor_checks.sh):
#   .whl/       the gguf (and simpy) wheels:  python3 -m pip download --no-deps -d .whl gguf simpy
#   .carry/smol_a/part, .carry/smol_b/part   the SmolLM2 GGUF (94 MiB, over one call's 64 MiB) in two pieces:
#     split -b 49000000 -d ~/.cache/spdsim/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/p_
#     mkdir -p .carry/smol_a .carry/smol_b; mv /tmp/p_00 .carry/smol_a/part; cat /tmp/p_01 /tmp/p_02 > .carry/smol_b/part
#   (`bash studies/heads/train_heads_gpu.sh prepare` does both here.)
#
# Device calls, each right after the previous one (a machine stays warm only 30 s; /root/* is lost after that):
#   1. carry [".carry/smol_a"]            bash studies/heads/train_heads_gpu.sh stash
#   2. carry [".carry/smol_b", ".whl"]    bash studies/heads/train_heads_gpu.sh setup        (GGUF -> HF dir, corpus)
#   3. carry [".whl"]                     bash studies/heads/train_heads_gpu.sh spd 4 2 8,8,7,7   (train + eval)
#   4.                                    bash studies/heads/train_heads_gpu.sh spd 2 1  |  spd 6 1  |  spd 8 2 4,4,4,4,4,4,3,3
#      or several short ones in one call:  MINUTES=1 LIMIT=4 TEMPS=0 EVAL_S=80 ... spd-sweep 2:1 6:1 8:1:4,4,4,4,4,4,3,3
#   5.                                    bash studies/heads/train_heads_gpu.sh eagle3
#   6.                                    bash studies/heads/train_heads_gpu.sh specdecpp    (needs step 5's head)
#   or, heads trained and evaluated side by side on the one GPU (steps 3-5 in one call):
#                                         MINUTES=4 bash studies/heads/train_heads_gpu.sh batch spd:4:2:8,8,7,7 spd:2:1 eagle3
# Then here: bash studies/heads/train_heads_gpu.sh collect <files_at>/*.tgz  (unpacks into studies/heads/results/, builds
# the presets spdsim/profiles/presets/smollm2_135m.json and the plots).
# Evaluation runs in float32: in bf16 the eager schedules and graph-captured AR round differently and near-ties
# split (studies/smollm2_check/results/smollm2_h100_bf16/NOTE.md); float32 was token-identical on the H100. Eager SPD cycles took
# ~30 ms there (smollm2_check.md), hence the small defaults; temperature-major order finishes T = 0 first.
# Knobs (environment): MINUTES (training budget, default 3.5), LIMIT (prompts per dataset, 5), NEW_TOKENS (128),
# TEMPS ("0,1"), EVAL_S (eval time limit in seconds, 270); a step lasts at most int(MINUTES)*60 + 120 + EVAL_S (570 s by default).
set -u
STEP=${1:?usage: train_heads_gpu.sh prepare|stash|setup|batch SPEC...|spd N LS [SPLIT]|spd-sweep N:LS[:SPLIT]...|eagle3|specdecpp|collect FILES}
shift
OUT=${OUT:-/tmp/heads_out}
HEADS=/root/heads
MINUTES=${MINUTES:-3.5}
LIMIT=${LIMIT:-5}
NEW_TOKENS=${NEW_TOKENS:-128}
TEMPS=${TEMPS:-0,1}
EVAL_S=${EVAL_S:-270}
export PYTHONUNBUFFERED=1 SPDSIM_CACHE_DIR=${SPDSIM_CACHE_DIR:-/root/spdsim-cache}

install_wheels() {
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  fi
  export PYTHONPATH=/tmp/site:$PWD
}

pack() {  # pack NAME DIR...: a .tgz of the step's outputs under $OUT
  local name=$1
  shift
  mkdir -p "$OUT"
  tar czf "$OUT/$name.tgz" "$@" 2>/dev/null
  ls -la "$OUT"
}

train_and_eval() {  # train_and_eval NAME CHECKPOINT EVAL_ARGS... -- TRAIN_ARGS...
  local name=$1 checkpoint=$2
  shift 2
  local eval_args=()
  while [ "$1" != "--" ]; do eval_args+=("$1"); shift; done
  shift
  local dir=$HEADS/$name
  mkdir -p "$dir"
  {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    timeout $(( ${MINUTES%.*} * 60 + 120 )) python3 -m executor.cli train-head --model smollm2-135m \
      --minutes "$MINUTES" --no-progress --out "$dir" "$@" || echo "train-head failed: rc=$?"
    ckpt=$dir/$checkpoint
    [ -e "$ckpt" ] || ckpt=$(ls "$dir"/*.pt 2>/dev/null | head -1)
    timeout "$EVAL_S" python3 -m executor.cli eval --model smollm2-135m --head "$ckpt" --limit "$LIMIT" \
      --max-new-tokens "$NEW_TOKENS" --temperatures "$TEMPS" --dtype float32 --out "$dir/eval" "${eval_args[@]}" \
      || echo "eval stopped: rc=$? (tables hold every run finished before)"
  } 2>&1 | grep -v '^DEBUG' | tee "$dir/log.txt" | tail -40
  (cd "$HEADS" && pack "$name" "$name/training.json" "$name/log.txt" "$name/eval")
}

head_spec() {  # head_spec SPEC -> sets name, checkpoint, train_args, eval_args (SPEC: spd:N:LS[:SPLIT] or eagle3)
  local kind n ls split
  IFS=: read -r kind n ls split <<< "$1"
  eval_args=()
  if [ "$kind" = eagle3 ]; then
    name=eagle3; checkpoint=eagle3_head.pt; train_args=(--head eagle3); eval_args=(--k-values 3,5,7)
  else
    name=spd_n${n}_l${ls}; checkpoint=smollm2-135m_s${n}_l${ls}.pt
    train_args=(--head spd --stages "$n" --spec-layers "$ls")
    [ -n "${split:-}" ] && train_args+=(--stage-layers "$split")
  fi
}

case "$STEP" in
  prepare)
    python3 -m pip download --no-deps -q -d .whl gguf simpy
    gguf_file=$SPDSIM_CACHE_DIR/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    [ -f "$gguf_file" ] || gguf_file=$HOME/.cache/spdsim/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    [ -f "$gguf_file" ] || python3 -c "from executor.models import smollm2_hf_dir; smollm2_hf_dir()"
    split -b 49000000 -d "$gguf_file" /tmp/p_
    mkdir -p .carry/smol_a .carry/smol_b
    mv /tmp/p_00 .carry/smol_a/part
    cat /tmp/p_0[1-9] > .carry/smol_b/part && rm -f /tmp/p_0[1-9]
    ls -la .whl .carry/smol_a .carry/smol_b
    ;;
  stash)
    mkdir -p /root && cp .carry/smol_a/part /root/smol_a && ls -la /root/smol_a
    ;;
  setup)
    install_wheels
    mkdir -p "$SPDSIM_CACHE_DIR/smollm2" "$HEADS/setup"
    cat /root/smol_a .carry/smol_b/part > "$SPDSIM_CACHE_DIR/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    {
      nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
      # Converts the GGUF once (sha256 checked), then builds and caches the corpus (GSM8K answers by the target).
      timeout 540 python3 - <<'EOF'
from pathlib import Path
import torch
from executor.models import default_cache_dir, load_model
from executor.train.corpus import CorpusConfig, load_or_build_corpus
loaded = load_model("smollm2-135m", device="cuda", dtype="bfloat16")
corpus = load_or_build_corpus(loaded.hf_model, loaded.tokenizer, "smollm2-135m", CorpusConfig(), default_cache_dir())
print(corpus.stats)
EOF
      timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_executor_train_spd.py 2>&1 | tail -3
    } 2>&1 | grep -v '^DEBUG' | tee "$HEADS/setup/log.txt" | tail -20
    (cd "$HEADS" && pack setup setup/log.txt)
    ;;
  spd)
    n=${1:?spd needs N}; ls=${2:?spd needs L_s}; split=${3:-}
    install_wheels
    args=(--head spd --stages "$n" --spec-layers "$ls")
    [ -n "$split" ] && args+=(--stage-layers "$split")
    name=spd_n${n}_l${ls}
    train_and_eval "$name" "smollm2-135m_s${n}_l${ls}.pt" -- "${args[@]}"
    ;;
  spd-sweep)  # several short SPD heads in one call, e.g. MINUTES=1 LIMIT=4 TEMPS=0 EVAL_S=80 ... spd-sweep 2:1 6:1 8:1:4,4,4,4,4,4,3,3
    install_wheels
    for spec in "$@"; do
      IFS=: read -r n ls split <<< "$spec"
      args=(--head spd --stages "$n" --spec-layers "$ls")
      [ -n "${split:-}" ] && args+=(--stage-layers "$split")
      train_and_eval "spd_n${n}_l${ls}" "smollm2-135m_s${n}_l${ls}.pt" -- "${args[@]}"
    done
    ;;
  batch)  # train several heads at once on the one GPU, then evaluate them at once (acceptance does not depend
          # on timing, and the small model leaves the GPU mostly idle): batch spd:4:2:8,8,7,7 spd:2:1 eagle3 ...
    install_wheels
    names=()
    for spec in "$@"; do
      head_spec "$spec"; names+=("$name"); mkdir -p "$HEADS/$name"
      timeout $(( ${MINUTES%.*} * 60 + 150 )) python3 -m executor.cli train-head --model smollm2-135m \
        --minutes "$MINUTES" --no-progress --out "$HEADS/$name" "${train_args[@]}" > "$HEADS/$name/log.txt" 2>&1 &
    done
    wait
    for spec in "$@"; do
      head_spec "$spec"
      ckpt=$HEADS/$name/$checkpoint
      [ -e "$ckpt" ] || ckpt=$(ls "$HEADS/$name"/*.pt 2>/dev/null | head -1)
      timeout "$EVAL_S" python3 -m executor.cli eval --model smollm2-135m --head "$ckpt" --limit "$LIMIT" \
        --max-new-tokens "$NEW_TOKENS" --temperatures "$TEMPS" --dtype float32 --out "$HEADS/$name/eval" \
        "${eval_args[@]}" >> "$HEADS/$name/log.txt" 2>&1 &
    done
    wait
    for name in "${names[@]}"; do echo "== $name"; grep -v '^DEBUG' "$HEADS/$name/log.txt" | tail -8; done
    files=()
    for name in "${names[@]}"; do files+=("$name/training.json" "$name/log.txt" "$name/eval"); done
    (cd "$HEADS" && pack "batch_${names[0]}" "${files[@]}")
    ;;
  eagle3)
    install_wheels
    train_and_eval eagle3 eagle3_head.pt --k-values 3,5,7 -- --head eagle3
    ;;
  specdecpp)
    install_wheels
    [ -f "$HEADS/eagle3/eagle3_head.pt" ] || { echo "specdecpp needs the eagle3 step first"; exit 2; }
    mkdir -p "$HEADS/specdecpp"
    {
      timeout $(( ${MINUTES%.*} * 60 + 120 )) python3 -m executor.cli train-head --model smollm2-135m \
        --head specdecpp --chain-head "$HEADS/eagle3/eagle3_head.pt" --minutes "$MINUTES" --no-progress \
        --out "$HEADS/specdecpp" || echo "train-head failed: rc=$?"
      timeout "$EVAL_S" python3 -m executor.cli eval --model smollm2-135m --head "$HEADS/specdecpp" \
        --limit "$LIMIT" --max-new-tokens "$NEW_TOKENS" --temperatures "$TEMPS" --thresholds 0.3,0.5 --dtype float32 \
        --out "$HEADS/specdecpp/eval" || echo "eval stopped: rc=$?"
    } 2>&1 | grep -v '^DEBUG' | tee "$HEADS/specdecpp/log.txt" | tail -40
    (cd "$HEADS" && pack specdecpp specdecpp/training.json specdecpp/config.json specdecpp/log.txt specdecpp/eval)
    ;;
  collect)
    results=studies/heads/results
    mkdir -p "$results"
    for archive in "$@"; do tar xzf "$archive" -C "$results"; done
    folders=$(ls -d "$results"/*/eval 2>/dev/null)
    [ -n "$folders" ] || { echo "no eval folders in $results"; exit 2; }
    python3 -m executor.presets_from_traces $folders --out spdsim/profiles/presets/smollm2_135m.json
    python3 studies/heads/heads_report.py $folders --out "$results"
    ;;
  *)
    echo "unknown step '$STEP'"; exit 2
    ;;
esac
