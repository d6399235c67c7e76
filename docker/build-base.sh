#!/usr/bin/env bash
# Build the base image `debian:bookworm-slim` locally, for machines that cannot reach a container
# registry: debootstrap a minimal Debian 12 root file system from the machine's apt mirror and
# `docker import` it under the same name the Dockerfiles use, so the same Dockerfiles build here
# and anywhere `docker pull debian:bookworm-slim` works.
#
# Usage: docker/build-base.sh [--force]      (needs root, debootstrap and a running Docker engine)
# Env:   BASE_IMAGE (default debian:bookworm-slim), DEBIAN_MIRROR (default: the mirror apt uses)
set -euo pipefail

BASE_IMAGE="${BASE_IMAGE:-debian:bookworm-slim}"
ROOTFS="$(cd "$(dirname "$0")" && pwd)/.rootfs"   # git-ignored (docker/.rootfs/)

if [ "${1:-}" != "--force" ] && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "build-base: $BASE_IMAGE already present"
    exit 0
fi
if ! command -v debootstrap >/dev/null; then
    echo "build-base: debootstrap is missing (apt-get install -y debootstrap)" >&2
    exit 1
fi

mirror="${DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
    # Reuse the mirror apt is configured with (deb822 sources or the classic sources.list).
    mirror="$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
        | grep -oE 'https?://[^ ]+/debian/?( |$)' | head -n1 | tr -d ' ' || true)"
    mirror="${mirror:-http://deb.debian.org/debian}"
fi

rm -rf "$ROOTFS"
trap 'rm -rf "$ROOTFS"' EXIT
echo "build-base: debootstrap bookworm from $mirror"
debootstrap --variant=minbase bookworm "$ROOTFS" "$mirror" >/dev/null
# Keep the image lean the way the registry's -slim image is: no apt lists, no caches.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb
tar -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
echo "build-base: imported $BASE_IMAGE ($(docker image inspect -f '{{.Size}}' "$BASE_IMAGE") bytes)"
