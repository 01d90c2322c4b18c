sudo -n sh -c 'set -eu
docker stop -t 25 registry >/dev/null 2>&1 || true
docker rm -f registry >/dev/null 2>&1 || true
'