#!/usr/bin/env bash
# Reproduces the figures in docs/benchmarks.md on this machine: the full gd-bench run (engine and
# gRPC, concurrency 1..32 and batch requests 1..64), then the comparisons that chose the engine's
# defaults (max_batch at 64 concurrent requests; oneDNN, channels-last, guidance cost and malloc
# settings at 32) and the samplers' (DPM-Solver++ 15 steps against DDIM 50).
# Results land in $OUT (default bench-results/) as JSON and Markdown, one pair per run.
#
#   scripts/benchmarks.sh [--seconds N] [extra gd-bench flags, e.g. --device cuda --dtype fp16]
#
# Stop other work first (a paused trainer: pkill -STOP -f gd-train; resume with -CONT): the
# figures are only as quiet as the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${GD_BIN:-build/bin}
OUT=${OUT:-bench-results}
SECONDS_EACH=6
if [[ "${1:-}" == "--seconds" ]]; then SECONDS_EACH=$2; shift 2; fi
mkdir -p "$OUT"
export OMP_WAIT_POLICY=passive

run() {  # name, flags...
  local name=$1
  shift
  echo "== $name"
  "$BIN/gd-bench" --seconds "$SECONDS_EACH" --json "$OUT/$name.json" --markdown "$OUT/$name.md" \
    "$@"
}

run full --max_batch 64 "$@"
for b in 8 16 32 64; do
  run "max_batch_$b" --max_batch "$b" --concurrency 64 --batches "" --grpc=false "$@"
done
run mkldnn_off --mkldnn=false --concurrency 32 --batches "" --grpc=false "$@"
run channels_last --channels_last --concurrency 32 --batches "" --grpc=false "$@"
run unguided --classifier_scale 0 --concurrency 32 --batches "" --grpc=false "$@"
# glibc's malloc defaults against the kept freed memory (the default), each twice, alternating.
for i in 1 2; do
  run "glibc_malloc_$i" --keep_freed_memory=false --concurrency 1,32 --batches "" --grpc=false "$@"
  run "keep_freed_memory_$i" --concurrency 1,32 --batches "" --grpc=false "$@"
done
# DPM-Solver++ 15 steps against DDIM 50, guided at scale 3 (the sampler comparison).
run sampler_ddim50 --sampler ddim --timestep_respacing ddim50 --classifier_scale 3 \
  --concurrency 1,32 --batches "" --grpc=false "$@"
run sampler_dpm15 --sampler dpm++ --steps 15 --classifier_scale 3 --concurrency 1,32 \
  --batches "" --grpc=false "$@"
echo "results in $OUT/"
