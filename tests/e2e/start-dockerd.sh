#!/usr/bin/env bash
# Install (if missing) and start the outer Docker engine, idempotently.
# No systemd on the CI machine: dockerd is started in the background by hand.
# Env: DOCKERD_LOG (default /tmp/dockerd.log), DOCKERD_WAIT (seconds, default 60).
set -euo pipefail

log=${DOCKERD_LOG:-/tmp/dockerd.log}
wait_s=${DOCKERD_WAIT:-60}

die() { echo "start-dockerd: $*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
  die "must run as root (installs packages, starts dockerd)"
fi

if ! command -v dockerd >/dev/null 2>&1; then
  echo "start-dockerd: installing docker.io" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q || die "apt-get update failed"
  apt-get install -y -q docker.io || die "apt-get install docker.io failed"
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  echo "start-dockerd: installing debootstrap (needed to build the test host)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q debootstrap || {
    apt-get update -q && apt-get install -y -q debootstrap
  } || die "apt-get install debootstrap failed"
fi

if docker info >/dev/null 2>&1; then
  echo "start-dockerd: dockerd already answering" >&2
  exit 0
fi

# Only the daemon in /var/run/docker.pid counts: test hosts run dockerd processes of their own.
if [ -f /var/run/docker.pid ] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
  echo "start-dockerd: dockerd process exists but does not answer yet; waiting" >&2
else
  # A stale pid file from a killed daemon blocks a new start.
  rm -f /var/run/docker.pid
  echo "start-dockerd: starting dockerd (log: $log)" >&2
  nohup dockerd >"$log" 2>&1 &
fi

for _ in $(seq 1 "$wait_s"); do
  if docker info >/dev/null 2>&1; then
    echo "start-dockerd: dockerd is up" >&2
    exit 0
  fi
  sleep 1
done
echo "start-dockerd: dockerd did not answer within ${wait_s}s; last log lines:" >&2
tail -n 30 "$log" >&2 || true
exit 1
