#!/bin/sh
# The index job of the indexer image (`docker/entrypoint.sh index [--if-empty] [cvm-index args]`):
# index the rasters under $CVM_IMAGERY_DIR into $CVM_INDEX_DIR and record the build in the
# catalogue. An empty imagery folder first receives the demo world (`cvm synth`) unless
# CVM_DEMO_WORLD=0. With --if-empty the job does nothing when a build is already active, so that
# it can run on every `docker compose up` (CVM_INDEX_ON_START=0 skips it). Extra arguments go to `cvm-index build`.
set -eu
IMAGERY="${CVM_IMAGERY_DIR:-/imagery}"

if [ "${1:-}" = "--if-empty" ]; then
    shift
    if [ "${CVM_INDEX_ON_START:-1}" = "0" ]; then
        echo "index-job: CVM_INDEX_ON_START=0; not indexing at start"
        exit 0
    fi
    active="$(python - <<'PY'
from storage.catalog import get_active_build
from storage.db import make_engine, session_scope
from storage.settings import Settings

engine = make_engine(Settings().database_url)
with session_scope(engine) as session:
    build = get_active_build(session)
    print(build.id if build is not None else "")
engine.dispose()
PY
)"
    if [ -n "$active" ]; then
        echo "index-job: build $active is active; nothing to do"
        exit 0
    fi
fi

has_rasters() {
    [ -n "$(find "$IMAGERY" \( -iname '*.tif' -o -iname '*.tiff' -o -iname '*.vrt' -o -iname '*.jp2' \
        -o -iname '*.img' \) -print -quit 2>/dev/null)" ]
}

demo_world() { # demo_world [--overwrite]
    echo "index-job: generating the demo world in $IMAGERY"
    cvm synth --seed "${CVM_DEMO_SEED:-9001}" --out "$IMAGERY" --extent-m "${CVM_DEMO_EXTENT_M:-1000}" \
        --pairs "${CVM_DEMO_PAIRS:-300}" --val-fraction 1 "$@"
}

if [ ! -d "$IMAGERY" ]; then
    echo "index-job: imagery folder $IMAGERY does not exist (mount one there)" >&2
    exit 1
fi
if [ -d "$IMAGERY/ground" ] && [ ! -f "$IMAGERY/ground.csv" ] && [ "${CVM_DEMO_WORLD:-1}" != "0" ]; then
    # ground.csv is the demo world's last file: without it an earlier generation was interrupted.
    demo_world --overwrite
elif ! has_rasters; then
    if [ -n "$(ls -A "$IMAGERY")" ]; then
        echo "index-job: no raster (.tif/.tiff/.vrt/.jp2/.img) under $IMAGERY, and it is not empty" >&2
        exit 1
    fi
    if [ "${CVM_DEMO_WORLD:-1}" = "0" ]; then
        echo "index-job: $IMAGERY is empty and CVM_DEMO_WORLD=0" >&2
        exit 1
    fi
    demo_world
fi

exec cvm-index build --imagery "$IMAGERY" --no-progress "$@"
