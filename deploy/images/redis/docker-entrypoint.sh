#!/bin/sh
# The official image builds Redis with protected mode off (it listens on the container network
# without a password); Debian's build keeps it on, so it is switched off here, as there.
set -eu
if [ "${1:-}" = redis-server ]; then
  shift
  exec redis-server --protected-mode no "$@"
fi
exec "$@"
