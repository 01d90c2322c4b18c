sudo -n sh -c 'set -eu
problems='"'"''"'"'; takes='"'"''"'"'
fail() { problems="${problems}preflight: $1
"; }
take() { takes="${takes}preflight: takes over $1
"; }
command -v curl >/dev/null 2>&1 || fail '"'"'curl is not installed (needed to check the registry answers)'"'"'
warn() { printf '"'"'preflight: warning: %s\n'"'"' "$1" >&2; }
command -v python3 >/dev/null 2>&1 || fail '"'"'python3 is not installed (needed to merge registries.yaml, to take over an inline Caddy site and for tag retention)'"'"'
docker_up=0
if ! command -v docker >/dev/null 2>&1; then fail '"'"'Docker is not installed (install docker.io or docker-ce)'"'"'
elif ! docker info >/dev/null 2>&1; then fail '"'"'Docker is installed but the engine is not running'"'"'
else docker_up=1; fi
if [ "$docker_up" = 1 ] && docker inspect registry >/dev/null 2>&1; then
  src=$(docker inspect -f '"'"'{{range .Mounts}}{{if eq .Destination "/var/lib/registry"}}{{.Source}}{{end}}{{end}}'"'"' registry)
  image=$(docker inspect -f '"'"'{{.Config.Image}}'"'"' registry)
  managed=$(docker inspect -f '"'"'{{index .Config.Labels "io.registry-program.managed-by"}}'"'"' registry 2>/dev/null || true)
  if [ -n "$src" ] && [ "$src" != /srv/data/registry ]; then
    fail "the existing container registry keeps its images in $src, not in dataDir /srv/data/registry: set dataDir to $src to keep them"
  elif [ "$managed" != pulumi ]; then
    take "the existing container registry ($image): replaced by the program'"'"'s; Caddy holds pulls across the swap; the data directory /srv/data/registry is kept as it is ($(stat -c '"'"'%U:%G %a'"'"' /srv/data/registry 2>/dev/null || echo '"'"'not there yet'"'"'))"
  fi
fi
if ! command -v caddy >/dev/null 2>&1; then fail '"'"'Caddy is not installed (2.8 or later is required)'"'"'
else
  v=$(caddy version | sed -n '"'"'s/^v\{0,1\}\([0-9][0-9]*\)\.\([0-9][0-9]*\).*/\1 \2/p'"'"' | head -n 1)
  major=${v% *}; minor=${v#* }
  if [ -z "$v" ] || [ "$major" -lt 2 ] || { [ "$major" -eq 2 ] && [ "$minor" -lt 8 ]; }; then
    fail "Caddy $(caddy version | head -n 1) is too old: 2.8 or later is required (basic_auth)"
  fi
  systemctl cat caddy.service >/dev/null 2>&1 || fail '"'"'Caddy is installed but caddy.service is missing (install Caddy from its Debian/Ubuntu package)'"'"'
fi
if [ -f /etc/caddy/Caddyfile ] && at=$(grep -nE '"'"'^[[:space:]]*([^#]*[[:space:],])?(https://)?registry\.example\.com(:443)?[[:space:]]*(,|\{)'"'"' /etc/caddy/Caddyfile | cut -d: -f1 | paste -sd '"'"' '"'"' -) && [ -n "$at" ]; then
  take "the inline site for registry.example.com in /etc/caddy/Caddyfile (line $at): replaced by the program'"'"'s site in one validated reload; the original is kept as /etc/caddy/Caddyfile.<date>-<time>.bak"
fi
[ ! -f /etc/rancher/k3s/registries.yaml ] || take "/etc/rancher/k3s/registries.yaml (mode $(stat -c '"'"'%a'"'"' /etc/rancher/k3s/registries.yaml)): the entry for registry.example.com under configs is replaced, every other entry and key stays; the file becomes root:root 0600"
systemctl cat k3s.service >/dev/null 2>&1 || fail '"'"'k3s is not installed: systemd unit k3s.service not found (set k3sTrust=false to skip the trust file)'"'"'
holders=$(ss -Hltnp '"'"'sport = :80 or sport = :443'"'"' 2>/dev/null | grep '"'"'users:(('"'"' | grep -v '"'"'users:(("caddy"'"'"' || true)
[ -z "$holders" ] || fail "ports 80/443 are held by something other than Caddy: $holders"
port=5000; name=registry
holders=$(ss -Hltnp "sport = :$port" 2>/dev/null || true)
if [ -n "$holders" ] && [ "$docker_up" = 1 ]; then
  own=" $(docker top "$name" -eo pid 2>/dev/null | sed 1d | tr -s '"'"' \n'"'"' '"'"' '"'"') "
  if docker port "$name" 2>/dev/null | grep -q ":$port\$"; then published=1; else published=0; fi
  foreign=$(printf '"'"'%s\n'"'"' "$holders" | while IFS= read -r line; do
    ok=0
    for pid in $(printf '"'"'%s\n'"'"' "$line" | grep -o '"'"'pid=[0-9]*'"'"' | cut -d= -f2); do
      case "$own" in *" $pid "*) ok=1 ;; esac
    done
    case "$line" in *'"'"'(("docker-proxy"'"'"'*) [ "$published" = 0 ] || ok=1 ;; esac
    [ "$ok" = 1 ] || printf '"'"'%s; '"'"' "$line"
  done)
  holders=$foreign
fi
[ -z "$holders" ] || fail "port $port (the registry'"'"'s, on 127.0.0.1) is held by something other than the $name container: ${holders%; }"
if [ "$docker_up" = 1 ]; then
  # shellcheck disable=SC2016 # a Go template for docker inspect, not shell expansions
  docker ps -aq | xargs -r docker inspect -f '"'"'{{.Name}}|{{.HostConfig.PublishAllPorts}}|{{range $port, $bindings := .HostConfig.PortBindings}}{{range $bindings}}{{if .HostIp}}{{.HostIp}}{{else}}0.0.0.0{{end}}:{{if .HostPort}}{{.HostPort}}{{else}}(any){{end}}->{{$port}} {{end}}{{end}}'"'"' 2>/dev/null | while IFS='"'"'|'"'"' read -r cname all ports; do
    cname=${cname#/}
    [ "$cname" != "$name" ] || continue
    [ "$all" != true ] || ports="${ports}every exposed port (-P) "
    [ -n "$ports" ] || continue
    warn "container $cname publishes ${ports% }: Docker also accepts traffic forwarded from other hosts to its container address on those ports, whatever host address they are bound to (left unchanged; see the README, Network exposure)"
  done
fi
nearest() { p=$1; while [ ! -e "$p" ]; do p=$(dirname "$p"); done; printf '"'"'%s'"'"' "$p"; }
if [ "$(stat -c %d "$(nearest /srv/data/registry)")" = "$(stat -c %d "$(nearest /srv/backups/registry)")" ]; then
  warn "backupDir /srv/backups/registry is on the same filesystem as dataDir /srv/data/registry ($(df -P "$(nearest /srv/data/registry)" | awk '"'"'NR == 2 {print $6}'"'"')): its archives survive a deleted or corrupted registry, not a lost disk or server; copy them off the server (docs/operations.md, Backup now)"
fi
if [ -n "$problems" ]; then printf '"'"'%s'"'"' "$problems" >&2; exit 1; fi
printf '"'"'%s'"'"' "$takes"
echo '"'"'preflight: ok'"'"'
'