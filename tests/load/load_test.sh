#!/usr/bin/env bash
# Starts gd-server on the bundled model, runs gd-load against it with the given flags, then stops
# the server with SIGTERM and requires a clean exit. Used by ctest (load_short) and for the long
# runs of docs/reliability.md:
#
#   load_test.sh GD_SERVER GD_LOAD REPO_ROOT OUT_DIR [gd-load flags...]
#
# Exits 77 (ctest's skip) when the bundled model is missing; the logs go to OUT_DIR.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 GD_SERVER GD_LOAD REPO_ROOT OUT_DIR [gd-load flags...]" >&2
  exit 2
fi
GD_SERVER=$1 GD_LOAD=$2 REPO_ROOT=$3 OUT_DIR=$4
shift 4
MODEL_DIR=$REPO_ROOT/models/fashion-mnist
[ -f "$MODEL_DIR/model.json" ] || { echo "SKIPPED: no bundled model at $MODEL_DIR"; exit 77; }
mkdir -p "$OUT_DIR"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
GRPC_PORT=$(free_port)
METRICS_PORT=$(free_port)
"$GD_SERVER" --model_dir "$MODEL_DIR" --host 127.0.0.1 --port "$GRPC_PORT" --metrics_host 127.0.0.1 \
  --metrics_port "$METRICS_PORT" --drain_timeout_s 10 >"$OUT_DIR/gd-server.log" 2>&1 &
SERVER_PID=$!
trap 'kill -KILL "$SERVER_PID" 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  grep -q "serving .* model" "$OUT_DIR/gd-server.log" && break
  kill -0 "$SERVER_PID" 2>/dev/null || { echo "FAIL: gd-server exited:" >&2; cat "$OUT_DIR/gd-server.log" >&2; exit 1; }
  sleep 0.1
done

status=0
"$GD_LOAD" --server "127.0.0.1:$GRPC_PORT" --metrics "127.0.0.1:$METRICS_PORT" \
  --json "$OUT_DIR/load.json" "$@" || status=$?

kill -TERM "$SERVER_PID"
server_status=0
wait "$SERVER_PID" || server_status=$?
trap - EXIT
if [ "$server_status" -ne 0 ]; then
  echo "FAIL: gd-server exited $server_status after SIGTERM; its log's end:" >&2
  tail -n 20 "$OUT_DIR/gd-server.log" >&2
  exit 1
fi
# The server logs every call (retries included) once with its status: the counts, for the record.
echo "gd-server request log, by status:"
grep -Eo 'status=[A-Z_]+' "$OUT_DIR/gd-server.log" | sort | uniq -c || true
exit "$status"
