#!/usr/bin/env bash
# Build GadSynth's image with buildah: no Docker engine and no image registry needed.
#
#   deploy/build-image.sh                          CPU flavour on a local Debian 12 base (made by debootstrap once)
#   FLAVOUR=gpu BASE_IMAGE=nvcr.io/nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 deploy/build-image.sh
#
# Variables: FLAVOUR (cpu|gpu, default cpu), BASE_IMAGE (default: the local base), TAG, STORAGE_DRIVER (vfs),
# PIP_CA (a CA bundle pip must trust, e.g. a TLS-inspecting proxy's; default: the host's bundle when present).
# Prints the image's name and size.
set -euo pipefail
cd "$(dirname "$0")/.."
FLAVOUR=${FLAVOUR:-cpu}
VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
TAG=${TAG:-localhost/gadsynth:${VERSION}-${FLAVOUR}}
LOCAL_BASE=localhost/gadsynth-base:bookworm
BASE_IMAGE=${BASE_IMAGE:-$LOCAL_BASE}
B=(buildah --storage-driver "${STORAGE_DRIVER:-vfs}")

if [ "$BASE_IMAGE" = "$LOCAL_BASE" ] && ! "${B[@]}" inspect --type image "$LOCAL_BASE" >/dev/null 2>&1; then
    # Debian 12 with Python 3.11 (what the python:3.11-slim-bookworm image would give, built from the Debian
    # mirror, which is reachable where image registries are not).
    root=$(mktemp -d /var/tmp/gadsynth-base.XXXXXX)
    echo "Building the base image $LOCAL_BASE with debootstrap (once)..." >&2
    debootstrap --variant=minbase --include=python3,python3-venv,libgomp1,ca-certificates \
        bookworm "$root/rootfs" http://deb.debian.org/debian >"$root/debootstrap.log" 2>&1 \
        || { tail -20 "$root/debootstrap.log" >&2; exit 1; }
    rm -rf "$root/rootfs/var/cache/apt/archives"/*.deb "$root/rootfs/var/lib/apt/lists"/*
    container=$("${B[@]}" from scratch)
    "${B[@]}" copy "$container" "$root/rootfs/" / >/dev/null
    "${B[@]}" config --env LANG=C.UTF-8 --cmd /bin/bash "$container"
    "${B[@]}" commit -q "$container" "$LOCAL_BASE" >/dev/null
    "${B[@]}" rm "$container" >/dev/null
    rm -rf "$root"
fi

PIP_CA=${PIP_CA:-/etc/ssl/certs/ca-certificates.crt}
ca_args=()
if [ -f "$PIP_CA" ]; then  # mounted for the build only: nothing of it stays in the image
    ca_args=(--volume "$PIP_CA:/run/pip-ca.crt:ro" --build-arg PIP_CERT=/run/pip-ca.crt)
fi
# No layer cache: with the vfs driver every cached layer is a full copy of the image tree (a few builds filled
# 58 GB). A build without the cache takes about five minutes here and leaves one image behind.
old=$("${B[@]}" images -q "$TAG" 2>/dev/null || true)
"${B[@]}" bud --isolation chroot --network host --layers=false --format docker \
    --build-arg FLAVOUR="$FLAVOUR" --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg VERSION="$VERSION" \
    "${ca_args[@]}" \
    --tag "$TAG" . >&2
if [ -n "$old" ]; then  # the previous build of this tag, unless a container still uses it
    "${B[@]}" rmi "$old" >/dev/null 2>&1 || true
fi
"${B[@]}" rmi --prune >/dev/null 2>&1 || true
"${B[@]}" images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$TAG"
