#!/usr/bin/env bash
# Build the Pulumi engine from Go modules at the versions pinned below (the one place they are pinned).
#
#   scripts/toolchain.sh check   ask the Go module proxy for every pinned module version (seconds); exit 1 naming each refused one
#   scripts/toolchain.sh build   check, then build what is missing into $REGTEST_TOOLCHAIN_DIR/<pins hash>/bin, print that dir
#                                (--partial: build what can be built even when a module is refused)
#   scripts/toolchain.sh bin     print the bin dir of an installed `pulumi` CLI, or of a complete build; exit 1 if neither
#   scripts/toolchain.sh pins    print the pins
#
# Nothing of those modules is committed: each binary is built inside a throwaway module of our own that
# requires the upstream one; files a main package embeds are copied from the module cache at build time.
# A module version the Go module proxy does not serve is reported by name with the proxy's answer.
set -euo pipefail

# --- pins (requirements.txt's SDK pins must match the provider pins; tests/unit/test_project_files.py checks) ---
PULUMI_VERSION=3.274.1                      # github.com/pulumi/pulumi/pkg/v3 and sdk/v3 (CLI); PyPI pulumi may be older
LANGUAGE_PYTHON_MODULE=github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3
LANGUAGE_PYTHON_PSEUDO=v3.0.0-20260819165155-0ac56e876614   # release commit of v3.259.0 (newer: commit not known)
COMMAND_VERSION=1.2.1
COMMAND_PSEUDO=v0.0.0-20260303235922-7f3eb6f3b77c           # github.com/pulumi/pulumi-command/provider at tag v1.2.1
RANDOM_VERSION=4.21.1
RANDOM_PSEUDO=v4.0.0-20260722185042-f2d8b029d0f7            # github.com/pulumi/pulumi-random/provider/v4 at tag v4.21.1
KUBERNETES_VERSION=4.32.0
KUBERNETES_PSEUDO=v4.0.0-20260609003240-a03ff6ba58d2        # github.com/pulumi/pulumi-kubernetes/provider/v4 at a03ff6ba58d2 (v4.32.0;
                                                            # commit time taken from the sdk/v4.32.0 tag: unverified)
CLIPBOARD_REPLACE="github.com/atotto/clipboard=github.com/tgummerer/clipboard@v0.0.0-20241001131231-d02d263e614e"
# ---

cd "$(dirname "$0")/.."
ROOT="${REGTEST_TOOLCHAIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/regtest-toolchain}"
PINS="pulumi=$PULUMI_VERSION python=$LANGUAGE_PYTHON_PSEUDO command=$COMMAND_PSEUDO random=$RANDOM_PSEUDO kubernetes=$KUBERNETES_PSEUDO go=$(go env GOVERSION 2>/dev/null || echo none)"
HASH=$(printf '%s' "$PINS" | sha256sum | cut -c1-12)
OUT="$ROOT/$HASH"
BIN="$OUT/bin"
export CGO_ENABLED=0 GOFLAGS=-mod=mod

log() { printf '[toolchain] %s\n' "$*" >&2; }

# new_module NAME: a fresh build module of ours in $OUT/src/NAME; prints its path
new_module() {
  local dir="$OUT/src/$1"
  rm -rf "$dir"; mkdir -p "$dir"
  (cd "$dir" && go mod init "regtest.local/toolchain/$1" >/dev/null 2>&1)
  printf '%s' "$dir"
}

# fetch DIR MODULE@VERSION...: go get inside DIR, or fail naming what the proxy refused
fetch() {
  local dir=$1; shift
  local err
  if ! err=$(cd "$dir" && go get "$@" 2>&1); then
    log "cannot fetch $*:"
    printf '%s\n' "$err" | sed 's/^/    /' >&2
    return 1
  fi
}

timed() {  # timed NAME CMD...: run, log the wall time
  local start=$SECONDS; "${@:2}"; local rc=$?
  log "$1: $((SECONDS - start)) s"; return $rc
}

