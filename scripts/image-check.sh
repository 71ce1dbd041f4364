#!/usr/bin/env bash
# The CPU image, built and run for real:
#
#   scripts/image-check.sh                       # the engine this machine has
#   IMAGE_ENGINE=buildah scripts/image-check.sh  # or docker, podman
#
# 1. builds the image from Dockerfile (tag gd-server:check-cpu) with docker, podman or buildah;
# 2. where debian:12 / debian:12-slim cannot be pulled (no registry access), bootstraps them with
#    mmdebstrap from Debian's own archive and imports them under those names first;
# 3. runs gd-server in it as the image's non-root user, waits for health from the host
#    (build/bin/gd health), samples 4 images from the host (build/bin/gd sample), sends SIGTERM
#    and requires exit code 0 within the drain time;
# 4. prints the image's size and each phase's time. Logs and the sampled picture go to
#    image-check-out/.
#
# Engines: docker or podman when their `run` works here; otherwise buildah with chroot
# isolation (`buildah bud --isolation chroot`, `buildah run --isolation chroot`), which needs no
# cgroups or OCI runtime: what works in nested sandboxes, where podman's runtime cannot set
# rlimits or cgroups (docs/deploy.md). Not part of .ci/run: the image build compiles gd-server
# and gd from scratch (16 minutes on 2 cores, docs/deploy.md); IMAGE_NO_BUILD=1 reruns the checks on
# the image built before. Needs root for podman/buildah, and build/bin/gd on the host
# (scripts/build.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=image-check-out
TAG=${IMAGE_TAG:-gd-server:check-cpu}
DRAIN_S=${IMAGE_DRAIN_S:-30}
GD=build/bin/gd
mkdir -p "$OUT"
[ -x "$GD" ] || { echo "image-check: $GD is missing: run scripts/build.sh first" >&2; exit 2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }'; }

# ---- the engine ---------------------------------------------------------------------------
pick_engine() {
  if [ -n "${IMAGE_ENGINE:-}" ]; then echo "$IMAGE_ENGINE"; return; fi
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then echo docker; return; fi
  if command -v podman >/dev/null && podman info >/dev/null 2>&1; then echo podman; return; fi
  if command -v buildah >/dev/null; then echo buildah; return; fi
  echo "image-check: no container engine: install docker, or podman and buildah" \
    "(apt-get install podman buildah mmdebstrap)" >&2
  exit 2
}
ENGINE=$(pick_engine)
image_exists() {
  case "$ENGINE" in
    docker) docker image inspect "$1" >/dev/null 2>&1 ;;
    *) buildah inspect --type image "$1" >/dev/null 2>&1 ;;
  esac
}

# ---- base images ----------------------------------------------------------------------------
MIRRORS=("deb http://deb.debian.org/debian bookworm main"
         "deb http://deb.debian.org/debian bookworm-updates main"
         "deb http://deb.debian.org/debian-security bookworm-security main")
# debian:12-slim leaves out documentation and translations, also for packages installed later.
SLIM_OPTS=(--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*'
           --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*'
           --dpkgopt='path-exclude=/usr/share/info/*')
import_tar() {  # TAR NAME
  case "$ENGINE" in
    docker) docker import "$1" "$2" >/dev/null ;;
    podman) podman import -q "$1" "$2" >/dev/null ;;
    buildah)
      local c
      c=$(buildah from scratch)
      buildah add -q "$c" "$1" / >/dev/null
      buildah commit -q "$c" "$2" >/dev/null
      buildah rm "$c" >/dev/null ;;
  esac
}
ensure_base() {  # NAME [mmdebstrap options]
  local name=$1 full="docker.io/library/$1"
  shift
  image_exists "$full" && return
  if [ "$ENGINE" = docker ] && timeout 120 docker pull -q "$name" >/dev/null 2>&1; then return; fi
  if [ "$ENGINE" != docker ] && timeout 120 "$ENGINE" pull -q "$full" >/dev/null 2>&1; then return; fi
  command -v mmdebstrap >/dev/null || { echo "image-check: cannot pull $name and no mmdebstrap" >&2; exit 2; }
  echo "image-check: $name cannot be pulled here: bootstrapping it with mmdebstrap"
  local tar
  tar=$(mktemp --suffix=.tar)
  mmdebstrap --quiet --variant=minbase "$@" bookworm "$tar" "${MIRRORS[@]}"
  import_tar "$tar" "$full"
  rm -f "$tar"
}
start=$(now)
ensure_base debian:12
ensure_base debian:12-slim "${SLIM_OPTS[@]}"
BASE_S=$(since "$start")
# podman and docker answer `info` even where their OCI runtime cannot start a container (nested
# sandboxes: no cgroup controllers, no raising of rlimits); buildah's chroot isolation needs none.
if [ -z "${IMAGE_ENGINE:-}" ] && [ "$ENGINE" != buildah ] &&
   ! "$ENGINE" run --rm docker.io/library/debian:12 true >"$OUT/engine-probe.log" 2>&1; then
  echo "image-check: $ENGINE cannot run containers here ($(tail -n 1 "$OUT/engine-probe.log")):" \
    "using buildah with chroot isolation"
  command -v buildah >/dev/null || { echo "image-check: buildah is not installed" >&2; exit 2; }
  ENGINE=buildah
fi

# ---- build -----------------------------------------------------------------------------------
start=$(now)
if [ "${IMAGE_NO_BUILD:-0}" = 1 ] && image_exists "$TAG"; then
  echo "image-check: IMAGE_NO_BUILD=1: running the $TAG built before"
  BUILD_S="(not rebuilt)"
