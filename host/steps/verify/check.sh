IFS= read -r push_auth || true
IFS= read -r pull_auth || true
if [ -z "${push_auth:-}" ] || [ -z "${pull_auth:-}" ]; then
  echo 'verify: the two credentials did not arrive on stdin' >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
deadline=$(($(date +%s) + DEADLINE))
failures=0

request() {  # request AS METHOD URL [curl options]: prints the HTTP status (000: no answer)
  as=$1 method=$2 url=$3
  shift 3
  case "$as" in
    push) printf '%s\n' "$push_auth" ;;
    pull) printf '%s\n' "$pull_auth" ;;
    *) : ;;
  esac | curl_tls -sS --max-time 60 -K - -X "$method" -o "$tmp/body" -D "$tmp/headers" -w '%{http_code}' \
    "$@" "$url" 2>"$tmp/error" || true
}

check() {  # check NAME WANT AS METHOD URL [curl options]: retries "no answer" and 502-504 until the deadline
  name=$1 want=$2
  shift 2
  while :; do
    : >"$tmp/body"
    : >"$tmp/error"
    got=$(request "$@")
    case "$got" in 000 | 502 | 503 | 504) ;; *) break ;; esac
    [ "$(date +%s)" -lt "$deadline" ] || break
    sleep 2
  done
  if [ "$got" = "$want" ]; then
    echo "verify: ok: $name: HTTP $got"
    return 0
  fi
  failures=$((failures + 1))
  if [ "$got" = 000 ]; then
    detail=$(tail -n 1 "$tmp/error")
    printf 'verify: FAILED: %s: no HTTP answer from %s (expected %s): %s\n' "$name" "$BASE" "$want" "$detail" >&2
    case "$detail" in *certificate* | *SSL* | *TLS*)
      echo "verify: hint: the certificate may not be issued yet or not be trusted here (journalctl -u caddy; registryCaFile)" >&2 ;;
    esac
  else
    body=$(head -c 300 "$tmp/body" | tr -d '\r\n')
    printf 'verify: FAILED: %s: got HTTP %s, expected %s; response: %s\n' "$name" "$got" "$want" "${body:-<empty>}" >&2
    if [ "$got" = 403 ] && [ "$ALLOWLIST" = yes ] && [ "$body" = forbidden ]; then
      echo "verify: hint: the check runs on the server itself: its own public address must be in the allowlist (or set verify=false)" >&2
    fi
  fi
  return 1
}

push_blob() {  # push_blob FILE DIGEST: monolithic upload (POST, then PUT with ?digest=)
  check "push credential starts a blob upload" 202 push POST "$BASE/v2/$PROBE/blobs/uploads/" -H 'Content-Length: 0' ||
    return 1
  location=$(sed -n 's/^[Ll][Oo][Cc][Aa][Tt][Ii][Oo][Nn]: *//p' "$tmp/headers" | tr -d '\r' | tail -n 1)
  case "$location" in /*) location="$BASE$location" ;; esac
  case "$location" in *\?*) sep='&' ;; *) sep='?' ;; esac
  check "push credential uploads blob $2" 201 push PUT "$location${sep}digest=$2" \
    -H 'Content-Type: application/octet-stream' --data-binary "@$1"
}

check 'anonymous GET /v2/ is challenged' 401 anon GET "$BASE/v2/" || true
check 'push credential GET /v2/' 200 push GET "$BASE/v2/" || true
check 'pull credential GET /v2/' 200 pull GET "$BASE/v2/" || true
check 'pull credential is refused a write (POST blob upload)' 403 pull POST "$BASE/v2/$PROBE/blobs/uploads/" \
  -H 'Content-Length: 0' || true

if probe_files "$tmp"; then
  printf '%s' "$LAYER" | base64 -d >"$tmp/layer"
  if push_blob "$tmp/layer" "$LAYER_DIGEST" && push_blob "$tmp/config" "$config_digest" &&
    check "push credential pushes $PROBE:$TAG" 201 push PUT "$BASE/v2/$PROBE/manifests/$TAG" \
      -H "Content-Type: $MANIFEST_TYPE" --data-binary "@$tmp/manifest"; then
    check "pull credential reads $PROBE:$TAG" 200 pull GET "$BASE/v2/$PROBE/manifests/$TAG" \
      -H "Accept: $MANIFEST_TYPE" || true
    if [ "$K3S" = yes ]; then
      ref="$REGISTRY/$PROBE:$TAG"
      k3s_deadline=$(($(date +%s) + 120))
      while :; do
        if out=$(k3s crictl pull "$ref" 2>&1); then
          echo "verify: ok: k3s pulled $ref with the credential in registries.yaml: $(printf '%s\n' "$out" | tail -n 1)"
          break
        fi
        if [ "$(date +%s)" -ge "$k3s_deadline" ]; then
          failures=$((failures + 1))
          printf 'verify: FAILED: k3s could not pull %s with the credential in registries.yaml (k3s crictl pull):\n%s\n' \
            "$ref" "$(printf '%s\n' "$out" | tail -n 5)" >&2
          break
        fi
        sleep 3
      done
    fi
  else
    echo "verify: the pull checks were skipped: the probe image could not be pushed" >&2
  fi
else
  failures=$((failures + 1))
  echo "verify: FAILED: no probe image for this machine's architecture ($(uname -m)); set verify=false" >&2
fi

if [ "$failures" -gt 0 ]; then
  printf 'verify: %s check(s) failed for %s: the changes are applied but the registry does not serve as it should (README.md, Operations: Troubleshooting)\n' \
    "$failures" "$BASE" >&2
  exit 1
fi
echo "verify: all checks passed for $BASE"
