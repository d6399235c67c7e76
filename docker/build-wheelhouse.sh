#!/usr/bin/env bash
# Fill .wheelhouse/ (git-ignored) with every wheel the images install, so `docker build` installs
# offline with `pip install --no-index --find-links` and never fetches PyPI's multi-GB CUDA torch.
#
# torch is the CPU-only build: taken from a local wheel when one lies on this machine (the
# directories in TORCH_WHEEL_DIRS), otherwise from the PyTorch CPU index. Everything else comes
# from the registries pip is configured with. The host must match the image: Linux x86-64, CPython
# 3.11, glibc >= 2.36 (Debian 12), because wheels are resolved for this interpreter.
#
# Usage: docker/build-wheelhouse.sh          (idempotent: reuses wheels already present)
# Env:   PYTHON (default python3), TORCH_VERSION (default 2.13.0+cpu),
#        TORCH_WHEEL_DIRS (default /opt/wheels), TORCH_CPU_INDEX (default the PyTorch CPU index)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0+cpu}"
TORCH_WHEEL_DIRS="${TORCH_WHEEL_DIRS:-/opt/wheels}"
TORCH_CPU_INDEX="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
OUT=.wheelhouse

tag="$("$PYTHON" -c 'import sys, platform; print(f"cp{sys.version_info[0]}{sys.version_info[1]}-{platform.machine()}")')"
if [ "$tag" != "cp311-x86_64" ]; then
    echo "build-wheelhouse: needs CPython 3.11 on x86-64 (the images' interpreter), found $tag" >&2
    exit 1
fi
mkdir -p "$OUT"

# The runtime requirements are the project's own, read from pyproject.toml (one source of truth),
# plus the build backend so the image can build the project itself without an index.
req="$(mktemp)"
trap 'rm -f "$req"' EXIT
"$PYTHON" - >"$req" <<'EOF'
import tomllib
with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)
print("\n".join(project["project"]["dependencies"]))
print("\n".join(project["build-system"]["requires"]))
EOF
echo "torch==$TORCH_VERSION" >>"$req"

# A local torch wheel wins; the PyTorch index is consulted only without one (it may be unreachable).
links=(--find-links "$OUT")
torch_file="torch-${TORCH_VERSION}-cp311-cp311-*.whl"
local_torch=""
for d in $TORCH_WHEEL_DIRS; do
    # shellcheck disable=SC2086
    if compgen -G "$d/"$torch_file >/dev/null; then local_torch="$d"; links+=(--find-links "$d"); fi
done
# shellcheck disable=SC2086
if [ -z "$local_torch" ] && ! compgen -G "$OUT/"$torch_file >/dev/null; then
    links+=(--extra-index-url "$TORCH_CPU_INDEX")
fi
"$PYTHON" -m pip wheel --quiet --wheel-dir "$OUT" "${links[@]}" -r "$req"

if ls "$OUT"/nvidia_* >/dev/null 2>&1; then
    echo "build-wheelhouse: CUDA wheels were pulled in; torch must be the +cpu build" >&2
    exit 1
fi
echo "build-wheelhouse: $(find "$OUT" -name '*.whl' | wc -l) wheels, $(du -sh "$OUT" | cut -f1) in $OUT/"
