#!/usr/bin/env bash
# The real Pulumi engine for this project: the CLI, the Python language host and the three provider plugins,
# built at the versions pinned below (the one place they are pinned).
#
#   scripts/toolchain.sh build   build what is missing into $REGTEST_TOOLCHAIN_DIR/<pins hash>/, print its bin dir
#   scripts/toolchain.sh bin     print the bin dir of an installed `pulumi` CLI, or of a complete build; exit 1 if neither
#   scripts/toolchain.sh plugins print the folder holding the built provider plugins (empty when `pulumi` is installed)
#   scripts/toolchain.sh pins    print the pins, one per line
#   scripts/toolchain.sh verify  check the source archives against the pinned digests
#
# Where the binaries come from:
#   pulumi, pulumi-resource-kubernetes      the Go module proxy
#   pulumi-language-python (+ its exec shim and the dynamic-provider plugin beside it),
#   pulumi-resource-command, pulumi-resource-random
#                                           source archives in $REGTEST_PULUMI_SOURCES (default ../shared/pulumi-sources
#                                           beside the clone, when it exists), checked against the digests pinned here
#                                           before anything is unpacked. Their dependencies come from the module proxy.
# The archives are read at build time only and nothing of them is committed. Where a `pulumi` CLI is
# installed (a user's machine), `bin` prints it and nothing needs building.
set -euo pipefail

# --- pins (requirements.txt's SDK pins must match; tests/unit/test_project_files.py checks) ---
PULUMI_VERSION=3.274.1                  # CLI: github.com/pulumi/pulumi/pkg/v3 (cmd/pulumi)
LANGUAGE_PYTHON_VERSION=3.259.0         # archive pulumi-language-python-v3.259.0.tar.gz
COMMAND_VERSION=1.2.1                   # archive pulumi-command-v1.2.1.tar.gz
RANDOM_VERSION=4.21.1                   # archive pulumi-random-v4.21.1.tar.gz (+ the yaml and dotnet archives)
KUBERNETES_VERSION=4.25.0               # module proxy, the v4.25.0 release commit:
KUBERNETES_MODULE=github.com/pulumi/pulumi-kubernetes/provider/v4@v4.0.0-20260115033456-f47bc2d6f199
CLIPBOARD_REPLACE="github.com/atotto/clipboard=github.com/tgummerer/clipboard@v0.0.0-20241001131231-d02d263e614e"
ARCHIVES=(  # sha256  file
  "5cf1b79645f99b322a7260920bf945a23d78821916a34ba1b151a21a2b92ae88 pulumi-language-python-v3.259.0.tar.gz"
  "12995682b3eea1db2d7bc7ce9db397f07e9cd016898d8e2361c2ceda1193bd36 pulumi-command-v1.2.1.tar.gz"
  "3fec5e65f1a892c9d2cee354207ed5fa68149fe364c58325378f85f47c3b22bb pulumi-random-v4.21.1.tar.gz"
  "1ec8d3daa803da2d7dac975fe24edf8c981385f3c88f3fff096e1704b702756f pulumi-yaml-294c561f47f4.tar.gz"
  "c58c069eb7570db3cbf22cb2bd5e05ede57748065c6dd8604743fda91813a928 pulumi-language-dotnet-6a2eb2585b50.tar.gz"
)
# ---

cd "$(dirname "$0")/.."
REPO=$PWD
ROOT="${REGTEST_TOOLCHAIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/regtest-toolchain}"
# The archives: REGTEST_PULUMI_SOURCES, else ../shared/pulumi-sources beside the clone (or beside the main
# checkout of a git worktree).
SOURCES="${REGTEST_PULUMI_SOURCES:-}"
if [ -z "$SOURCES" ]; then
  SOURCES="$REPO/../shared/pulumi-sources"
  common=$(git -C "$REPO" rev-parse --path-format=absolute --git-common-dir 2>/dev/null || true)
  if [ ! -d "$SOURCES" ] && [ -n "$common" ] && [ -d "$(dirname "$common")/../shared/pulumi-sources" ]; then
    SOURCES="$(dirname "$common")/../shared/pulumi-sources"
  fi
