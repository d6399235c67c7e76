#!/usr/bin/env bash
# CVM-Net on VIGOR with the paper preset, from the authors' initial weights (their ImageNet VGG16
# and random NetVLAD / FC, `CVM-Net-I_init` or `CVM-Net-II_init`, imported with `cvm import-tf`),
# then evaluated on the protocol's test split. Run from anywhere; paths are taken as given.
#
#   DATA=/data/VIGOR INIT_TF=CVM-Net_model/CVM-NET-I/CVM-Net-I_init scripts/train_vigor.sh
#
# Environment (defaults: the published hyper-parameters, docs/training.md):
#   DATA        VIGOR folder (splits/<City>/satellite_list.txt ...)                 required
#   INIT_TF     the authors' *_init TensorFlow checkpoint (folder or prefix)        required unless INIT
#   INIT        an already imported init checkpoint (.pt); skips the import
#   PROTOCOL    same-area | cross-area                                              same-area
#   ARCH        cvm-net-i | cvm-net-ii                                              cvm-net-i
#   OUT         run folder                                                          runs/vigor-$PROTOCOL-$ARCH
#   DEVICE      torch device                                                        cuda
#   BATCH       pairs per step (the original's)                                     12
#   LR          Adam learning rate (the original's, constant)                       1e-5
#   EPOCHS      total epochs of the run (not published; the original ran 5 per
#               invocation and resumed)                                             100
#   MINUTES     stop cleanly after this many minutes; run again to continue         unset
#   WORKERS     image-decoding processes                                            4
#   MODEL_CONFIG  a ModelConfig JSON for other sizes than the paper's (tests, small machines)
#   SEMI_POSITIVE_M  metres: pairs this near are not negatives (half a 640 px tile;
#               the labelled semi-positives are left out too; 0: off)                 36
#   TRAIN_ARGS  further `cvm train` flags, appended as given
#   EVAL        1: evaluate OUT/best.pt on the protocol's test split afterwards      1
#   PY          Python of the project                                               .venv/bin/python
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$repo/.venv/bin/python}
[ -x "$PY" ] || PY=python3
DATA=${DATA:?set DATA to the VIGOR folder}
PROTOCOL=${PROTOCOL:-same-area}
ARCH=${ARCH:-cvm-net-i}
OUT=${OUT:-runs/vigor-$PROTOCOL-$ARCH}
DEVICE=${DEVICE:-cuda}
BATCH=${BATCH:-12}
LR=${LR:-1e-5}
EPOCHS=${EPOCHS:-100}
WORKERS=${WORKERS:-4}
SEMI_POSITIVE_M=${SEMI_POSITIVE_M:-36}
EVAL=${EVAL:-1}
case "$PROTOCOL" in same-area | cross-area) ;; *) echo "PROTOCOL must be same-area or cross-area" >&2; exit 2 ;; esac
# shellcheck source=scripts/recipe_common.sh
source "$repo/scripts/recipe_common.sh"

# 1. The initial weights, imported once (a rerun resumes the training instead); 2. training:
# each panorama with its positive tile; validation on the protocol's test split.
train_from_init "$DATA@$PROTOCOL"

# 3. VIGOR's own figures (R@1/5/10/1%, hit rate, metre-level error) on the test split.
if [ "$EVAL" = 1 ]; then
    cvm eval --weights "$OUT/best.pt" --data "$DATA@$PROTOCOL" --split test --device "$DEVICE" \
        --workers "$WORKERS" --json >"$OUT/eval-test.json"
    echo "evaluation: $OUT/eval-test.json"
fi
