#!/usr/bin/env bash
# Stage F of the shipped weights, on a machine with one GPU and 16 cores (run from the repository
# root; scripts/train_shipped.sh holds stages A-E, which ran on 2 CPU cores):
#   1. render fresh training worlds on every core, in parallel, until a deadline;
#   2. fine-tune the shipped weights on them with several variants side by side on the one GPU
#      (the cpu-preset model is far too small to fill it), each time-boxed by --max-minutes;
#   3. copy each variant's best.pt (best validation R@1%) and metrics.jsonl to $OUT.
# Usage: OUT=dir [PY=python3] [BUDGET_S=540] [GEN_S=230] [PAIRS=500] [SLOTS=nproc-1] scripts/train_gpu.sh
# The held-out evaluation runs afterwards on any machine (docs/model-card.md).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:?set OUT to the folder that receives the results}
BUDGET_S=${BUDGET_S:-540}       # whole script, generation included
GEN_S=${GEN_S:-230}             # generation deadline; unfinished worlds are dropped
PAIRS=${PAIRS:-500}             # pairs per world
SLOTS=${SLOTS:-$(($(nproc) - 1))}  # worlds rendered at a time
EXTENT=${EXTENT:-1400}
DEVICE=${DEVICE:-cuda}          # cpu only to try the script out on a small scale
W=${WORK:-/tmp/cvm-gpu}/worlds
R=${WORK:-/tmp/cvm-gpu}/runs
CVM=("$PY" -m cli.main)
start=$(date +%s)
mkdir -p "$W" "$R" "$OUT"

if [ "$DEVICE" = cuda ]; then
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'no GPU'; print(torch.__version__, torch.cuda.get_device_name())" || exit 2
fi

# 1. Worlds: validation seed 201 (as in stages A-E); training seeds 1000 + 100 * slot + j, never
# used before. Every core renders small worlds one after the other until the deadline, so that
# a slow machine loses at most one unfinished world per core.
world_loop() {
    local slot=$1 j=0 s
    while [ $(($(date +%s) - start)) -lt "$GEN_S" ]; do
        s=$((1000 + 100 * slot + j))
        "${CVM[@]}" synth --seed $s --out "$W/train-$s" --extent-m "$EXTENT" --pairs "$PAIRS" \
            --val-fraction 0 --workers 1 >"$W/train-$s.log" 2>&1 || return
        j=$((j + 1))
    done
}
"${CVM[@]}" synth --seed 201 --out "$W/val-201" --extent-m 1000 --pairs 400 --val-fraction 1 --workers 1 \
    >"$W/val-201.log" 2>&1 &
val_pid=$!
loops=()
for slot in $(seq 1 "$SLOTS"); do
    world_loop "$slot" &
    loops+=($!)
done
while [ $(($(date +%s) - start)) -lt "$GEN_S" ] && [ -n "$(jobs -rp)" ]; do sleep 2; done
kill "${loops[@]}" 2>/dev/null
pkill -f "synth --seed [0-9]+ --out $W/train-" 2>/dev/null
wait "$val_pid"  # the validation world is small; it is always waited for
wait 2>/dev/null
done_worlds=()
for d in "$W"/train-*/; do
    [ -f "$d/cvusa/splits/train-19zl.csv" ] && done_worlds+=("${d%/}")
done
pairs=$(cat "${done_worlds[@]/%//cvusa/splits/train-19zl.csv}" 2>/dev/null | wc -l)
echo "generation: ${#done_worlds[@]} worlds, $pairs pairs, after $(($(date +%s) - start)) s"
[ -f "$W/val-201/cvusa/splits/val-19zl.csv" ] && [ ${#done_worlds[@]} -gt 0 ] || { tail -n 20 "$W"/*.log; exit 3; }

# 2. Variants, side by side. Each stops cleanly (best.pt written after every epoch) by the budget.
left_min=$(awk -v b="$BUDGET_S" -v t="$(($(date +%s) - start))" 'BEGIN { printf "%.2f", (b - t - 25) / 60 }')
echo "training for $left_min minutes"
common=(--arch cvm-net-i --preset cpu --device "$DEVICE" --workers 3 --threads 1 --epochs 1000
        --checkpoint-minutes 2 --init-weights model/weights/cvm-net-i-cpu.pt --val-data "$W/val-201"
        --max-minutes "$left_min" --data "${done_worlds[@]}")
declare -A variants=(
    [F-none-b24]="--augment none --batch-size 24 --seed 6"
    [F-aligned-b24]="--augment aligned --batch-size 24 --seed 7"
    [F-aligned-b64]="--augment aligned --batch-size 64 --seed 8"
    [F-aligned-photo]="--augment aligned --batch-size 24 --photo-fraction 0.3 --seed 9"
)
for name in "${!variants[@]}"; do
    # shellcheck disable=SC2086
    "${CVM[@]}" train "${common[@]}" ${variants[$name]} --out "$R/$name" >"$R/$name.log" 2>&1 &
done
wait

# 3. Results.
for name in "${!variants[@]}"; do
    echo "== $name: ${variants[$name]}"
    tail -n 3 "$R/$name.log"
    grep -o '"epoch": [0-9]*\|"pairs_per_s": [0-9.]*\|"r1pct": [0-9.]*\|"median_rank": [0-9.]*' \
        "$R/$name/metrics.jsonl" | paste -sd' ' | fold -w 2000 | tail -c 600
    mkdir -p "$OUT/$name"
    cp "$R/$name/best.pt" "$R/$name/metrics.jsonl" "$OUT/$name/" 2>/dev/null
done
echo "total $(($(date +%s) - start)) s"
