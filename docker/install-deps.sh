#!/bin/sh
# Install the project's runtime dependencies into the virtual environment at $VENV (build stage
# of docker/Dockerfile). Reads them from pyproject.toml, the one list the project keeps.
#
#   TORCH_VARIANT=cpu   offline from the wheelhouse in $WHEELS when it holds wheels (built by
#                       docker/build-wheelhouse.sh), else torch from the PyTorch CPU index and the
#                       rest from PyPI
#   TORCH_VARIANT=cuda  PyPI's torch (the CUDA build) and faiss-gpu-cu12 instead of faiss-cpu;
#                       the wheelhouse is not used (it is CPU-only)
#
# Then the project itself is installed in editable mode from a skeleton at $APP (pyproject.toml and
# empty packages): the final stage copies the real sources there, so a source change rebuilds
# neither this environment nor its layer.
set -eu
: "${VENV:?}" "${APP:?}" "${WHEELS:?}" "${TORCH_VARIANT:?}"
TORCH_CPU_INDEX="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"

python3 -m venv "$VENV"
pip="$VENV/bin/pip"
"$VENV/bin/python" - "$WHEELS/pyproject.toml" "$TORCH_VARIANT" >/tmp/requirements.txt <<'PY'
import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
if sys.argv[2] == "cuda":
    deps = [d for d in deps if not d.startswith("faiss-cpu")] + ["faiss-gpu-cu12>=1.8"]
print("\n".join(deps))
PY
torch_req="$(grep -E '^torch' /tmp/requirements.txt)"

case "$TORCH_VARIANT" in
cpu)
    if ls "$WHEELS"/torch-*+cpu-*.whl >/dev/null 2>&1; then
        echo "install-deps: offline, from the wheelhouse"
        offline="--no-index --find-links $WHEELS"
    else
        echo "install-deps: no wheelhouse; CPU torch from $TORCH_CPU_INDEX, the rest from PyPI"
        offline=""
        $pip install --no-cache-dir --index-url "$TORCH_CPU_INDEX" "$torch_req"
    fi
    ;;
cuda)
    echo "install-deps: CUDA torch and faiss-gpu from PyPI"
    offline=""
    ;;
*)
    echo "install-deps: TORCH_VARIANT must be cpu or cuda, not '$TORCH_VARIANT'" >&2
    exit 2
    ;;
esac
# shellcheck disable=SC2086
$pip install --no-cache-dir $offline -r /tmp/requirements.txt setuptools wheel

mkdir -p "$APP"
cp "$WHEELS/pyproject.toml" "$APP/"
touch "$APP/README.md"
for pkg in model synth storage indexer service cli; do mkdir -p "$APP/$pkg" && touch "$APP/$pkg/__init__.py"; done
# shellcheck disable=SC2086
$pip install --no-cache-dir --no-deps --no-build-isolation -e "$APP"
rm -rf "$APP" /tmp/requirements.txt
