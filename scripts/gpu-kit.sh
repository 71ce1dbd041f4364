#!/usr/bin/env bash
# Packs .gpu-kit/ (ignored by git) for scripts/gpu-check.sh on an offline GPU machine that has
# CUDA PyTorch, CMake and a compiler but none of the build's other C++ dependencies: the Debian 12
# packages of Abseil, spdlog, fmt, nlohmann-json, GoogleTest, libpng, zlib, giflib and libzip
# (.deb files, from this Debian machine's package archive) and the parity fixtures (byte-planed,
# xz; see scripts/gpu_kit.py). Prints the kit's size and the checkout's, whose sum is what travels.
#
#   bash scripts/gpu-kit.sh [FIXTURES_DIR]      # default ../shared/fixtures
#
# On the GPU machine, gpu-check.sh unpacks it (GPU_KIT, default .gpu-kit) into /tmp when present.
# The unpacked libraries need a glibc at least Debian 12's (2.36) and a libstdc++ at least GCC
# 12's there.
set -euo pipefail
cd "$(dirname "$0")/.."
FIXTURES=${1:-../shared/fixtures}
KIT=.gpu-kit
PACKAGES=(libabsl-dev libabsl20220623 libspdlog-dev libspdlog1.10 libfmt-dev libfmt9
  nlohmann-json3-dev libgtest-dev libgmock-dev libpng-dev libpng16-16 zlib1g-dev zlib1g
  libgif-dev libgif7 libzip-dev libzip4)

[ -d "$FIXTURES/parity-64" ] || { echo "gpu-kit: no $FIXTURES/parity-64" >&2; exit 1; }
rm -rf "$KIT" && mkdir -p "$KIT/debs"
(cd "$KIT/debs" && apt-get download "${PACKAGES[@]}" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
[ "$(ls "$KIT"/debs/*.deb | wc -l)" -eq "${#PACKAGES[@]}" ] || { echo "gpu-kit: a package did not download" >&2; exit 1; }
python3 scripts/gpu_kit.py pack-fixtures "$FIXTURES" "$KIT"

kit_mib=$(du -sm "$KIT" | cut -f1)
tree_mib=$(git ls-files -z | xargs -0 stat -c %s | awk '{s += $1} END {printf "%d", s / 1048576 + 1}')
echo "gpu-kit: $KIT is $kit_mib MiB; the checkout's tracked files $tree_mib MiB; together $((kit_mib + tree_mib)) MiB"
