#!/usr/bin/env bash
# End-to-end test of `gd view`: starts the real gd-server and `gd view`, then drives Debian's
# headless Chromium with playwright-core (viewer.spec.mjs): a sampling run with intermediate
# frames and a final grid, side by side scales, a DPM-Solver++ run when the server offers it, a
# server error, and a cancelled run that gd-server's /metrics counts as CANCELLED. Screenshots go
# to OUT_DIR.
#
# usage: viewer_e2e_test.sh GD_SERVER GD REPO_ROOT NODE_DIR OUT_DIR FIXTURES_DIR
#
# The model: REPO_ROOT/models/fashion-mnist when it exists (the bundled model), else the parity
# fixture FIXTURES_DIR/parity-64 (random weights: the pictures are noise, the plumbing is real).
# Exits 77 (ctest's SKIP_RETURN_CODE) with the reason when Chromium, node or playwright-core is
# missing, or when there is no model to serve. playwright-core is installed into NODE_DIR (inside
# the build tree, never the repository) on the first run, when npm can reach its registry;
# GD_PLAYWRIGHT_CORE overrides the package spec, GD_CHROMIUM the browser.
set -euo pipefail

if [ $# -ne 6 ]; then
  echo "usage: $0 GD_SERVER GD REPO_ROOT NODE_DIR OUT_DIR FIXTURES_DIR" >&2
  exit 2
fi
GD_SERVER=$1 GD=$2 REPO_ROOT=$3 NODE_DIR=$4 OUT_DIR=$5 FIXTURES_DIR=$6
CHROMIUM=${GD_CHROMIUM:-/usr/bin/chromium}
PLAYWRIGHT_CORE=${GD_PLAYWRIGHT_CORE:-playwright-core@1.61.1}  # the last release for node 18 (Debian 12)
SKIP=77

skip() {
  echo "SKIPPED: $*"
  exit "$SKIP"
}

[ -x "$CHROMIUM" ] || skip "no Chromium at $CHROMIUM (apt-get install chromium, or bash scripts/install-deps.sh browser)"
command -v node >/dev/null || skip "no node (apt-get install nodejs npm, or bash scripts/install-deps.sh browser)"
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)' ||
  skip "node $(node --version) is older than 18, which playwright-core needs"
for binary in "$GD_SERVER" "$GD"; do
  [ -x "$binary" ] || { echo "FAIL: $binary is not built" >&2; exit 1; }
done
if [ ! -f "$NODE_DIR/node_modules/playwright-core/package.json" ]; then
  command -v npm >/dev/null || skip "no npm to install playwright-core (bash scripts/install-deps.sh browser)"
  mkdir -p "$NODE_DIR"
  echo "installing $PLAYWRIGHT_CORE into $NODE_DIR"
  # playwright-core downloads no browser; it drives the Chromium above.
  if ! timeout 300 npm install --prefix "$NODE_DIR" --no-audit --no-fund --no-save \
      --loglevel=error "$PLAYWRIGHT_CORE"; then
    skip "npm could not install $PLAYWRIGHT_CORE (no access to the npm registry?)"
  fi
fi

mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/*.png "$OUT_DIR"/*.log

# ---- The model ----
MODEL_ARGS=()
if [ -f "$REPO_ROOT/models/fashion-mnist/model.json" ]; then
  MODEL_ARGS=(--model_dir "$REPO_ROOT/models/fashion-mnist")
  STEPS=ddim20 LONG_STEPS=1000
  # The scale the page must start at: model.json's recommendation, as GetModel passes it on.
  RECOMMENDED_SCALE=$(node -e 'const m = require(require("path").resolve(process.argv[1]));
                           console.log(m.default_classifier_scale ?? "none")' \
                        "$REPO_ROOT/models/fashion-mnist/model.json")
elif [ -f "$FIXTURES_DIR/parity-64/fixture.json" ]; then
  FIXTURE=$FIXTURES_DIR/parity-64
  flag() { node -e 'console.log(require(process.argv[1])[process.argv[2]])' "$FIXTURE/fixture.json" "$1"; }
  MODEL_ARGS=(--model_name parity-64 --model_path "$FIXTURE/model.pt" --model_flags "$(flag model_flags)"
              --classifier_path "$FIXTURE/classifier.pt" --classifier_flags "$(flag classifier_flags)")
  STEPS=ddim10 LONG_STEPS=1000 RECOMMENDED_SCALE=none
else
  skip "no model: neither $REPO_ROOT/models/fashion-mnist nor $FIXTURES_DIR/parity-64"
fi
echo "model: ${MODEL_ARGS[*]:0:2}"

free_port() {
  node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })'
}

# Stops what this test started: SIGTERM, then SIGKILL for whatever is still running 10 s later (a
# process that does not stop must not hang the test).
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "WARNING: process $pid ($(ps -o args= -p "$pid" | cut -c1-60)) ignored SIGTERM for 10 s: killed" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

# Waits up to $2 seconds for the file $1 to contain the pattern $3; prints the first match.
wait_for_line() {
  local file=$1 seconds=$2 pattern=$3
  for _ in $(seq $((seconds * 10))); do
    if grep -Eo "$pattern" "$file" 2>/dev/null | head -1 | grep .; then return 0; fi
    sleep 0.1
  done
  echo "FAIL: \"$pattern\" did not appear in $file within ${seconds} s:" >&2
  cat "$file" >&2
  return 1
}

# ---- gd-server ----
METRICS_PORT=$(free_port)
"$GD_SERVER" --host 127.0.0.1 --port 0 --metrics_host 127.0.0.1 --metrics_port "$METRICS_PORT" \
  --threads 2 --drain_timeout_s 2 --max_steps 1000 "${MODEL_ARGS[@]}" >"$OUT_DIR/gd-server.log" 2>&1 &
SERVER_PID=$!
PIDS+=("$SERVER_PID")
GRPC_PORT=$(wait_for_line "$OUT_DIR/gd-server.log" 60 'listening on [0-9.]+:[0-9]+' | grep -Eo '[0-9]+$')
for _ in $(seq 300); do
  "$GD" health --server "127.0.0.1:$GRPC_PORT" >/dev/null 2>&1 && break
  sleep 0.5
done
"$GD" health --server "127.0.0.1:$GRPC_PORT"

# ---- gd view ----
"$GD" view --server "127.0.0.1:$GRPC_PORT" --listen 127.0.0.1:0 >"$OUT_DIR/gd-view.log" 2>&1 &
VIEW_PID=$!
PIDS+=("$VIEW_PID")
VIEW_URL=$(wait_for_line "$OUT_DIR/gd-view.log" 30 'http://127\.0\.0\.1:[0-9]+/')
echo "gd view at $VIEW_URL, gd-server at 127.0.0.1:$GRPC_PORT (metrics :$METRICS_PORT)"

# ---- The browser ----
VIEW_URL=$VIEW_URL METRICS_URL="http://127.0.0.1:$METRICS_PORT/metrics" OUT_DIR=$OUT_DIR \
  NODE_DIR=$NODE_DIR CHROMIUM=$CHROMIUM STEPS=$STEPS LONG_STEPS=$LONG_STEPS \
  RECOMMENDED_SCALE=$RECOMMENDED_SCALE node "$(dirname "$0")/viewer.spec.mjs"

# gd view stops cleanly on SIGTERM.
kill -TERM "$VIEW_PID"
wait "$VIEW_PID"
PIDS=("$SERVER_PID")
echo "gd view log:"
cat "$OUT_DIR/gd-view.log"
echo "PASS (screenshots in $OUT_DIR)"
