#!/usr/bin/env bash
# End-to-end check of the Docker deployment on a real engine:
#   engine    start dockerd (vfs) when none answers, installing docker.io/docker-compose if missing
#   base      debian:bookworm-slim: present, pulled, or else built locally (docker/build-base.sh)
#   wheels    fill .wheelhouse/ (docker/build-wheelhouse.sh) when this host can (CPython 3.11 x86-64)
#   build     build the images (db, service, indexer)
#   up        `up -d` without indexing at start: db healthy, migrations applied, service 503 (no index)
#   index     the indexer profile job on an empty imagery volume: demo world + `cvm-index build`
#   localize  wait for /readyz, POST a demo panorama, check the candidates lie inside the world
#   restart   `down` then `up -d`: the same build is active and answers the same (volumes persist);
#             the start-up index job sees the active build and does nothing
#   teardown  `down -v` (and, with --prune, remove the stack's images)
# Prints each phase's duration and the total. Runs under its own compose project (cvm-smoke) on
# host port $SMOKE_PORT, so it does not touch a deployment of the default project.
#
# Usage: docker/smoke.sh [--prune] [--keep]     (--keep: leave the stack running, skip teardown)
set -euo pipefail
cd "$(dirname "$0")/.."

PRUNE=0
KEEP=0
for arg in "$@"; do
    case "$arg" in
    --prune) PRUNE=1 ;;
    --keep) KEEP=1 ;;
    *) echo "usage: $0 [--prune] [--keep]" >&2; exit 2 ;;
    esac
done

export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-cvm-smoke}"
export CVM_HTTP_PORT="${SMOKE_PORT:-18000}"
export CVM_TAG="${CVM_TAG:-smoke}"
# On vfs, removing a container deletes a full copy of its image: slower than compose's 60 s default.
export COMPOSE_HTTP_TIMEOUT="${COMPOSE_HTTP_TIMEOUT:-600}"
# A throw-away password with characters that must be escaped in a URL.
export POSTGRES_PASSWORD="${POSTGRES_PASSWORD:-smoke:$(date +%s)/p@ss}"
LOG_DIR="${SMOKE_LOG_DIR:-/tmp/cvm-smoke}"
mkdir -p "$LOG_DIR"

T0=$(date +%s)
PHASES=()
phase_start=$T0
phase() { # phase NAME: close the previous phase's timer, announce NAME
    local now
    now=$(date +%s)
    [ -n "${current:-}" ] && PHASES+=("$(printf '%-9s %5d s' "$current" $((now - phase_start)))")
    current="$1"
    phase_start=$now
    [ "$1" = "done" ] || echo "== $1"
}
die() {
    echo "smoke: FAILED in phase '${current:-?}': $*" >&2
    exit 1
}

STARTED_DOCKERD=""
cleanup() {
    local rc=$?
    if [ "$rc" -ne 0 ] && [ -n "${COMPOSE:-}" ]; then
        $COMPOSE --profile indexer logs --no-color --tail 60 >"$LOG_DIR/compose-failure.log" 2>&1 || true
        echo "smoke: last compose logs in $LOG_DIR/compose-failure.log" >&2
    fi
    if [ "$KEEP" = 0 ] && [ -n "${COMPOSE:-}" ]; then
        $COMPOSE --profile indexer down -v --remove-orphans >/dev/null 2>&1 || true
    fi
    if [ -n "$STARTED_DOCKERD" ] && [ "$KEEP" = 0 ]; then
        kill "$STARTED_DOCKERD" 2>/dev/null || true
        wait "$STARTED_DOCKERD" 2>/dev/null || true
        echo "smoke: stopped the Docker engine it started (pid $STARTED_DOCKERD)"
    fi
    exit "$rc"
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
phase engine
missing=()
command -v curl >/dev/null || missing+=(curl)
command -v dockerd >/dev/null || docker info >/dev/null 2>&1 || missing+=(docker.io)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
    dockerd --storage-driver=vfs >"$LOG_DIR/dockerd.log" 2>&1 &
    STARTED_DOCKERD=$!
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || die "dockerd did not start; see $LOG_DIR/dockerd.log"
    echo "started dockerd (pid $STARTED_DOCKERD, storage driver vfs)"
fi
if docker compose version >/dev/null 2>&1; then
    COMPOSE="docker compose"
elif command -v docker-compose >/dev/null; then
    COMPOSE="docker-compose"
else
    die "neither 'docker compose' nor 'docker-compose' is installed"
fi
echo "compose: $($COMPOSE version 2>/dev/null | head -n1)"

phase base
if docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
    echo "debian:bookworm-slim present"
elif timeout 300 docker pull -q debian:bookworm-slim >/dev/null 2>&1; then
    echo "pulled debian:bookworm-slim"
else
    if ! command -v debootstrap >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    fi
    docker/build-base.sh
fi

phase wheels
if compgen -G ".wheelhouse/torch-*+cpu-*.whl" >/dev/null; then
    echo "wheelhouse present ($(find .wheelhouse -name '*.whl' | wc -l) wheels)"
elif python3 -c 'import sys, platform; sys.exit(sys.version_info[:2] != (3, 11) or platform.machine() != "x86_64")' \
    2>/dev/null; then
    docker/build-wheelhouse.sh
else
    echo "no wheelhouse and no CPython 3.11 here: the images install from the package indexes"
fi

phase build
# One build per image: migrate and demo-index reuse the service and indexer images.
$COMPOSE --profile indexer build db service indexer >"$LOG_DIR/build.log" 2>&1 \
    || die "image build failed; see $LOG_DIR/build.log"
docker images --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "cvm-geoloc/.*" || true

phase up
# Start from nothing: remains of an interrupted earlier run of this project would be reused.
$COMPOSE --profile indexer down -v --remove-orphans >/dev/null 2>&1 || true
CVM_INDEX_ON_START=0 $COMPOSE up -d >"$LOG_DIR/up.log" 2>&1 || die "up failed; see $LOG_DIR/up.log"
migrate_id="$(docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
    --filter label=com.docker.compose.service=migrate | head -n1)"
