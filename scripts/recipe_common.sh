# Sourced by scripts/train_cvact.sh and scripts/train_vigor.sh (not run on its own): the
# project's `cvm`, the authors' init weights imported once, and the paper-preset training run.
# Expects repo, PY, ARCH, OUT, DEVICE, BATCH, LR, EPOCHS, WORKERS and optionally INIT, INIT_TF,
# MODEL_CONFIG, MINUTES, SEMI_POSITIVE_M, TRAIN_ARGS (the recipes' environment, documented in
# each recipe).

cvm() { PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m cli.main "$@"; }

# train_from_init DATA_SPEC: import INIT_TF into OUT/init.pt once (unless INIT names an imported
# checkpoint; a rerun finds it and resumes the training), then train OUT from it on DATA_SPEC.
train_from_init() {
    local data=$1 init=${INIT:-$OUT/init.pt}
    local sizes=() extra=()
    mkdir -p "$OUT"
    if [ -z "${INIT:-}" ] && [ ! -f "$init" ]; then
        INIT_TF=${INIT_TF:?set INIT_TF to the authors init checkpoint, e.g. CVM-Net-I_init, or INIT to an imported one}
        [ -n "${MODEL_CONFIG:-}" ] && sizes=(--model-config "$MODEL_CONFIG")
        cvm import-tf "$INIT_TF" --arch "$ARCH" --out "$init" "${sizes[@]}"
    fi
    if [ -n "${MODEL_CONFIG:-}" ]; then
        # Other sizes: train exactly the imported network's configuration.
        "$PY" -c 'import json, sys; sys.path.insert(0, sys.argv[3])
from model.checkpoint import load_checkpoint
open(sys.argv[2], "w").write(json.dumps(load_checkpoint(sys.argv[1]).config.to_dict()))' \
            "$init" "$OUT/model_config.json" "$repo"
        sizes=(--model-config "$OUT/model_config.json")
    fi
    [ -n "${MINUTES:-}" ] && extra+=(--max-minutes "$MINUTES")
    # Near pairs are not negatives (docs/training.md, "Training as served"); 0 trains as the original.
    [ "${SEMI_POSITIVE_M:-0}" != 0 ] && extra+=(--semi-positive-m "$SEMI_POSITIVE_M")
    # shellcheck disable=SC2206
    [ -n "${TRAIN_ARGS:-}" ] && extra+=($TRAIN_ARGS)
    cvm train --arch "$ARCH" --preset paper --init-weights "$init" --data "$data" --out "$OUT" \
        --device "$DEVICE" --batch-size "$BATCH" --lr "$LR" --epochs "$EPOCHS" --workers "$WORKERS" \
        "${sizes[@]}" "${extra[@]}"
}