build_pulumi() {
  local m; m=$(new_module pulumi)
  (cd "$m" && go mod edit -replace "$CLIPBOARD_REPLACE")
  fetch "$m" "github.com/pulumi/pulumi/pkg/v3@v$PULUMI_VERSION" "github.com/pulumi/pulumi/sdk/v3@v$PULUMI_VERSION" || return 1
  (cd "$m" && go build -trimpath -o "$BIN/pulumi" \
    -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$PULUMI_VERSION" \
    github.com/pulumi/pulumi/pkg/v3/cmd/pulumi)
}

build_language_python() {
  local m; m=$(new_module language-python)
  (cd "$m" && go mod edit -replace "$CLIPBOARD_REPLACE")
  fetch "$m" "$LANGUAGE_PYTHON_MODULE@$LANGUAGE_PYTHON_PSEUDO" \
    "github.com/pulumi/pulumi/pkg/v3@v$PULUMI_VERSION" "github.com/pulumi/pulumi/sdk/v3@v$PULUMI_VERSION" || return 1
  (cd "$m" && go build -trimpath -o "$BIN/pulumi-language-python" \
    -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$PULUMI_VERSION" \
    "$LANGUAGE_PYTHON_MODULE")
  local sdk; sdk=$(cd "$m" && go list -m -f '{{.Dir}}' github.com/pulumi/pulumi/sdk/v3)
  install -m 0755 "$sdk/python/cmd/pulumi-language-python-exec" "$BIN/pulumi-language-python-exec"
}

build_command() {
  local m; m=$(new_module command)
  fetch "$m" "github.com/pulumi/pulumi-command/provider@$COMMAND_PSEUDO" || return 1
  (cd "$m" && go build -trimpath -o "$BIN/pulumi-resource-command" \
    -ldflags "-s -w -X github.com/pulumi/pulumi-command/provider/pkg/version.Version=$COMMAND_VERSION" \
    github.com/pulumi/pulumi-command/provider/cmd/pulumi-resource-command)
}

# provider_from_cache NAME MODULE@PSEUDO VERSION_PKG VERSION: copy the main package and its schema from the module
# cache into a module of ours, generate schema-embed.json with the version set, and build it there.
provider_from_cache() {
  local name=$1 modver=$2 vpkg=$3 version=$4 mod=${2%@*}
  local m; m=$(new_module "$name")
  fetch "$m" "$modver" || return 1
  local src; src=$(cd "$m" && go list -m -f '{{.Dir}}' "$mod")/cmd/pulumi-resource-$name
  cp "$src"/*.go "$m"/; rm -f "$m"/*_test.go
  cp "$src"/*.json "$m"/ 2>/dev/null || true
  python3 - "$m/schema.json" "$m/schema-embed.json" "$version" <<'PY'
import json, sys
schema = json.load(open(sys.argv[1]))
schema["version"] = sys.argv[3]
json.dump(schema, open(sys.argv[2], "w"))
PY
  [ -f "$src/terraform-mapping.json" ] && cp "$src/terraform-mapping.json" "$m/terraform-mapping-embed.json"
  (cd "$m" && go mod tidy >/dev/null && go build -trimpath -o "$BIN/pulumi-resource-$name" -ldflags "-s -w -X $vpkg.Version=$version" .)
}

build_random() {
  provider_from_cache random "github.com/pulumi/pulumi-random/provider/v4@$RANDOM_PSEUDO" \
    github.com/pulumi/pulumi-random/provider/v4/pkg/version "$RANDOM_VERSION"
}

build_kubernetes() {
  provider_from_cache kubernetes "github.com/pulumi/pulumi-kubernetes/provider/v4@$KUBERNETES_PSEUDO" \
    github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version "$KUBERNETES_VERSION"
}

# Every module version a build needs, as MODULE@VERSION.
MODULES=(
  "pulumi|github.com/pulumi/pulumi/pkg/v3@v$PULUMI_VERSION"
  "pulumi|github.com/pulumi/pulumi/sdk/v3@v$PULUMI_VERSION"
  "pulumi-language-python|$LANGUAGE_PYTHON_MODULE@$LANGUAGE_PYTHON_PSEUDO"
  "pulumi-resource-command|github.com/pulumi/pulumi-command/provider@$COMMAND_PSEUDO"
  "pulumi-resource-random|github.com/pulumi/pulumi-random/provider/v4@$RANDOM_PSEUDO"
  "pulumi-resource-kubernetes|github.com/pulumi/pulumi-kubernetes/provider/v4@$KUBERNETES_PSEUDO"
)

cmd_check() {
  local refused=() entry out
  for entry in "${MODULES[@]}"; do
    if out=$(go mod download -json "${entry#*|}" 2>&1) && ! grep -q '"Error"' <<<"$out"; then
      log "served: ${entry#*|} (${entry%%|*})"
    else
      log "REFUSED: ${entry#*|} (needed by ${entry%%|*}):"
      grep -o '"Error": ".*"' <<<"$out" | sed 's/^/    /' >&2 || printf '    %s\n' "$out" >&2
      refused+=("${entry%%|*}")
    fi
  done
  if [ "${#refused[@]}" -gt 0 ]; then
    log "cannot build: $(printf '%s\n' "${refused[@]}" | sort -u | tr '\n' ' ')"
    return 1
  fi
}

cmd_build() {
  if ! cmd_check && [ "${1:-}" != "--partial" ]; then
    log "not starting a build that cannot complete (scripts/toolchain.sh build --partial builds the rest)"
    return 1
  fi
  mkdir -p "$BIN"
  local failed=()
  for b in pulumi:build_pulumi pulumi-language-python:build_language_python pulumi-resource-command:build_command \
           pulumi-resource-random:build_random pulumi-resource-kubernetes:build_kubernetes; do
    local file=${b%%:*} fn=${b#*:}
    if [ -x "$BIN/$file" ]; then log "$file: built already ($BIN)"; continue; fi
    timed "$file" "$fn" || failed+=("$file")
  done
  if [ "${#failed[@]}" -gt 0 ]; then
    log "could not build: ${failed[*]} (see the messages above); built: $(ls "$BIN" | tr '\n' ' ')"
    return 1
  fi
  touch "$OUT/complete"
  printf '%s\n' "$BIN"
}

case "${1:-}" in
  check) cmd_check ;;
  build) cmd_build "${2:-}" ;;
  bin)
    if command -v pulumi >/dev/null 2>&1 && [ -z "${REGTEST_IGNORE_INSTALLED_PULUMI:-}" ]; then dirname "$(command -v pulumi)"
    elif [ -f "$OUT/complete" ]; then printf '%s\n' "$BIN"
    else exit 1; fi ;;
  pins) printf '%s\n' $PINS ;;
  *) echo "usage: scripts/toolchain.sh check|build [--partial]|bin|pins" >&2; exit 2 ;;
esac