[ -n "$migrate_id" ] || die "no migrate container was run"
migrate_rc="$(docker inspect -f '{{.State.ExitCode}}' "$migrate_id")"
[ "$migrate_rc" = 0 ] || die "the migrate job exited with $migrate_rc"
# Before any build exists the service must be up but not ready (503, reason given).
code=""
for _ in $(seq 90); do
    code="$(curl -s -o "$LOG_DIR/readyz-empty.json" -w '%{http_code}' "http://127.0.0.1:$CVM_HTTP_PORT/readyz" || true)"
    [ "$code" = 503 ] || [ "$code" = 200 ] && break
    sleep 2
done
[ "$code" = 503 ] || die "GET /readyz before indexing answered '$code', expected 503"
echo "readyz before indexing: 503 $(cat "$LOG_DIR/readyz-empty.json")"

phase index
$COMPOSE --profile indexer run --rm indexer >"$LOG_DIR/index.log" 2>&1 \
    || die "the indexer job failed; see $LOG_DIR/index.log"
tail -n 5 "$LOG_DIR/index.log"

check() { # check MODE: run docker/smoke_check.py in the service container (it mounts /imagery)
    $COMPOSE exec -T service python - "$1" <docker/smoke_check.py
}

phase localize
first="$(check localize)" || die "localisation check failed"
echo "$first"
curl -sf "http://127.0.0.1:$CVM_HTTP_PORT/readyz" >/dev/null || die "GET /readyz on host port $CVM_HTTP_PORT failed"

phase restart
$COMPOSE down >"$LOG_DIR/down.log" 2>&1 || die "down failed"
$COMPOSE up -d >"$LOG_DIR/up2.log" 2>&1 || die "second up failed; see $LOG_DIR/up2.log"
$COMPOSE logs --no-color demo-index 2>&1 | grep -q "nothing to do" \
    || die "the start-up index job did not see the active build (volume lost?)"
second="$(check localize)" || die "localisation after restart failed"
echo "$second"
[ "$first" = "$second" ] || die "after down/up the answer changed: '$first' -> '$second'"

phase teardown
if [ "$KEEP" = 1 ]; then
    echo "--keep: stack left running (project $COMPOSE_PROJECT_NAME, port $CVM_HTTP_PORT)"
else
    if [ "$PRUNE" = 1 ]; then
        # The images of the stack (db, service, indexer) and the untagged build stages.
        $COMPOSE --profile indexer down -v --remove-orphans --rmi all >/dev/null 2>&1
        docker image prune -f >/dev/null
        echo "removed the stack's images"
    else
        $COMPOSE --profile indexer down -v --remove-orphans >/dev/null 2>&1
    fi
fi

phase "done"
echo "== phase durations"
printf '  %s\n' "${PHASES[@]}"
echo "  total     $(($(date +%s) - T0)) s"
echo "smoke: OK"
