#!/usr/bin/env bash
# GPU check, within 8 minutes: builds core + tests + gd-bench (no gRPC) against the CUDA LibTorch
# of the machine's PyTorch, runs the parity tests on the GPU in fp32 (the fixture's tolerances),
# fp16 and bf16 (looser, see docs/benchmarks.md), then gd-bench on the GPU: the bundled model, and
# the reference's 256x256 architecture with random weights (--random_weights) in bf16/fp16/fp32.
# Writes its logs and bench results to ${OUT:-gpu-check-out}/. Rehearse it on a CPU machine:
#   GPU_CHECK_DEVICE=cpu BENCH_SECONDS=1 ADM256_CONCURRENCY=1 ADM256_BATCHES=1 \
#     ADM256_RESPACING=ddim1 bash scripts/gpu-check.sh
#
#   bash scripts/gpu-check.sh            # on a machine with an NVIDIA GPU and CUDA PyTorch
#
# Besides PyTorch it needs CMake, a C++17 compiler and the -dev packages of Abseil, spdlog,
# nlohmann-json, GoogleTest, libpng and zlib (scripts/install-deps.sh installs them on Debian;
# elsewhere put a prefix holding them in CMAKE_PREFIX_PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check-out}
BUILD=${GPU_BUILD_DIR:-build-gpu}
DEADLINE=$((SECONDS + ${GPU_CHECK_SECONDS:-480}))
mkdir -p "$OUT"
left() { echo $((DEADLINE - SECONDS)); }

PYTHON=${PYTHON:-python3}
TORCH_PREFIX=$("$PYTHON" -c 'import torch; print(torch.utils.cmake_prefix_path)')
DEVICE=${GPU_CHECK_DEVICE:-cuda}
[ "$DEVICE" = cpu ] || "$PYTHON" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0))' | tee "$OUT/device.txt"

GENERATOR=()
command -v ninja >/dev/null 2>&1 && GENERATOR=(-G Ninja)
cmake -S . -B "$BUILD" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Release -DGD_WITH_SERVICE=OFF \
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX${CMAKE_PREFIX_PATH:+;$CMAKE_PREFIX_PATH}" 2>&1 | tail -n 5
timeout "$(left)" cmake --build "$BUILD" -j "$(nproc)" --target gd_core_tests gd-bench 2>&1 | tail -n 20

status=0
for dtype in fp32 fp16 bf16; do
  echo "== parity on $DEVICE, $dtype"
  GD_TEST_DEVICE=$DEVICE GD_TEST_DTYPE=$dtype timeout "$(( $(left) > 60 ? 60 : $(left) ))" \
    "$BUILD/bin/gd_core_tests" --gtest_filter='ParityTest.*' \
    2>&1 | tee "$OUT/parity-$dtype.log" | tail -n 3 || status=1
done
echo "== gd-bench on $DEVICE"
MODEL_ARGS=(--model_dir models/fashion-mnist)
[ -f models/fashion-mnist/model.json ] || MODEL_ARGS=()
for dtype in fp32 fp16; do
  timeout "$(( $(left) > 90 ? 90 : $(left) ))" "$BUILD/bin/gd-bench" "${MODEL_ARGS[@]}" \
    --device "$DEVICE" --dtype "$dtype" --seconds "${BENCH_SECONDS:-4}" --concurrency 1,8,32 --batches 1,16,64 \
    --max_batch 64 --json "$OUT/bench-$DEVICE-$dtype.json" --markdown "$OUT/bench-$DEVICE-$dtype.md" \
    2>&1 | tee "$OUT/bench-$DEVICE-$dtype.log" || status=1
done
# The reference README's 256x256 model and classifier (ImageNet, guided), with random weights: the
# speed of the architecture the paper serves. Guided DDIM 10 steps per request.
ADM256_MODEL="--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_scale_shift_norm True"
ADM256_CLASSIFIER="--image_size 256 --classifier_attention_resolutions 32,16,8 --classifier_depth 2 --classifier_width 128 --classifier_pool attention --classifier_resblock_updown True --classifier_use_scale_shift_norm True"
for dtype in bf16 fp16 fp32; do
  timeout "$(( $(left) > 120 ? 120 : $(left) ))" "$BUILD/bin/gd-bench" --random_weights \
    --model_flags "$ADM256_MODEL" --classifier_flags "$ADM256_CLASSIFIER" --device "$DEVICE" \
    --dtype "$dtype" --seconds "${ADM256_SECONDS:-3}" --concurrency "${ADM256_CONCURRENCY:-1,8,32,128}" \
    --batches "${ADM256_BATCHES:-1,16,64,128,256}" --max_batch 256 --classifier_scale 1 \
    --timestep_respacing "${ADM256_RESPACING:-ddim10}" \
    --json "$OUT/bench-adm256-$dtype.json" --markdown "$OUT/bench-adm256-$dtype.md" \
    2>&1 | tee "$OUT/bench-adm256-$dtype.log" || status=1
done
echo "gpu-check: $( [ $status -eq 0 ] && echo passed || echo FAILED ) in $SECONDS s; results in $OUT/"
exit $status
