#!/usr/bin/env bash
# Entry points that also do all the set-up on a fresh Debian machine (run as root):
#   scripts/dev.sh up       build and start the disposable local host, then apply the `dev` stack to it
#   scripts/dev.sh destroy  run every delete step against the local host, then remove it
#   scripts/dev.sh test     the whole test suite (unit, graph, lint, end-to-end); .ci/run calls this
set -euo pipefail
cd "$(dirname "$0")/.."

setup_python() {
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
}

setup_host_tools() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v ssh >/dev/null || missing+=(openssh-client)
  if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  bash tests/e2e/start-dockerd.sh
}

case "${1:-}" in
  up)
    setup_python
    setup_host_tools
    .venv/bin/python -m tests.e2e.testhost up
    .venv/bin/python -m tests.e2e.apply --stack dev
    ;;
  destroy)
    setup_python
    .venv/bin/python -m tests.e2e.apply --stack dev --destroy
    .venv/bin/python -m tests.e2e.testhost down
    ;;
  test)
    setup_python
    setup_host_tools
    .venv/bin/python -m pytest -q -p no:cacheprovider "${@:2}"
    ;;
  *)
    echo "usage: scripts/dev.sh up|destroy|test [pytest args]" >&2
    exit 2
    ;;
esac
