#!/usr/bin/env bash
# The corpus of scripts/bench_million.py: 20 synthetic worlds of 4 km (12,769 tiles each at the
# default grid, 255,380 in all) on a 5 x 4 grid of origins about 11 km apart, indexed with the
# shipped weights in two flat builds split into regions of 10 km, and 300 panoramas of another
# world embedded as queries. About 80 minutes of 2 CPU cores; every step resumes or is skipped
# when its output exists.
#
#   scripts/million_corpus.sh [OUT]      # OUT defaults to var/corpus
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-var/corpus}
mkdir -p "$out"
i=0
for r in 0 1 2 3; do
  for c in 0 1 2 3 4; do
    seed=$((8100 + i))
    lat=$(python3 -c "print(round(47.0 + $r * 0.1, 4))")
    lon=$(python3 -c "print(round(8.0 + $c * 0.15, 4))")
    if [ ! -f "$out/w$seed/ortho.tif" ]; then
      rm -rf "$out/w$seed"
      .venv/bin/cvm synth --seed $seed --out "$out/w$seed" --extent-m 4000 --pairs 1 \
        --val-fraction 0 --workers 1 --origin "$lat,$lon"
    fi
    i=$((i + 1))
  done
done
export CVM_DATA_DIR=$out/data
# two builds (ids 1 and 2 in a fresh data dir): the first 7 worlds, then the other 13
[ -d "$out/data/indexes/build-1" ] || .venv/bin/cvm-index build --imagery "$out"/w810[0-6]/ortho.tif \
  --index-type flat --region-km 10 --no-activate
[ -d "$out/data/indexes/build-2" ] || .venv/bin/cvm-index build --imagery "$out"/w810[7-9]/ortho.tif \
  "$out"/w811?/ortho.tif --index-type flat --region-km 10 --no-activate
if [ ! -f "$out/queries.npy" ]; then
  [ -f "$out/q8300/ground.csv" ] || .venv/bin/cvm synth --seed 8300 --out "$out/q8300" --extent-m 2000 \
    --pairs 300 --val-fraction 1 --workers 1 --origin 47.2,8.3
  .venv/bin/cvm embed --branch ground --batch-size 16 --out "$out/queries.npy" "$out"/q8300/ground/*.jpg
fi