else
  echo "image-check: building $TAG with $ENGINE (log: $OUT/build.log)"
  case "$ENGINE" in
    docker) docker build -t "$TAG" . >"$OUT/build.log" 2>&1 ;;
    # Docker's image format: the OCI format has no HEALTHCHECK and buildah would drop it.
    podman) podman build --format docker --pull=never -t "$TAG" . >"$OUT/build.log" 2>&1 ;;
    buildah) buildah bud --format docker --isolation chroot --layers --pull-never -t "$TAG" . \
               >"$OUT/build.log" 2>&1 ;;
  esac || { tail -n 30 "$OUT/build.log" >&2; exit 1; }
  BUILD_S="$(since "$start") s"
fi
case "$ENGINE" in
  docker) BYTES=$(docker image inspect -f '{{.Size}}' "$TAG") ;;
  *) BYTES=$(podman image inspect -f '{{.Size}}' "$TAG" 2>/dev/null || true) ;;  # shared storage
esac
if [ -n "$BYTES" ]; then
  SIZE=$(awk -v b="$BYTES" 'BEGIN { printf "%.0f MB (%d bytes, uncompressed)", b / 1e6, b }')
else
  SIZE=$(buildah images --noheading --format '{{.Size}}' "$TAG")
fi

case "$ENGINE" in
  docker) HEALTHCHECK=$(docker image inspect -f '{{.Config.Healthcheck.Test}}' "$TAG") ;;
  *) HEALTHCHECK=$(buildah inspect --type image -f '{{.Docker.Config.Healthcheck.Test}}' "$TAG") ;;
esac
[[ "$HEALTHCHECK" == *"gd health"* ]] ||
  { echo "image-check: the image lost its HEALTHCHECK (got \"$HEALTHCHECK\")" >&2; exit 1; }

# ---- run ---------------------------------------------------------------------------------
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
CONTAINER=""
RUN_PID=""
cleanup() {
  [ -n "$RUN_PID" ] && kill -KILL "$RUN_PID" 2>/dev/null || true
  case "$ENGINE" in
    docker|podman) [ -n "$CONTAINER" ] && "$ENGINE" rm -f "$CONTAINER" >/dev/null 2>&1 || true ;;
    buildah) [ -n "$CONTAINER" ] && buildah rm "$CONTAINER" >/dev/null 2>&1 || true ;;
  esac
}
trap cleanup EXIT
start=$(now)
case "$ENGINE" in
  docker|podman)
    CONTAINER=$("$ENGINE" run -d -p "127.0.0.1:$PORT:50051" "$TAG" --drain_timeout_s "$DRAIN_S")
    "$ENGINE" logs -f "$CONTAINER" >"$OUT/gd-server.log" 2>&1 &
    USER_ID=$("$ENGINE" exec "$CONTAINER" id -u) ;;
  buildah)
    # The image's entrypoint and user, on the host's network (chroot isolation shares it).
    CONTAINER=$(buildah from --pull-never "$TAG")
    USER_ID=$(buildah inspect -f '{{.OCIv1.Config.User}}' "$CONTAINER")
    buildah run --isolation chroot --user "$USER_ID" "$CONTAINER" -- \
      /usr/bin/tini -- gd-server --host 127.0.0.1 --port "$PORT" --metrics_port 0 \
      --drain_timeout_s "$DRAIN_S" >"$OUT/gd-server.log" 2>&1 &
    RUN_PID=$! ;;
esac
healthy=""
for _ in $(seq 300); do
  if "$GD" health --server "127.0.0.1:$PORT" >/dev/null 2>&1; then healthy=1; break; fi
  sleep 1
done
[ -n "$healthy" ] || { echo "image-check: not healthy after 300 s" >&2; tail -n 20 "$OUT/gd-server.log" >&2; exit 1; }
HEALTH_S=$(since "$start")
start=$(now)
"$GD" sample --server "127.0.0.1:$PORT" --labels 0,1,2,3 --sampler ddim --timestep_respacing ddim10 \
  --classifier_scale 1 --seed 1 --out "$OUT/sample.png" | tee "$OUT/sample.log"
SAMPLE_S=$(since "$start")

# ---- SIGTERM -------------------------------------------------------------------------------
start=$(now)
case "$ENGINE" in
  docker|podman)
    "$ENGINE" stop -t "$((DRAIN_S + 5))" "$CONTAINER" >/dev/null
    CODE=$("$ENGINE" inspect -f '{{.State.ExitCode}}' "$CONTAINER") ;;
  buildah)
    # tini itself (buildah's own command line names the same arguments).
    TINI=$(pgrep -f "^/usr/bin/tini -- gd-server --host 127.0.0.1 --port $PORT" | head -n 1)
    kill -TERM "$TINI"
    CODE=0
    wait "$RUN_PID" || CODE=$?
    RUN_PID="" ;;
esac
STOP_S=$(since "$start")
cat <<EOF | tee "$OUT/summary.txt"
engine:            $ENGINE
image:             $TAG, $SIZE
base images:       ${BASE_S} s (pulled, found, or bootstrapped with mmdebstrap)
build:             ${BUILD_S}
user in container: $USER_ID
healthcheck:       $HEALTHCHECK
healthy after:     ${HEALTH_S} s
gd sample:         ${SAMPLE_S} s (4 images, DDIM 10 steps, guided), picture in $OUT/sample.png
SIGTERM to exit:   ${STOP_S} s, exit code $CODE (drain limit ${DRAIN_S} s)
EOF
[ "$CODE" -eq 0 ] || { echo "image-check: gd-server exited $CODE after SIGTERM" >&2; tail -n 20 "$OUT/gd-server.log" >&2; exit 1; }
[ "$USER_ID" != 0 ] && [ "$USER_ID" != "root" ] || { echo "image-check: ran as root" >&2; exit 1; }
echo "image-check: OK"
