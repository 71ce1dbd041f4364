#!/usr/bin/env bash
# Installs the Debian 12 packages this project builds, tests and runs with.
# Idempotent: packages already present are skipped. Used by README, .ci/run and the CPU Dockerfile.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git curl openssl
  libtorch-dev libopenblas0-openmp
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libspdlog-dev libfmt-dev nlohmann-json3-dev
  libcpp-httplib-dev
  libgtest-dev libgmock-dev
  libpng-dev zlib1g-dev libzip-dev libgif-dev
  dataset-fashion-mnist
  python3-torch python3-grpcio python3-grpc-tools python3-numpy python3-matplotlib
)
# Extra groups, asked for by name: "browser" (viewer end-to-end test), "tls" (openssl for TLS tests),
# "fuzz" (scripts/fuzz.sh: clang with libFuzzer and the sanitizer runtimes, llvm-symbolizer for
# readable crash stacks), "image" (scripts/image-check.sh: podman and buildah to build and run the
# CPU image, mmdebstrap to bootstrap its Debian base where no registry is reachable).
for extra in "$@"; do
  case "$extra" in
    # npm only where no npm exists yet: a nodejs from elsewhere (NodeSource) ships its own and
    # conflicts with Debian's npm package.
    browser) PACKAGES+=(chromium nodejs); command -v npm >/dev/null || PACKAGES+=(npm) ;;
    tls) PACKAGES+=(openssl) ;;
    fuzz) PACKAGES+=(clang libclang-rt-14-dev llvm) ;;
    image) PACKAGES+=(podman buildah mmdebstrap uidmap) ;;
    *) echo "install-deps: unknown group '$extra' (known: browser, tls, fuzz, image)" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
