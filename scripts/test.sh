#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite (ctest).
set -euo pipefail
cd "$(dirname "$0")/.."
# "browser": Chromium, node and npm for the viewer's end-to-end test (tests/viewer).
bash scripts/install-deps.sh browser
bash scripts/build.sh
cd build
ctest --output-on-failure -j "${GD_TEST_JOBS:-2}" --timeout 900 "$@"
