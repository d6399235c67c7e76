#!/bin/sh
# Entry point of the cvm-geoloc images.
#
#   serve              `cvm serve` on $CVM_HOST:$CVM_PORT (default 0.0.0.0:8000)
#   migrate            `alembic upgrade head` on the catalogue (retries while the database starts)
#   index [--if-empty] index the GeoTIFFs under $CVM_IMAGERY_DIR (default /imagery) and activate
#                      the build; an empty folder gets the demo world first (`cvm synth`), unless
#                      CVM_DEMO_WORLD=0. --if-empty: do nothing when a build is already active.
#   healthcheck        exit 0 when GET /readyz answers 200
#   anything else      run as given (e.g. `cvm-index list`, `bash`)
#
# CVM_DATABASE_URL, when unset, is composed from POSTGRES_HOST/PORT/USER/PASSWORD/DB with the
# password percent-encoded, so any password works.
set -eu

# Compose passes unset settings as empty strings; empty means "the default", so drop them.
for var in CVM_DATABASE_URL CVM_WEIGHTS CVM_DEVICE CVM_INDEX_DIR CVM_DATA_DIR; do
    eval "value=\${$var:-}"
    # shellcheck disable=SC2154
    [ -z "$value" ] && unset "$var"
done

if [ -z "${CVM_DATABASE_URL:-}" ] && [ -n "${POSTGRES_HOST:-}" ]; then
    CVM_DATABASE_URL="$(python - <<'PY'
import os
from urllib.parse import quote

e = os.environ
password = e.get("POSTGRES_PASSWORD") or ""
if not password:
    raise SystemExit("entrypoint: POSTGRES_HOST is set but POSTGRES_PASSWORD is empty")
print(
    f"postgresql+psycopg://{quote(e.get('POSTGRES_USER', 'cvm'), safe='')}:{quote(password, safe='')}"
    f"@{e['POSTGRES_HOST']}:{e.get('POSTGRES_PORT', '5432')}/{quote(e.get('POSTGRES_DB', 'cvm'), safe='')}"
)
PY
)"
    export CVM_DATABASE_URL
fi

migrate() {
    tries="${CVM_MIGRATE_TRIES:-30}"
    i=1
    until alembic upgrade head; do
        [ "$i" -ge "$tries" ] && { echo "entrypoint: migrations failed $tries times" >&2; exit 1; }
        echo "entrypoint: database not ready, retrying in 2 s ($i/$tries)" >&2
        i=$((i + 1))
        sleep 2
    done
}

case "${1:-serve}" in
serve)
    shift || true
    exec cvm serve --host "${CVM_HOST:-0.0.0.0}" --port "${CVM_PORT:-8000}" "$@"
    ;;
migrate)
    migrate
    ;;
index)
    shift
    exec /opt/cvm/app/docker/index-job.sh "$@"
    ;;
healthcheck)
    exec python -c "
import os, sys, urllib.request
url = f\"http://127.0.0.1:{os.environ.get('CVM_PORT', '8000')}/readyz\"
try:
    urllib.request.urlopen(url, timeout=4)
except Exception as exc:
    sys.exit(f'not ready: {exc}')
"
    ;;
*)
    exec "$@"
    ;;
esac
