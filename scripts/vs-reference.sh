#!/usr/bin/env bash
# The reference against gd-server, same checkpoints, same settings, same machine, in one run:
#
#   scripts/vs-reference.sh REF_DIR [FIXTURE_DIR]
#
# REF_DIR is a checkout of openai/guided-diffusion (never committed here); FIXTURE_DIR holds
# model.pt, classifier.pt and fixture.json (default: ../shared/fixtures/parity-64). Both sides
# run classifier-guided DDIM (VS_RESPACING, default ddim25; VS_SCALE, default 1) in float32 with
# VS_THREADS intra-op threads (default 2) on the CPU, and each is timed on
#   - one request of VS_BATCH images (default 8), and
#   - VS_BATCH single-image requests: for gd-server all in flight at once (`gd sample
#     --concurrency`), for the reference one after another (it serves one caller at a time).
# VS_GD_FLAGS adds gd-server flags (e.g. "--keep_freed_memory=false" for glibc's malloc defaults);
# VS_REF_KEEP_FREED_MEMORY=1 runs the reference with glibc's malloc set as gd-server sets it
# (GLIBC_TUNABLES: mmap threshold 32 MiB, no trimming), to tell that setting from the rest.
# Model loading is outside the timings; the reference gets a warm-up forward, gd-server one
# warm-up request. Prints both times and the ratios (reference / gd-server, >1 = faster here).
# Needs build/bin/{gd-server,gd} and Debian's python3-torch (/usr/bin/python3).
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 REF_DIR [FIXTURE_DIR]" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
REF_DIR=$(cd "$1" && pwd)
FIXTURE_DIR=$(cd "${2:-../shared/fixtures/parity-64}" && pwd)
BIN=${GD_BIN:-build/bin}
THREADS=${VS_THREADS:-2} RESPACING=${VS_RESPACING:-ddim25} SCALE=${VS_SCALE:-1} BATCH=${VS_BATCH:-8}
PY=/usr/bin/python3
[ -f "$REF_DIR/guided_diffusion/script_util.py" ] || { echo "$REF_DIR is not a guided-diffusion checkout" >&2; exit 2; }
for f in model.pt classifier.pt fixture.json; do
  [ -f "$FIXTURE_DIR/$f" ] || { echo "missing $FIXTURE_DIR/$f" >&2; exit 2; }
done
for b in gd-server gd; do
  [ -x "$BIN/$b" ] || { echo "missing $BIN/$b: run scripts/build.sh" >&2; exit 2; }
done
flag() { "$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$FIXTURE_DIR/fixture.json" "$1"; }
MODEL_FLAGS=$(flag model_flags)
CLASSIFIER_FLAGS=$(flag classifier_flags)
WORK=$(mktemp -d)
trap 'kill -KILL "${SERVER_PID:-0}" 2>/dev/null || true; rm -rf "$WORK"' EXIT

echo "settings: guided DDIM $RESPACING, scale $SCALE, batch $BATCH, $THREADS threads, float32, CPU"
echo "reference ($REF_DIR, $(git -C "$REF_DIR" rev-parse --short HEAD 2>/dev/null || echo 'not git')):"
REF_ENV=()
if [ "${VS_REF_KEEP_FREED_MEMORY:-0}" = 1 ]; then
  REF_ENV=(GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=2147483647)
  echo "reference with glibc malloc tuned as gd-server's --keep_freed_memory: ${REF_ENV[0]}"
fi
env "${REF_ENV[@]}" "$PY" scripts/vs_reference.py --ref_dir "$REF_DIR" --model_path "$FIXTURE_DIR/model.pt" \
  --classifier_path "$FIXTURE_DIR/classifier.pt" --model_flags "$MODEL_FLAGS" \
  --classifier_flags "$CLASSIFIER_FLAGS" --timestep_respacing "$RESPACING" \
  --classifier_scale "$SCALE" --batch "$BATCH" --threads "$THREADS" | tee "$WORK/reference.json"

PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN/gd-server" --model_name parity-64 --model_path "$FIXTURE_DIR/model.pt" \
  --model_flags "$MODEL_FLAGS" --classifier_path "$FIXTURE_DIR/classifier.pt" \
  --classifier_flags "$CLASSIFIER_FLAGS" --threads "$THREADS" --max_batch "$BATCH" \
  --host 127.0.0.1 --port "$PORT" --metrics_port 0 ${VS_GD_FLAGS:-} >"$WORK/gd-server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 600); do
  grep -q "serving .* model" "$WORK/gd-server.log" && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/gd-server.log" >&2; exit 1; }
  sleep 0.1
done
# Seconds that one `gd sample` of BATCH images takes, IMAGES_PER_REQUEST at a time.
gd_sample() {
  local per_request=$1 concurrency=$2 start end
  start=$(date +%s.%N)
  "$BIN/gd" sample --server "127.0.0.1:$PORT" --sampler ddim --timestep_respacing "$RESPACING" \
    --classifier_scale "$SCALE" --num_samples "$BATCH" --balanced_labels \
    --images_per_request "$per_request" --concurrency "$concurrency" \
    --npz "$WORK/samples-$per_request.npz" >"$WORK/gd-$per_request.log" 2>&1 \
    || { cat "$WORK/gd-$per_request.log" >&2; exit 1; }
  end=$(date +%s.%N)
  "$PY" -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 2))" "$start" "$end"
}
gd_sample "$BATCH" 1 >/dev/null  # warm-up
rm -rf "$WORK"/samples-*
GD_BATCH=$(gd_sample "$BATCH" 1)
GD_CONCURRENT=$(gd_sample 1 "$BATCH")
kill -TERM "$SERVER_PID"
wait "$SERVER_PID" || true
grep -o "memory: .*" "$WORK/gd-server.log" | head -1
echo "gd-server: {\"batch_s\": $GD_BATCH, \"concurrent_s\": $GD_CONCURRENT}"
"$PY" - "$WORK/reference.json" "$GD_BATCH" "$GD_CONCURRENT" "$BATCH" <<'EOF'
import json, sys
ref = json.load(open(sys.argv[1]))
gd_batch, gd_concurrent, n = float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
print(f"| case | reference s | gd-server s | reference / gd-server |")
print(f"| --- | --: | --: | --: |")
print(f"| one request of {n} images | {ref['batch_s']:.1f} | {gd_batch:.1f} | {ref['batch_s'] / gd_batch:.2f}x |")
print(f"| {n} single-image requests | {ref['sequential_s']:.1f} | {gd_concurrent:.1f} | {ref['sequential_s'] / gd_concurrent:.2f}x |")
EOF
