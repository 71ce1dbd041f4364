#!/usr/bin/env bash
# Installs what is missing, builds, starts gd-server with the bundled Fashion-MNIST model, and
# writes demo.png: one guided sample per class (rows of the grid = the 10 classes), then stops
# the server.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
PORT=${GD_PORT:-50051}
OUT=${1:-demo.png}
build/bin/gd-server --port "$PORT" --host 127.0.0.1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  build/bin/gd health --server "127.0.0.1:$PORT" >/dev/null 2>&1 && break
  sleep 0.5
done
build/bin/gd models --server "127.0.0.1:$PORT"
build/bin/gd sample --server "127.0.0.1:$PORT" --labels 0,1,2,3,4,5,6,7,8,9 \
  --classifier_scale 3 --sampler ddim --timestep_respacing ddim50 --seed 1 --columns 10 \
  --out "$OUT"

