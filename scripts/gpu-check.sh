#!/usr/bin/env bash
# GPU check, within 8 minutes: builds core + tests + gd-bench (no gRPC) against the CUDA LibTorch
# of the machine's PyTorch, runs the parity tests on the GPU in fp32 (the fixture's tolerances),
# fp16 and bf16 (looser, see docs/benchmarks.md), then gd-bench on the GPU: the bundled model, and
# the reference's 256x256 architecture with random weights (--random_weights) in bf16/fp16/fp32.
# Writes its logs and bench results to ${OUT:-gpu-check-out}/. Rehearse it on a CPU machine:
#   GPU_CHECK_DEVICE=cpu PYTHON=/usr/bin/python3 GPU_CHECK_SECONDS=3600 BENCH_SECONDS=1 \
#     PARITY_CAP=600 ADM256_CONCURRENCY=1 ADM256_BATCHES=1 ADM256_RESPACING=ddim2 ADM256_CAP=900 \
#     bash scripts/gpu-check.sh
#
#   bash scripts/gpu-check.sh            # on a machine with an NVIDIA GPU and CUDA PyTorch
#
# Besides PyTorch it needs CMake, a C++17 compiler, the -dev packages of Abseil, spdlog,
# nlohmann-json, GoogleTest, libpng, zlib, giflib and libzip (scripts/install-deps.sh installs
# them on Debian; elsewhere put a prefix holding them in CMAKE_PREFIX_PATH) and the parity
# fixtures. On an offline machine, carry the kit that scripts/gpu-kit.sh packs (.gpu-kit/, or
# GPU_KIT=DIR): it is unpacked into /tmp first and provides both.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check-out}
BUILD=${GPU_BUILD_DIR:-build-gpu}
DEADLINE=$((SECONDS + ${GPU_CHECK_SECONDS:-480}))
mkdir -p "$OUT"
left() { echo $((DEADLINE - SECONDS)); }

PYTHON=${PYTHON:-python3}
# The kit of scripts/gpu-kit.sh (dependencies and fixtures for an offline machine), when present.
GPU_KIT=${GPU_KIT:-.gpu-kit}
if [ -d "$GPU_KIT" ]; then
  KIT_ROOT=${GPU_KIT_ROOT:-/tmp/gd-gpu-kit}
  rm -rf "$KIT_ROOT"
  "$PYTHON" scripts/gpu_kit.py unpack "$GPU_KIT" "$KIT_ROOT/prefix" "$KIT_ROOT/fixtures"
  CMAKE_PREFIX_PATH="$KIT_ROOT/prefix/usr${CMAKE_PREFIX_PATH:+;$CMAKE_PREFIX_PATH}"
  export GD_FIXTURES="$KIT_ROOT/fixtures"
  echo "gpu-check: unpacked $GPU_KIT into $KIT_ROOT"
fi
TORCH_PREFIX=$("$PYTHON" -c 'import torch; print(torch.utils.cmake_prefix_path)')
DEVICE=${GPU_CHECK_DEVICE:-cuda}
[ "$DEVICE" = cpu ] || "$PYTHON" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0))' | tee "$OUT/device.txt"
# The kit's libraries' own dependencies (libabsl_base, libfmt ...) are not on the binaries'
# RUNPATH, which covers direct dependencies only.
if [ -n "${KIT_ROOT:-}" ]; then
  export LD_LIBRARY_PATH="$KIT_ROOT/prefix/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
# LibTorch 1.13 has no fp16 convolutions on CPU (the models refuse to load so): the CPU rehearsal
# runs fp32 and bf16 only.
HALF=(fp16 bf16)
[ "$DEVICE" != cpu ] || HALF=(bf16)

# step LOG CAP_S CMD...: runs CMD for at most CAP_S seconds (less if less is left) with its output
# in LOG, prints LOG's last lines, and marks the check failed, saying why, if CMD fails or times out.
status=0
step() {
  local log=$1 cap=$2 limit rc
  shift 2
  limit=$(( $(left) < cap ? $(left) : cap ))
  if [ "$limit" -le 0 ]; then
    echo "gpu-check: no time left for $log"; status=1; return
  fi
  set +e
  timeout "$limit" "$@" > "$log" 2>&1
  rc=$?
  set -e
  tail -n 12 "$log"
  if [ $rc -eq 124 ]; then echo "gpu-check: $log timed out after $limit s"; fi
  if [ $rc -ne 0 ]; then echo "gpu-check: $log failed (exit $rc)"; status=1; fi
}

GENERATOR=()
command -v ninja >/dev/null 2>&1 && GENERATOR=(-G Ninja)
cmake -S . -B "$BUILD" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Release -DGD_WITH_SERVICE=OFF \
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX${CMAKE_PREFIX_PATH:+;$CMAKE_PREFIX_PATH}" 2>&1 | tail -n 5
timeout "$(left)" cmake --build "$BUILD" -j "${GPU_BUILD_JOBS:-$(nproc)}" --target gd_core_tests gd-bench 2>&1 | tail -n 20

for dtype in fp32 "${HALF[@]}"; do
  echo "== parity on $DEVICE, $dtype"
  GD_TEST_DEVICE=$DEVICE GD_TEST_DTYPE=$dtype step "$OUT/parity-$dtype.log" "${PARITY_CAP:-60}" \
    "$BUILD/bin/gd_core_tests" --gtest_filter='ParityTest.*'
done
echo "== gd-bench on $DEVICE"
MODEL_ARGS=(--model_dir models/fashion-mnist)
[ -f models/fashion-mnist/model.json ] || MODEL_ARGS=()
for dtype in fp32 "${HALF[0]}"; do
  step "$OUT/bench-$DEVICE-$dtype.log" 90 "$BUILD/bin/gd-bench" "${MODEL_ARGS[@]}" \
    --device "$DEVICE" --dtype "$dtype" --seconds "${BENCH_SECONDS:-4}" --concurrency 1,8,32 --batches 1,16,64 \
    --max_batch 64 --json "$OUT/bench-$DEVICE-$dtype.json" --markdown "$OUT/bench-$DEVICE-$dtype.md"
done
# The reference README's 256x256 model and classifier (ImageNet, guided), with random weights: the
# speed of the architecture the paper serves. Guided DDIM 10 steps per request.
ADM256_MODEL="--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_scale_shift_norm True"
ADM256_CLASSIFIER="--image_size 256 --classifier_attention_resolutions 32,16,8 --classifier_depth 2 --classifier_width 128 --classifier_pool attention --classifier_resblock_updown True --classifier_use_scale_shift_norm True"
for dtype in "${HALF[@]}" fp32; do
  step "$OUT/bench-adm256-$dtype.log" "${ADM256_CAP:-120}" "$BUILD/bin/gd-bench" --random_weights \
    --model_flags "$ADM256_MODEL" --classifier_flags "$ADM256_CLASSIFIER" --device "$DEVICE" \
    --dtype "$dtype" --seconds "${ADM256_SECONDS:-3}" --concurrency "${ADM256_CONCURRENCY:-1,8,32,128}" \
    --batches "${ADM256_BATCHES:-1,16,64,128,256}" --max_batch 256 --classifier_scale 1 \
    --timestep_respacing "${ADM256_RESPACING:-ddim10}" \
    --json "$OUT/bench-adm256-$dtype.json" --markdown "$OUT/bench-adm256-$dtype.md"
done
echo "gpu-check: $( [ $status -eq 0 ] && echo passed || echo FAILED ) in $SECONDS s; results in $OUT/"
exit $status
