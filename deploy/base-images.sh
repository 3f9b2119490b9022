#!/usr/bin/env bash
# Test-only base images for deploy/compose-smoke.sh, built from Debian's archive because this machine
# reaches no image registry. Nothing in the product uses them: the Dockerfile's default base stays the
# official python image, and docker-compose.yml keeps postgres:16 and redis:7.
#
#   distillery-smoke/debian:bookworm   debootstrap --variant=minbase bookworm + python3/venv/pip, `docker import`
#   distillery-smoke/python:3.11       + a venv on PATH (python, pip), the layout the Dockerfile expects
#   distillery-smoke/postgres:15       Debian's postgresql-15 + an entrypoint with the official image's
#                                      POSTGRES_USER/PASSWORD/DB contract (bookworm has no 16)
#   distillery-smoke/redis:7           Debian's redis-server (7.0)
#
# Built once: an image that exists is kept (SMOKE_REBUILD_BASES=1 rebuilds), and the debootstrap
# root filesystem is cached as a tarball in $SMOKE_CACHE (default /var/cache/distillery-smoke).
set -euo pipefail
cd "$(dirname "$0")"
CACHE=${SMOKE_CACHE:-/var/cache/distillery-smoke}
SUITE=bookworm
MIRROR=${SMOKE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$CACHE"

have() { [ "${SMOKE_REBUILD_BASES:-0}" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }

if ! have distillery-smoke/debian:$SUITE; then
  tarball=$CACHE/$SUITE-minbase-python.tar
  if [ ! -s "$tarball" ]; then
    root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    echo "base-images: debootstrap $SUITE into $root (about 2 minutes)"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip "$SUITE" "$root" "$MIRROR" \
      > "$CACHE/debootstrap.log" 2>&1 || { tail -20 "$CACHE/debootstrap.log"; exit 1; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
  fi
  docker import --change 'CMD ["/bin/bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' "$tarball" distillery-smoke/debian:$SUITE
fi

# Debian packages come over plain HTTP from the archive (apt checks their signatures), so these
# builds need no CA bundle. --network=host: the same route the host uses.
for name in python:3.11 postgres:15 redis:7; do
  if ! have "distillery-smoke/$name"; then
    echo "base-images: building distillery-smoke/$name"
    docker build -q --network=host -t "distillery-smoke/$name" "images/${name%%:*}"
  fi
done
