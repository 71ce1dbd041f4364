#!/usr/bin/env bash
# Draws the model card's sample grids from the bundled model through the real service: for each
# classifier scale, 8 samples of each of the 10 classes (one row per class), DDIM 50 steps, the
# same seed at every scale. Then renders the card's figures.
#   scripts/model-card-samples.sh [OUT_DIR]    (default /tmp/gd-model-card)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/gd-model-card}
PORT=${GD_PORT:-50077}
mkdir -p "$OUT"
build/bin/gd-server --port "$PORT" --host 127.0.0.1 --metrics_port 0 --model_dir models/fashion-mnist \
  --max_batch 80 --max_images_per_request 80 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do build/bin/gd health --server "127.0.0.1:$PORT" >/dev/null 2>&1 && break; sleep 0.5; done
LABELS=$(for c in 0 1 2 3 4 5 6 7 8 9; do for _ in 1 2 3 4 5 6 7 8; do printf '%s,' "$c"; done; done)
LABELS=${LABELS%,}
# At the model's own size and without captions (gd sample's defaults scale up and caption), as
# the committed figures were drawn: the card labels the grids itself.
for scale in 0 1 3 10; do
  build/bin/gd sample --server "127.0.0.1:$PORT" --labels "$LABELS" --classifier_scale "$scale" \
    --sampler ddim --timestep_respacing ddim50 --seed 2026 --columns 8 --min_tile_px 0 --captions=false \
    --out "$OUT/scale_$scale.png" \
    --npz "$OUT/scale_$scale.npz"
done
# The README's pictures: a denoising strip (pred_xstart at 10 evenly spaced steps, one row per
# class) and a guided grid (8 samples per class, one row per class, scale 3), both committed.
FIG=models/fashion-mnist/figures
build/bin/gd stream --server "127.0.0.1:$PORT" --labels 0,1,2,3,4,5,6,7,8,9 --classifier_scale 3 \
  --sampler ddim --timestep_respacing ddim50 --seed 7 --strip "$FIG/strip.png" \
  --strip_columns 10 >/dev/null
cp "$OUT/scale_3.png" "$FIG/guided_grid.png"
/usr/bin/python3 scripts/model-card-figures.py --grids "$OUT"
