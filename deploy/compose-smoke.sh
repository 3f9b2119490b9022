#!/usr/bin/env bash
# The docker compose deployment, really built and run (issue 15). Run as root from a clone:
#
#   deploy/compose-smoke.sh
#
# 1. installs what is missing (docker.io, debootstrap; the Compose v2 and buildx CLI plugins);
# 2. starts dockerd when none answers (overlay2 where an overlay mount works, else vfs), and stops
#    it again at the end;
# 3. builds the test base images once (deploy/base-images.sh; no image registry is reachable here);
# 4. builds the Distillery image from the real Dockerfile (deploy/compose.smoke.yml picks the base),
#    with torch from this machine's CPU wheel, served on 127.0.0.1 to the build;
# 5. `docker compose up -d`, then deploy/smoke_steps.py drives the stack over HTTP and docker compose:
#    readiness, a key, a job trained by the containerised worker, the student's sha256, worker stop and
#    start mid-job, a PostgreSQL restart mid-job;
# 6. `docker compose down -v` (also on failure), and checks that no container or volume is left.
# Exit 0 only when every step held. Logs: $SMOKE_CACHE/logs (default /var/cache/distillery-smoke).
#
# Settings: SMOKE_API_PORT (18000), SMOKE_TORCH_PORT (18081), SMOKE_PIP_CERT (the CA bundle pip
# trusts inside the build, default /etc/ssl/certs/ca-certificates.crt), SMOKE_KEEP_IMAGES=0 removes
# the images afterwards (default: kept, so the next run starts from the build cache).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
CACHE=${SMOKE_CACHE:-/var/cache/distillery-smoke}
LOGS=$CACHE/logs
mkdir -p "$LOGS"
TORCH_VERSION=$(sed -n 's/^ARG TORCH_VERSION=//p' Dockerfile)
export SMOKE_API_PORT=${SMOKE_API_PORT:-18000}
export SMOKE_TORCH_PORT=${SMOKE_TORCH_PORT:-18081}
export SMOKE_PIP_CERT=${SMOKE_PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
export SMOKE_TORCH_INDEX_URL=http://127.0.0.1:$SMOKE_TORCH_PORT/simple
export COMPOSE_PROJECT_NAME=distillery-smoke
export COMPOSE_FILE=docker-compose.yml:deploy/compose.smoke.yml
START=$(date +%s)
say() { printf '[smoke %4ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }
fail() { say "FAILED: $*"; exit 1; }
# The machine cannot run Docker at all (no package, no engine): exit 3, which .ci/run reports as
# "smoke skipped" (the issue: run the smoke where Docker can be started). Every step after the
# engine answers is the product under test and fails with 1.
unavailable() { say "UNAVAILABLE: $*"; exit 3; }

# Always: stop the torch index server, take the stack down (-v) and stop a dockerd started here.
INDEX_PID= DOCKERD_PID= STACK_UP=0
cleanup() {
  rc=$?
  [ -z "$INDEX_PID" ] || kill "$INDEX_PID" 2>/dev/null || true
  if [ "${SMOKE_LEAVE_UP:-0}" != 1 ]; then
    if [ "$STACK_UP" = 1 ]; then
      docker compose logs --no-color >"$LOGS/compose.log" 2>&1 || true
      docker compose down -v --remove-orphans >"$LOGS/down.log" 2>&1 || true
    fi
    if [ "${SMOKE_KEEP_IMAGES:-1}" = 0 ]; then
      docker image rm distillery-smoke/distillery:latest >/dev/null 2>&1 || true
    fi
    # A dockerd this script started is stopped again (its images stay on disk for the next run).
    if [ -n "$DOCKERD_PID" ] && [ "${SMOKE_KEEP_DOCKERD:-0}" != 1 ]; then
      kill -TERM "$DOCKERD_PID" 2>/dev/null || true
      for _ in $(seq 1 30); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
    fi
  fi
  exit $rc
}
trap cleanup EXIT

# ------------------------------------------------------------------------------------------ 1. tools
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "$@" >"$LOGS/apt.log" 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@" >"$LOGS/apt.log" 2>&1; } \
    || { tail -20 "$LOGS/apt.log"; unavailable "apt-get install $*"; }
}
command -v dockerd >/dev/null || { say "installing docker.io"; apt_install docker.io; }
command -v debootstrap >/dev/null || { say "installing debootstrap"; apt_install debootstrap; }
# Compose v2 (`docker compose`) and buildx are not in bookworm; Debian trixie packages them as
# plain Go binaries (libc6 only). They are fetched with apt from a private package list and only the
# CLI plugins are unpacked, so the system's own package set is left as it is.
PLUGINS=/usr/local/libexec/docker/cli-plugins
if ! docker compose version >/dev/null 2>&1 || ! docker buildx version >/dev/null 2>&1; then
  say "installing the docker compose and buildx plugins (Debian trixie packages)"
  apt_dir=$CACHE/apt-trixie
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$PLUGINS"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
    > "$apt_dir/sources.list"
  apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
            -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir")
  apt-get "${apt_opts[@]}" update -qq >"$LOGS/apt-trixie.log" 2>&1 || unavailable "apt-get update (trixie list)"
  (cd "$apt_dir" && apt-get "${apt_opts[@]}" download docker-compose docker-buildx >>"$LOGS/apt-trixie.log" 2>&1) \
    || unavailable "apt-get download docker-compose docker-buildx"
  unpack=$(mktemp -d)
  for deb in "$apt_dir"/docker-compose_*.deb "$apt_dir"/docker-buildx_*.deb; do dpkg-deb -x "$deb" "$unpack"; done
  install -m 0755 "$unpack"/usr/libexec/docker/cli-plugins/docker-{compose,buildx} "$PLUGINS/"
  rm -rf "$unpack"
fi

# ------------------------------------------------------------------------------------------ 2. engine
# overlay2 where the kernel lets this machine mount an overlay (it does here: image layers and
# containers are then shared, not copied); otherwise vfs, which copies every layer in full (a
# 2 GB image per container): one `docker run --rm` had not finished after 6 minutes under load.
storage_driver() {
  local t
  t=$(mktemp -d)
  mkdir -p "$t"/{l,u,w,m}
  if mount -t overlay overlay -o "lowerdir=$t/l,upperdir=$t/u,workdir=$t/w" "$t/m" 2>/dev/null; then
    umount "$t/m"; rm -rf "$t"; echo overlay2
  else
    rm -rf "$t"; echo vfs
  fi
}
if ! docker info >/dev/null 2>&1; then
  driver=${SMOKE_STORAGE_DRIVER:-$(storage_driver)}
  say "starting dockerd (--storage-driver=$driver), log $LOGS/dockerd.log"
  nohup dockerd --storage-driver="$driver" >"$LOGS/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { tail -20 "$LOGS/dockerd.log"; unavailable "dockerd did not answer in 60 s"; }
fi
say "docker $(docker version -f '{{.Server.Version}}') ($(docker info -f '{{.Driver}}')), $(docker compose version)"

# ------------------------------------------------------------------------------------------ 3. bases
t0=$(date +%s)
deploy/base-images.sh || fail "base images"
say "base images ready ($(( $(date +%s) - t0 )) s)"

# ------------------------------------------------------------------------------------------ 4. image
# torch==$TORCH_VERSION and its dependencies as pip resolves them on this machine (its pip config
# points at the local CPU wheel), laid out as a PEP 503 index and served to the build.
index=$CACHE/torch-index
if ! ls "$index"/files/torch-"$TORCH_VERSION"*.whl >/dev/null 2>&1; then
  say "collecting torch==$TORCH_VERSION and its dependencies"
  mkdir -p "$index/files"
  python3 -m pip download -q --only-binary=:all: "torch==$TORCH_VERSION" -d "$index/files" >"$LOGS/pip-download.log" 2>&1 \
    || { tail -20 "$LOGS/pip-download.log"; fail "pip download torch==$TORCH_VERSION"; }
fi
python3 - "$index" <<'PY'
import html, re, sys
from pathlib import Path
root = Path(sys.argv[1])
simple = root / "simple"
projects: dict[str, list[str]] = {}
for wheel in sorted((root / "files").glob("*.whl")):
    name = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
    projects.setdefault(name, []).append(wheel.name)
for name, wheels in projects.items():
    (simple / name).mkdir(parents=True, exist_ok=True)
    links = "".join(f'<a href="../../files/{html.escape(w)}">{html.escape(w)}</a>\n' for w in wheels)
    (simple / name / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
PY
python3 -m http.server "$SMOKE_TORCH_PORT" --bind 127.0.0.1 --directory "$index" >"$LOGS/torch-index.log" 2>&1 &
INDEX_PID=$!


t0=$(date +%s)
say "building the Distillery image (log $LOGS/build.log)"
docker compose build --progress=plain api >"$LOGS/build.log" 2>&1 || { tail -40 "$LOGS/build.log"; fail "docker compose build"; }
BUILD_S=$(( $(date +%s) - t0 ))
say "image built in $BUILD_S s"
# ------------------------------------------------------------------------------------------ 5. up + steps
t0=$(date +%s)
say "docker compose up -d"
STACK_UP=1
docker compose up -d >"$LOGS/up.log" 2>&1 || { cat "$LOGS/up.log"; docker compose ps -a; fail "docker compose up -d"; }
say "up returned after $(( $(date +%s) - t0 )) s"
python3 deploy/smoke_steps.py --url "http://127.0.0.1:$SMOKE_API_PORT" --report "$LOGS/steps.json" \
  || { docker compose ps -a; fail "a step did not hold (see above and $LOGS)"; }

# ------------------------------------------------------------------------------------------ 6. down -v
if [ "${SMOKE_LEAVE_UP:-0}" != 1 ]; then
  t0=$(date +%s)
  docker compose logs --no-color >"$LOGS/compose.log" 2>&1 || true
  docker compose down -v --remove-orphans >"$LOGS/down.log" 2>&1 || { cat "$LOGS/down.log"; fail "docker compose down -v"; }
  STACK_UP=0
  left_c=$(docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")
  left_v=$(docker volume ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")
  [ -z "$left_c$left_v" ] || fail "left behind after down -v: containers [$left_c] volumes [$left_v]"
  say "down -v in $(( $(date +%s) - t0 )) s: no container, no volume left"
fi
say "PASSED: every step held (total $(( $(date +%s) - START )) s, image build $BUILD_S s)"
