#!/usr/bin/env bash
# Trains the bundled default model (models/fashion-mnist): an unconditional diffusion model and a
# noisy classifier on Fashion-MNIST, with gd-train, resumably. Run it again to continue where it
# stopped (checkpoints in runs/, newest resumed). Niced, so it can run beside other work.
#
#   scripts/train-bundled-model.sh diffusion [STEPS]    # default 20000 steps in total
#   scripts/train-bundled-model.sh classifier [STEPS]   # default 4000 steps in total
#   scripts/train-bundled-model.sh export               # copy the newest weights to models/
#   scripts/train-bundled-model.sh evaluator [STEPS]    # gd-eval's clean classifier, 4000 steps
#   scripts/train-bundled-model.sh export-evaluator     # copy it and its test accuracy to models/
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${GD_BIN:-build/bin}
DATA=${GD_DATA:-/usr/share/datasets/fashion-mnist}
RUNS=${GD_RUNS:-runs}
THREADS=${GD_THREADS:-2}
# OpenMP threads that sleep instead of spinning when the CPU is shared.
export OMP_WAIT_POLICY=passive

# The model and classifier descriptions (the reference's flags plus our extensions).
MODEL_FLAGS="--image_size 28 --in_channels 1 --num_channels 32 --channel_mult 1,2,2 \
--num_res_blocks 2 --attention_resolutions 7 --num_head_channels 32 --learn_sigma True \
--noise_schedule cosine --diffusion_steps 1000 --use_scale_shift_norm True --resblock_updown True"
CLASSIFIER_FLAGS="--image_size 28 --in_channels 1 --num_classes 10 --classifier_width 32 \
--classifier_depth 2 --classifier_channel_mult 1,2,2 --classifier_attention_resolutions 7 \
--classifier_num_head_channels 32 --classifier_pool attention \
--classifier_use_scale_shift_norm True --classifier_resblock_updown True \
--noise_schedule cosine --diffusion_steps 1000"
# What the server uses when a request does not say (docs/quality.md: DDPM 250 steps is the
# best sampler of this model; scale 10 the best FID in every sweep).
SERVE_RESPACING=250
DEFAULT_SCALE=10
# gd-eval's evaluator: a plain CNN classifier of clean images (eval/evaluator.h).
EVALUATOR_FLAGS="--image_size 28 --in_channels 1 --num_classes 10 --evaluator_channels 32,64,128 \
--evaluator_feature_channels 256 --evaluator_spatial_stage 1 --evaluator_spatial_channels 7 \
--evaluator_dropout 0.3"

case "${1:-}" in
  diffusion)
    steps=${2:-20000}
    # shellcheck disable=SC2086
    exec nice -n 19 "$BIN/gd-train" diffusion --data "$DATA" --out "$RUNS/fashion-mnist-diffusion" \
      $MODEL_FLAGS --batch_size 32 --lr 2e-4 --ema_rate 0.999 --max_steps "$steps" \
      --log_interval 50 --save_interval 200 --keep_checkpoints 3 --threads "$THREADS" \
      --seed 1 --resume_checkpoint latest
    ;;
  classifier)
    steps=${2:-4000}
    # shellcheck disable=SC2086
    exec nice -n 19 "$BIN/gd-train" classifier --data "$DATA" \
      --out "$RUNS/fashion-mnist-classifier" $CLASSIFIER_FLAGS --batch_size 64 --lr 3e-4 \
      --weight_decay 0.05 --iterations "$steps" --anneal_lr True --eval_interval 100 \
      --eval_samples 512 --log_interval 50 --save_interval 500 --keep_checkpoints 3 \
      --threads "$THREADS" --seed 2 --resume_checkpoint latest
    ;;
  export)
    # The newest weights of each run folder there is; a part whose folder is absent (trained in
    # another checkout) keeps the shipped file. model.json is then written whole, the steps read
    # from the weights' own metadata (gd-train records "step"), with the serving defaults that
    # docs/quality.md's sweeps chose.
    out=models/fashion-mnist
    mkdir -p "$out"
    newest() { ls -1 "$@" 2>/dev/null | sort | tail -n 1 || true; }
    diffusion=$(newest "$RUNS"/fashion-mnist-diffusion/ema_0.999_*.safetensors)
    classifier=$(newest "$RUNS"/fashion-mnist-classifier/model_*.safetensors)
    if [ -z "$diffusion$classifier" ]; then
      echo "export: no checkpoints in $RUNS/fashion-mnist-diffusion or -classifier" >&2
      exit 1
    fi
    if [ -n "$diffusion" ]; then cp "$diffusion" "$out/model.safetensors"; echo "exported $diffusion"; fi
    if [ -n "$classifier" ]; then cp "$classifier" "$out/classifier.safetensors"; echo "exported $classifier"; fi
    step_of() {
      python3 -c 'import json, struct, sys
f = open(sys.argv[1], "rb")
print(json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))["__metadata__"]["step"])' "$1"
    }
    squeeze() { echo "$1" | tr -s ' '; }
    cat > "$out/model.json" <<JSON
{
  "name": "fashion-mnist",
  "description": "Unconditional 28x28 Fashion-MNIST diffusion model (EMA 0.999, step $(step_of "$out/model.safetensors")) and noisy classifier (step $(step_of "$out/classifier.safetensors")), trained by gd-train; see MODEL_CARD.md",
  "model_flags": "$(squeeze "$MODEL_FLAGS") --timestep_respacing $SERVE_RESPACING",
  "model_path": "model.safetensors",
  "classifier_flags": "$(squeeze "$CLASSIFIER_FLAGS")",
  "classifier_path": "classifier.safetensors",
  "default_classifier_scale": $DEFAULT_SCALE,
  "class_names": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                  "Sneaker", "Bag", "Ankle boot"]
}
JSON
    echo "wrote $out/model.json"
    ;;
  evaluator)
    steps=${2:-4000}
    # shellcheck disable=SC2086
    exec nice -n 19 "$BIN/gd-train" evaluator --data "$DATA" \
      --out "$RUNS/fashion-mnist-evaluator" $EVALUATOR_FLAGS --batch_size 128 --lr 2e-3 \
      --weight_decay 0.05 --iterations "$steps" --anneal_lr True --eval_interval 500 \
      --eval_samples 2000 --log_interval 100 --save_interval 500 --keep_checkpoints 2 \
      --threads "$THREADS" --seed 3 --resume_checkpoint latest
    ;;
  export-evaluator)
    # gd-train evaluator wrote these at its end, with the whole test set's accuracy.
    cp "$RUNS/fashion-mnist-evaluator/evaluator.safetensors" models/fashion-mnist/
    cp "$RUNS/fashion-mnist-evaluator/evaluator.json" models/fashion-mnist/
    grep test_accuracy models/fashion-mnist/evaluator.json
    ;;
  *)
    echo "usage: $0 diffusion [STEPS] | classifier [STEPS] | export | evaluator [STEPS] |" \
      "export-evaluator" >&2
    exit 2
    ;;
esac