fi
PINS="pulumi=$PULUMI_VERSION language-python=$LANGUAGE_PYTHON_VERSION command=$COMMAND_VERSION random=$RANDOM_VERSION"
PINS+=" kubernetes=$KUBERNETES_VERSION kubernetes-module=$KUBERNETES_MODULE go=$(go env GOVERSION 2>/dev/null || echo none)"
PINS+=" archives=$(printf '%s\n' "${ARCHIVES[@]}" | cut -c1-12 | tr '\n' ',')"
HASH=$(printf '%s' "$PINS" | sha256sum | cut -c1-12)
OUT="$ROOT/$HASH"
BIN="$OUT/bin"          # pulumi, the language host and what must sit beside it: goes on PATH
PLUGINS="$OUT/plugins"  # provider plugins: installed into PULUMI_HOME with `pulumi plugin install --file`
export CGO_ENABLED=0 GOFLAGS=-mod=mod
: "${HOME:=/root}"; export HOME
export GOPATH="${GOPATH:-$(go env GOPATH)}" GOCACHE="${GOCACHE:-$(go env GOCACHE)}"

log() { printf '[toolchain] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# verify: every pinned archive is present in $SOURCES with its pinned digest (the folder's SHA256SUMS must agree).
verify() {
  [ -d "$SOURCES" ] || die "no source archives: $SOURCES does not exist (set REGTEST_PULUMI_SOURCES to the folder holding ${ARCHIVES[*]#* })"
  local entry sum file actual listed
  for entry in "${ARCHIVES[@]}"; do
    sum=${entry%% *} file=${entry#* }
    [ -f "$SOURCES/$file" ] || die "missing archive: $SOURCES/$file"
    actual=$(sha256sum "$SOURCES/$file" | cut -d' ' -f1)
    [ "$actual" = "$sum" ] || die "altered archive: $SOURCES/$file has sha256 $actual, pinned $sum"
    listed=$(awk -v f="$file" '$2 == f || $2 == "*"f {print $1}' "$SOURCES/SHA256SUMS" 2>/dev/null || true)
    [ "$listed" = "$sum" ] || die "$SOURCES/SHA256SUMS lists ${listed:-nothing} for $file, pinned $sum"
  done
}

unpack() {  # unpack: all archives into $OUT/work (once per build run)
  [ -d "$OUT/work" ] && return 0
  verify
  mkdir -p "$OUT/work.tmp"
  local entry
  for entry in "${ARCHIVES[@]}"; do tar -C "$OUT/work.tmp" -xzf "$SOURCES/${entry#* }"; done
  mv "$OUT/work.tmp" "$OUT/work"
}

version_flag() { printf -- '-s -w -X %s.Version=%s' "$1" "$2"; }

build_pulumi() {  # in a module of our own that requires pkg/v3 and sdk/v3 at the pinned version
  local m="$OUT/src/pulumi"
  rm -rf "$m"; mkdir -p "$m"
  (cd "$m" && go mod init regtest.local/toolchain/pulumi >/dev/null 2>&1 \
    && go mod edit -replace "$CLIPBOARD_REPLACE" \
    && go get "github.com/pulumi/pulumi/pkg/v3@v$PULUMI_VERSION" "github.com/pulumi/pulumi/sdk/v3@v$PULUMI_VERSION" \
    && go build -trimpath -o "$BIN/pulumi" \
      -ldflags "$(version_flag github.com/pulumi/pulumi/sdk/v3/go/common/version "v$PULUMI_VERSION")" \
      github.com/pulumi/pulumi/pkg/v3/cmd/pulumi)
}

build_language_python() {
  unpack
  local src="$OUT/work/pulumi-language-python-v$LANGUAGE_PYTHON_VERSION/sdk/python"
  (cd "$src/cmd/pulumi-language-python" \
    && go mod edit -dropreplace=github.com/pulumi/pulumi/pkg/v3 -dropreplace=github.com/pulumi/pulumi/sdk/v3 \
         "-require=github.com/pulumi/pulumi/pkg/v3@v$LANGUAGE_PYTHON_VERSION" \
         "-require=github.com/pulumi/pulumi/sdk/v3@v$LANGUAGE_PYTHON_VERSION" \
    && go build -trimpath -o "$BIN/pulumi-language-python" \
      -ldflags "$(version_flag github.com/pulumi/pulumi/sdk/v3/go/common/version "v$LANGUAGE_PYTHON_VERSION")" .)
  install -m 0755 "$src/cmd/pulumi-language-python-exec" "$BIN/pulumi-language-python-exec"
  install -m 0755 "$src/dist/pulumi-resource-pulumi-python" "$BIN/pulumi-resource-pulumi-python"
}

build_command() {
  unpack
  (cd "$OUT/work/pulumi-command-v$COMMAND_VERSION/provider" \
    && go build -trimpath -o "$PLUGINS/pulumi-resource-command" \
      -ldflags "$(version_flag github.com/pulumi/pulumi-command/provider/pkg/version "$COMMAND_VERSION")" \
      ./cmd/pulumi-resource-command)
}

build_random() {
  unpack
  local w="$OUT/work"
  (cd "$w/pulumi-random-v$RANDOM_VERSION/provider" \
    && go mod edit "-replace=github.com/pulumi/pulumi-yaml=$w/pulumi-yaml-294c561f47f4" \
         "-replace=github.com/pulumi/pulumi-dotnet/pulumi-language-dotnet/v3=$w/pulumi-language-dotnet-6a2eb2585b50/pulumi-language-dotnet" \
    && (cd cmd/pulumi-resource-random && VERSION="$RANDOM_VERSION" go run ./generate.go) \
    && go build -trimpath -o "$PLUGINS/pulumi-resource-random" \
      -ldflags "$(version_flag github.com/pulumi/pulumi-random/provider/v4/pkg/version "$RANDOM_VERSION")" \
      ./cmd/pulumi-resource-random)
}

build_kubernetes() {  # main package and its JSON copied from the module cache into a module of ours
  local m="$OUT/src/kubernetes" mod=${KUBERNETES_MODULE%@*}
  rm -rf "$m"; mkdir -p "$m"
  (cd "$m" && go mod init regtest.local/toolchain/kubernetes >/dev/null 2>&1 && go get "$KUBERNETES_MODULE") || return 1
  local src; src=$(cd "$m" && go list -m -f '{{.Dir}}' "$mod")/cmd/pulumi-resource-kubernetes
  cp "$src"/*.go "$src"/*.json "$m"/; chmod u+w "$m"/*; rm -f "$m"/*_test.go
  python3 - "$m" "$KUBERNETES_VERSION" <<'PY'
import json, os, sys
m, version = sys.argv[1], sys.argv[2]
schema = json.load(open(os.path.join(m, "schema.json")))
schema["version"] = version
json.dump(schema, open(os.path.join(m, "schema-embed.json"), "w"))
if not os.path.exists(os.path.join(m, "terraform-mapping-embed.json")):
    json.dump({}, open(os.path.join(m, "terraform-mapping-embed.json"), "w"))
PY
  (cd "$m" && go mod tidy >/dev/null && go build -trimpath -o "$PLUGINS/pulumi-resource-kubernetes" \
    -ldflags "$(version_flag github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version "$KUBERNETES_VERSION")" .)
}

cmd_build() {
  mkdir -p "$BIN" "$PLUGINS"
  if [ -f "$OUT/complete" ]; then log "reusing $OUT (pins $HASH)"; printf '%s\n' "$BIN"; return 0; fi
  log "building into $OUT (go $(go env GOVERSION), module cache $(go env GOMODCACHE), build cache $GOCACHE)"
  local b file fn start
  for b in "$PLUGINS/pulumi-resource-command:build_command" "$BIN/pulumi-language-python:build_language_python" \
           "$PLUGINS/pulumi-resource-random:build_random" "$PLUGINS/pulumi-resource-kubernetes:build_kubernetes" \
           "$BIN/pulumi:build_pulumi"; do
    file=${b%%:*} fn=${b#*:}
    if [ -x "$file" ]; then log "$(basename "$file"): built already"; continue; fi
    start=$SECONDS
    "$fn" || die "$(basename "$file"): build failed (see above)"
    log "$(basename "$file"): built in $((SECONDS - start)) s"
  done
  rm -rf "$OUT/work" "$OUT/src"
  touch "$OUT/complete"
  printf '%s\n' "$BIN"
}

installed_pulumi() { [ -z "${REGTEST_IGNORE_INSTALLED_PULUMI:-}" ] && command -v pulumi 2>/dev/null; }

case "${1:-}" in
  build)
    if p=$(installed_pulumi); then log "using the installed $p"; dirname "$p"; else cmd_build; fi ;;
  bin)
    if p=$(installed_pulumi); then dirname "$p"
    elif [ -f "$OUT/complete" ]; then printf '%s\n' "$BIN"
    else exit 1; fi ;;
  plugins)
    if installed_pulumi >/dev/null; then echo; elif [ -f "$OUT/complete" ]; then printf '%s\n' "$PLUGINS"; else exit 1; fi ;;
  pins) tr ' ' '\n' <<<"$PINS" ;;
  verify) verify && log "all archives match their pinned digests ($SOURCES)" ;;
  *) echo "usage: scripts/toolchain.sh build|bin|plugins|pins|verify" >&2; exit 2 ;;
esac
