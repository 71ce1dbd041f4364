#!/usr/bin/env bash
# The test suites under g++'s sanitizers, each in its own build directory:
#
#   scripts/sanitizers.sh asan   # AddressSanitizer + UBSan: core and server tests (build-asan/)
#   scripts/sanitizers.sh tsan   # ThreadSanitizer: the engine and server tests (build-tsan/)
#   scripts/sanitizers.sh        # both
#
# Extra arguments after the mode go to ctest (e.g. -R EngineLifecycle). LibTorch and gRPC are
# linked as Debian ships them, uninstrumented: ASan still sees every heap access our code makes,
# TSan every synchronisation our code does (so our own locks are std::mutex, not absl::Mutex),
# and reports about memory those libraries synchronise themselves are suppressed by
# scripts/tsan.supp, each with its reason; docs/reliability.md has the last runs' results. Each
# is a second full build of the project, and instrumented runs are slower than the normal suite,
# which is why CI runs the normal suite only.
set -euo pipefail
cd "$(dirname "$0")/.."
modes=("${1:-asan}")
[ $# -eq 0 ] && modes=(asan tsan)
shift || true

generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
run() {
  local mode=$1 dir=$2 sanitize=$3 targets=$4 tests=$5
  shift 5
  if [ ! -f "$dir/CMakeCache.txt" ]; then
    # -O1 with line tables only: sanitizer reports keep file:line stacks, and the LibTorch-heavy
    # translation units compile about twice as fast as at -O2 -g on a 2-core machine.
    cmake -S . -B "$dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" -DGD_SANITIZE="$sanitize"
  fi
  # shellcheck disable=SC2086  # targets are whitespace-separated names
  cmake --build "$dir" -j "${GD_BUILD_JOBS:-2}" --target $targets
  echo "sanitizers: $mode: ctest -R '$tests'"
  (cd "$dir" && ctest --output-on-failure -j 1 --timeout 1800 -R "$tests" "$@")
}

for mode in "${modes[@]}"; do
  case "$mode" in
    asan)
      export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
      export LSAN_OPTIONS="suppressions=$PWD/fuzz/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
      export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
      run asan build-asan address,undefined "gd_core_tests gd_server_tests gd-server gd gd-train" \
        '^(Engine|Diffusion|Dpm|Noise|CounterNoise|Formats|Npy|Npz|Png|Gif|Checkpoint|TorchCheckpoint|LoadStateDict|Respacing|ReferenceFlags|ServerTest|Security)' "$@"
      ;;
    tsan)
      export TSAN_OPTIONS="suppressions=$PWD/scripts/tsan.supp:halt_on_error=1:second_deadlock_stack=1"
      run tsan build-tsan thread "gd_core_tests gd_server_tests gd-server gd gd-train" \
        '^(EngineTest|EngineLifecycle|ServerTest|Security)' "$@"
      ;;
    *) echo "usage: $0 [asan|tsan] [ctest args...]" >&2; exit 2 ;;
  esac
done
