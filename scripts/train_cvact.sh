#!/usr/bin/env bash
# CVM-Net on CVACT with the paper preset, from the authors' initial weights (their ImageNet VGG16
# and random NetVLAD / FC, `CVM-Net-I_init` or `CVM-Net-II_init`, imported with `cvm import-tf`),
# then evaluated on CVACT_val. Run from anywhere; paths are taken as given.
#
#   DATA=/data/CVACT INIT_TF=CVM-Net_model/CVM-NET-I/CVM-Net-I_init scripts/train_cvact.sh
#
# Environment (defaults: the published hyper-parameters, docs/training.md):
#   DATA        CVACT folder (ACT_data.mat, ANU_data_small/, ANU_data_test/)        required
#   INIT_TF     the authors' *_init TensorFlow checkpoint (folder or prefix)        required unless INIT
#   INIT        an already imported init checkpoint (.pt); skips the import
#   ARCH        cvm-net-i | cvm-net-ii                                              cvm-net-i
#   OUT         run folder                                                          runs/cvact-$ARCH
#   DEVICE      torch device                                                        cuda
#   BATCH       pairs per step (the original's)                                     12
#   LR          Adam learning rate (the original's, constant)                       1e-5
#   EPOCHS      total epochs of the run (not published; the original ran 5 per
#               invocation and resumed)                                             100
#   MINUTES     stop cleanly after this many minutes; run again to continue         unset
#   WORKERS     image-decoding processes                                            4
#   MODEL_CONFIG  a ModelConfig JSON for other sizes than the paper's (tests, small machines)
#   SEMI_POSITIVE_M  metres: pairs this near are not negatives (OriCNN's radius; near
#               panoramas share almost the same tile; 0: off)                         5
#   TRAIN_ARGS  further `cvm train` flags, appended as given
#   EVAL_SPLITS splits to evaluate OUT/best.pt on afterwards (val = CVACT_val,
#               test = CVACT_test, 92,802 pairs; empty: none)                       val
#   PY          Python of the project                                               .venv/bin/python
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$repo/.venv/bin/python}
[ -x "$PY" ] || PY=python3
DATA=${DATA:?set DATA to the CVACT folder}
ARCH=${ARCH:-cvm-net-i}
OUT=${OUT:-runs/cvact-$ARCH}
DEVICE=${DEVICE:-cuda}
BATCH=${BATCH:-12}
LR=${LR:-1e-5}
EPOCHS=${EPOCHS:-100}
WORKERS=${WORKERS:-4}
SEMI_POSITIVE_M=${SEMI_POSITIVE_M:-5}
EVAL_SPLITS=${EVAL_SPLITS-val}
# shellcheck source=scripts/recipe_common.sh
source "$repo/scripts/recipe_common.sh"

# 1. The initial weights, imported once (a rerun resumes the training below instead).
# 2. Training on trainSet (the middle half of each panorama's rows, as the published loaders);
# validation on CVACT_val after every epoch.
train_from_init "$DATA"

# 3. CVACT's own figures (R@1/5/10/1%, the same within 5 m, metre-level error) per split.
for split in $EVAL_SPLITS; do
    cvm eval --weights "$OUT/best.pt" --data "$DATA" --split "$split" --device "$DEVICE" \
        --workers "$WORKERS" --json >"$OUT/eval-$split.json"
    echo "evaluation: $OUT/eval-$split.json"
done
