# The preflight check: one readable line per problem before anything changes, what a hand-made setup hands over,
# and warnings about what is left alone.
# Set by the header (renderers/preflight.py): CONTAINER, DATA_DIR, DOMAIN, CADDYFILE, SITE_RE (an ERE for a line
# opening the domain's site), MIN_MAJOR, MIN_MINOR (Caddy), MANAGED_LABEL, REGISTRIES_FILE and K3S_SERVICE ('' when
# there is no trust file), REPLICAS ('NAME:PORT ...', the registry container(s) and loopback port(s)), BACKUP_DIR (''
# for none) and PUBLISHED (a docker inspect template: NAME|PUBLISH_ALL|HOSTIP:HOSTPORT->PORT/PROTO ...).
problems=''; takes=''
fail() { problems="${problems}preflight: $1
"; }
take() { takes="${takes}preflight: takes over $1
"; }
command -v curl >/dev/null 2>&1 || fail 'curl is not installed (needed to check the registry answers)'
warn() { printf 'preflight: warning: %s\n' "$1" >&2; }
command -v python3 >/dev/null 2>&1 || fail 'python3 is not installed (needed to merge registries.yaml, to take over an inline Caddy site and for tag retention)'
docker_up=0
if ! command -v docker >/dev/null 2>&1; then fail 'Docker is not installed (install docker.io or docker-ce)'
elif ! docker info >/dev/null 2>&1; then fail 'Docker is installed but the engine is not running'
else docker_up=1; fi

# A container of that name made by hand: taken over if it keeps its images where dataDir says.
if [ "$docker_up" = 1 ] && docker inspect "$CONTAINER" >/dev/null 2>&1; then
  src=$(docker inspect -f '{{range .Mounts}}{{if eq .Destination "/var/lib/registry"}}{{.Source}}{{end}}{{end}}' "$CONTAINER")
  image=$(docker inspect -f '{{.Config.Image}}' "$CONTAINER")
  managed=$(docker inspect -f "{{index .Config.Labels \"$MANAGED_LABEL\"}}" "$CONTAINER" 2>/dev/null || true)
  if [ -n "$src" ] && [ "$src" != "$DATA_DIR" ]; then
    fail "the existing container $CONTAINER keeps its images in $src, not in dataDir $DATA_DIR: set dataDir to $src to keep them"
  elif [ "$managed" != pulumi ]; then
    take "the existing container $CONTAINER ($image): replaced by the program's; Caddy holds pulls across the swap; the data directory $DATA_DIR is kept as it is ($(stat -c '%U:%G %a' "$DATA_DIR" 2>/dev/null || echo 'not there yet'))"
  fi
fi

if ! command -v caddy >/dev/null 2>&1; then fail 'Caddy is not installed (2.8 or later is required)'
else
  v=$(caddy version | sed -n 's/^v\{0,1\}\([0-9][0-9]*\)\.\([0-9][0-9]*\).*/\1 \2/p' | head -n 1)
  major=${v% *}; minor=${v#* }
  if [ -z "$v" ] || [ "$major" -lt "$MIN_MAJOR" ] || { [ "$major" -eq "$MIN_MAJOR" ] && [ "$minor" -lt "$MIN_MINOR" ]; }; then
    fail "Caddy $(caddy version | head -n 1) is too old: $MIN_MAJOR.$MIN_MINOR or later is required (basic_auth)"
  fi
  systemctl cat caddy.service >/dev/null 2>&1 || fail 'Caddy is installed but caddy.service is missing (install Caddy from its Debian/Ubuntu package)'
fi
if [ -f "$CADDYFILE" ] && at=$(grep -nE "$SITE_RE" "$CADDYFILE" | cut -d: -f1 | paste -sd ' ' -) && [ -n "$at" ]; then
  take "the inline site for $DOMAIN in $CADDYFILE (line $at): replaced by the program's site in one validated reload; the original is kept as $CADDYFILE.<date>-<time>.bak"
fi
if [ -n "$REGISTRIES_FILE" ]; then
  [ ! -f "$REGISTRIES_FILE" ] || take "$REGISTRIES_FILE (mode $(stat -c '%a' "$REGISTRIES_FILE")): the entry for $DOMAIN under configs is replaced, every other entry and key stays; the file becomes root:root 0600"
fi
if [ -n "$K3S_SERVICE" ]; then
  systemctl cat "$K3S_SERVICE.service" >/dev/null 2>&1 || fail "k3s is not installed: systemd unit $K3S_SERVICE.service not found (set k3sTrust=false to skip the trust file)"
fi
holders=$(ss -Hltnp 'sport = :80 or sport = :443' 2>/dev/null | grep 'users:((' | grep -v 'users:(("caddy"' || true)
[ -z "$holders" ] || fail "ports 80/443 are held by something other than Caddy: $holders"

# Each registry port on 127.0.0.1 is free or held by its own container: a process of it (host networking), or
# docker-proxy publishing that container's port (a container made by hand the seed's way; the deploy replaces it).
ours=''
for replica in $REPLICAS; do
  name=${replica%:*}; port=${replica##*:}
  ours="$ours $name "
  holders=$(ss -Hltnp "sport = :$port" 2>/dev/null || true)
  if [ -n "$holders" ] && [ "$docker_up" = 1 ]; then
    own=" $(docker top "$name" -eo pid 2>/dev/null | sed 1d | tr -s ' \n' ' ') "
    if docker port "$name" 2>/dev/null | grep -q ":$port\$"; then published=1; else published=0; fi
    foreign=$(printf '%s\n' "$holders" | while IFS= read -r line; do
      ok=0
      for pid in $(printf '%s\n' "$line" | grep -o 'pid=[0-9]*' | cut -d= -f2); do
        case "$own" in *" $pid "*) ok=1 ;; esac
      done
      case "$line" in *'(("docker-proxy"'*) [ "$published" = 0 ] || ok=1 ;; esac
      [ "$ok" = 1 ] || printf '%s; ' "$line"
    done)
    holders=$foreign
  fi
  [ -z "$holders" ] || fail "port $port (the registry's, on 127.0.0.1) is held by something other than the $name container: ${holders%; }"
done

# Every other container that publishes a port is named (Docker's DOCKER chain accepts forwarded traffic to its
# container address from any neighbour routing to the bridge): warnings, the program never changes another container.
if [ "$docker_up" = 1 ]; then
  docker ps -aq | xargs -r docker inspect -f "$PUBLISHED" 2>/dev/null | while IFS='|' read -r cname all ports; do
    cname=${cname#/}
    case "$ours" in *" $cname "*) continue ;; esac
    [ "$all" != true ] || ports="${ports}every exposed port (-P) "
    [ -n "$ports" ] || continue
    warn "container $cname publishes ${ports% }: Docker also accepts traffic forwarded from other hosts to its container address on those ports, whatever host address they are bound to (left unchanged; see the README, Network exposure)"
  done
fi

# Archives on the registry's own disk survive a deleted or corrupted registry, not the disk or the server.
if [ -n "$BACKUP_DIR" ]; then
  nearest() { p=$1; while [ ! -e "$p" ]; do p=$(dirname "$p"); done; printf '%s' "$p"; }
  if [ "$(stat -c %d "$(nearest "$DATA_DIR")")" = "$(stat -c %d "$(nearest "$BACKUP_DIR")")" ]; then
    warn "backupDir $BACKUP_DIR is on the same filesystem as dataDir $DATA_DIR ($(df -P "$(nearest "$DATA_DIR")" | awk 'NR == 2 {print $6}')): its archives survive a deleted or corrupted registry, not a lost disk or server; copy them off the server (docs/operations.md, Backup now)"
  fi
fi

if [ -n "$problems" ]; then printf '%s' "$problems" >&2; exit 1; fi
printf '%s' "$takes"
echo 'preflight: ok'
