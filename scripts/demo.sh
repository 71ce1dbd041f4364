#!/usr/bin/env bash
# Installs what is missing, builds the two programs the demo runs (gd-server and gd: not the
# tests, gd-train or gd-bench), starts gd-server with the bundled Fashion-MNIST model, and writes
# demo.png: one guided sample per class, scaled up with each class's name under it, then stops the
# server. scripts/build.sh (or scripts/test.sh) builds the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
if [ ! -f build/CMakeCache.txt ]; then
  GENERATOR=()
  command -v ninja >/dev/null 2>&1 && GENERATOR=(-G Ninja)
  cmake -S . -B build "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Release
fi
# Two jobs, as scripts/build.sh: LibTorch translation units need ~1.5 GB each.
cmake --build build -j "${GD_BUILD_JOBS:-2}" --target gd-server gd
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
