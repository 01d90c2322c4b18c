#!/usr/bin/env bash
# Entry points that also do all the set-up on a fresh Debian machine (run as root):
#   scripts/dev.sh up              build (or reuse) the Pulumi engine and the disposable local host, then run the real
#                                  `pulumi up` of the `dev` stack against it (file:// backend in .e2e/pulumi, git-ignored)
#   scripts/dev.sh up --flux       the same with a Kubernetes API and Flux's controllers on the host (built on first
#                                  use) and the stack's Flux part on, reaching the API through the published port
#   scripts/dev.sh pulumi ARGS...  the real CLI on that backend and project (`stack output --show-secrets`, `preview`,
#                                  `config set`, `destroy --yes`, `--stack OTHER`, ...)
#   scripts/dev.sh ssh [CMD...]    a shell (or CMD) on the host as the stack's SSH user
#   scripts/dev.sh destroy         `pulumi destroy` of the dev stack, then remove the host
#   scripts/dev.sh test [ARGS]     the whole test suite (unit, graph, lint, end-to-end on the real engine); .ci/run calls this
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

setup_engine() {
  bash scripts/toolchain.sh build >/dev/null
}

dev_env() {  # PULUMI_HOME, backend, passphrase file, PATH, DEV_PROJECT
  eval "$(.venv/bin/python -m tests.e2e.devstack env)"
}

case "${1:-}" in
  up)
    flux=()
    case "${2:-}" in
      --flux) flux=(--flux) ;;
      "") ;;
      *) echo "usage: scripts/dev.sh up [--flux]" >&2; exit 2 ;;
    esac
    setup_python
    setup_host_tools
    setup_engine
    .venv/bin/python -m tests.e2e.testhost up "${flux[@]}" >/dev/null
    .venv/bin/python -m tests.e2e.devstack prepare "${flux[@]}"
    dev_env
    cd "$DEV_PROJECT"
    pulumi up --yes --stack dev --non-interactive --color never
    pulumi stack output --stack dev
    cd - >/dev/null
    .venv/bin/python -m tests.e2e.devstack reach
    ;;
  pulumi)
    dev_env
    cd "$DEV_PROJECT"
    exec pulumi "${@:2}"
    ;;
  ssh)
    mapfile -t args < <(.venv/bin/python -m tests.e2e.testhost ssh-args)
    exec "${args[@]}" "${@:2}"
    ;;
  destroy)
    dev_env
    (cd "$DEV_PROJECT" && pulumi destroy --yes --stack dev --non-interactive --color never)
    .venv/bin/python -m tests.e2e.testhost down
    ;;
  test)
    setup_python
    setup_host_tools
    setup_engine
    .venv/bin/python -m pytest -q -p no:cacheprovider "${@:2}"
    ;;
  *)
    echo "usage: scripts/dev.sh up [--flux]|pulumi ARGS|ssh [CMD]|destroy|test [pytest args]" >&2
    exit 2
    ;;
esac
