#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ with clang, AddressSanitizer and UBSan in build-fuzz/, then
# runs each for SECONDS (default 30) from its seeds (fuzz/corpus/NAME/) and what earlier runs found
# (build-fuzz/corpus/NAME/). Fails when any target crashes, leaks, times out on an input or breaks
# one of its checks; the input is kept as build-fuzz/crashes/NAME-crash-<sha1> and the log as
# build-fuzz/logs/NAME.log. Reproduce one with: build-fuzz/bin/fuzz_NAME build-fuzz/crashes/FILE
#
#   scripts/fuzz.sh          # every target, 30 s each
#   scripts/fuzz.sh 600 npz  # only npz, for 10 minutes
#
# Needs clang and libclang-rt-14-dev (scripts/install-deps.sh fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
shift || true
only=("$@")
build=build-fuzz

if [ ! -f "$build/CMakeCache.txt" ]; then
  generator=()
  command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
  # Tests are not built here: only the fuzz targets and what they link.
  CC=clang CXX=clang++ cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DGD_FUZZ=ON -DGD_BUILD_TESTS=OFF
fi
cmake --build "$build" -j "${GD_BUILD_JOBS:-2}" --target gd_fuzzers

mkdir -p "$build/crashes" "$build/logs"
# Leaks in libraries we link but cannot fix, each with its reason.
export LSAN_OPTIONS="suppressions=$PWD/fuzz/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
failed=()
# fuzzers.txt: "name binary seeds dictionary|- [libFuzzer options]" per target (fuzz/CMakeLists.txt).
while read -r name binary seeds dictionary options; do
  if [ ${#only[@]} -gt 0 ] && [[ ! " ${only[*]} " == *" $name "* ]]; then continue; fi
  corpus="$build/corpus/$name"
  mkdir -p "$corpus"
  args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1
        -artifact_prefix="$build/crashes/$name-")
  [ "$dictionary" != "-" ] && args+=(-dict="$dictionary")
  # shellcheck disable=SC2206  # options are whitespace-separated flags without spaces inside
  [ -n "${options:-}" ] && args+=($options)
  log="$build/logs/$name.log"
  if "$binary" "${args[@]}" "$corpus" "$seeds" >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    echo "fuzz: $name: ${runs:-?} inputs in ${seconds} s, no crash"
  else
    failed+=("$name")
    echo "fuzz: $name FAILED (log: $log); its end:" >&2
    tail -n 40 "$log" >&2
  fi
done <"$build/fuzzers.txt"

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]} (inputs in $build/crashes/)" >&2
  exit 1
fi
