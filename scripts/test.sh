#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite (ctest).
set -euo pipefail
cd "$(dirname "$0")/.."
# "browser": Chromium, node and npm for the viewer's end-to-end test (tests/viewer).
bash scripts/install-deps.sh browser
# Warnings in the project's own code fail the build here (GD_WERROR).
bash scripts/build.sh -DGD_WERROR=ON
cd build
ctest --output-on-failure -j "${GD_TEST_JOBS:-2}" --timeout 900 "$@"
