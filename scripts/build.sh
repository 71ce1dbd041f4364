#!/usr/bin/env bash
# Configures and builds everything into build/ (binaries in build/bin/). Extra arguments go to
# CMake's configure step, e.g. scripts/build.sh -DGD_WITH_SERVICE=OFF.
set -euo pipefail
cd "$(dirname "$0")/.."
GENERATOR=()
command -v ninja >/dev/null 2>&1 && GENERATOR=(-G Ninja)
if [ ! -f build/CMakeCache.txt ]; then
  cmake -S . -B build "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Release "$@"
elif [ $# -gt 0 ]; then
  cmake -S . -B build "$@"
fi
# Two jobs: LibTorch translation units need ~1.5 GB each and this is a 2-core target machine.
cmake --build build -j "${GD_BUILD_JOBS:-2}"
