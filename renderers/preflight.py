"""The preflight check: one readable line per problem before anything changes, and what a hand-made setup hands over."""

from __future__ import annotations

import posixpath
import re

from renderers.registry_container import MANAGED_LABEL, replica_names, replica_ports
from renderers.shell import q, script

MIN_CADDY = (2, 8)


def _site_address_regexp(domain: str) -> str:
    """An ERE for a Caddyfile line that opens a site for DOMAIN (https or no scheme, port 443 or none)."""
    return f"^[[:space:]]*([^#]*[[:space:],])?(https://)?{re.escape(domain)}(:443)?[[:space:]]*(,|\\{{)"


def preflight(
    require_k3s: bool,
    k3s_service: str,
    *,
    registry_port: int,
    container: str,
    data_dir: str,
    domain: str,
    caddyfile: str,
    registries_file: str | None,
    replicas: int = 1,
    backup_dir: str | None = None,
) -> str:
    """Fail with one readable line per problem before anything is changed; say what a hand-made setup hands over;
    warn about what it leaves alone. With several replicas each one's port is checked against its container."""
    lines = [
        "problems=''; takes=''",
        "fail() { problems=\"${problems}preflight: $1\n\"; }",
        "take() { takes=\"${takes}preflight: takes over $1\n\"; }",
        "command -v curl >/dev/null 2>&1 || fail 'curl is not installed (needed to check the registry answers)'",
        "warn() { printf 'preflight: warning: %s\\n' \"$1\" >&2; }",
        "command -v python3 >/dev/null 2>&1 || fail 'python3 is not installed (needed to merge registries.yaml, to take over an inline Caddy site and for tag retention)'",
        "docker_up=0",
        "if ! command -v docker >/dev/null 2>&1; then fail 'Docker is not installed (install docker.io or docker-ce)'",
        "elif ! docker info >/dev/null 2>&1; then fail 'Docker is installed but the engine is not running'",
        "else docker_up=1; fi",
        f"if [ \"$docker_up\" = 1 ] && docker inspect {q(container)} >/dev/null 2>&1; then",
        f"  src=$(docker inspect -f '{{{{range .Mounts}}}}{{{{if eq .Destination \"/var/lib/registry\"}}}}{{{{.Source}}}}{{{{end}}}}{{{{end}}}}' {q(container)})",
        f"  image=$(docker inspect -f '{{{{.Config.Image}}}}' {q(container)})",
        f"  managed=$(docker inspect -f '{{{{index .Config.Labels \"{MANAGED_LABEL}\"}}}}' {q(container)} 2>/dev/null || true)",
        f"  if [ -n \"$src\" ] && [ \"$src\" != {q(data_dir)} ]; then",
        f"    fail \"the existing container {container} keeps its images in $src, not in dataDir {data_dir}: set dataDir to $src to keep them\"",
        "  elif [ \"$managed\" != pulumi ]; then",
        f"    take \"the existing container {container} ($image): replaced by the program's; Caddy holds pulls across the swap; "
        f"the data directory {data_dir} is kept as it is ($(stat -c '%U:%G %a' {q(data_dir)} 2>/dev/null || echo 'not there yet'))\"",
        "  fi",
        "fi",
        "if ! command -v caddy >/dev/null 2>&1; then fail 'Caddy is not installed (2.8 or later is required)'",
        "else",
        "  v=$(caddy version | sed -n 's/^v\\{0,1\\}\\([0-9][0-9]*\\)\\.\\([0-9][0-9]*\\).*/\\1 \\2/p' | head -n 1)",
        "  major=${v% *}; minor=${v#* }",
        f"  if [ -z \"$v\" ] || [ \"$major\" -lt {MIN_CADDY[0]} ] || {{ [ \"$major\" -eq {MIN_CADDY[0]} ] && [ \"$minor\" -lt {MIN_CADDY[1]} ]; }}; then",
        f"    fail \"Caddy $(caddy version | head -n 1) is too old: {MIN_CADDY[0]}.{MIN_CADDY[1]} or later is required (basic_auth)\"",
        "  fi",
        "  systemctl cat caddy.service >/dev/null 2>&1 || fail 'Caddy is installed but caddy.service is missing (install Caddy from its Debian/Ubuntu package)'",
        "fi",
        f"if [ -f {q(caddyfile)} ] && at=$(grep -nE {q(_site_address_regexp(domain))} {q(caddyfile)} | cut -d: -f1 | paste -sd ' ' -) && [ -n \"$at\" ]; then",
        f"  take \"the inline site for {domain} in {caddyfile} (line $at): replaced by the program's site in one validated reload; the original is kept as {caddyfile}.<date>-<time>.bak\"",
        "fi",
    ]
    if registries_file is not None:
        lines.append(
            f"[ ! -f {q(registries_file)} ] || take \"{registries_file} (mode $(stat -c '%a' {q(registries_file)})): "
            f"the entry for {domain} under configs is replaced, every other entry and key stays; the file becomes root:root 0600\""
        )
    if require_k3s:
        lines.append(
            f"systemctl cat {q(k3s_service + '.service')} >/dev/null 2>&1 || "
            f"fail {q(f'k3s is not installed: systemd unit {k3s_service}.service not found (set k3sTrust=false to skip the trust file)')}"
        )
    lines += [
        "holders=$(ss -Hltnp 'sport = :80 or sport = :443' 2>/dev/null | grep 'users:((' | grep -v 'users:((\"caddy\"' || true)",
        "[ -z \"$holders\" ] || fail \"ports 80/443 are held by something other than Caddy: $holders\"",
        *_registry_port_checks(registry_port, container, replicas),
        *(_same_filesystem_warning(data_dir, backup_dir) if backup_dir else []),
        "if [ -n \"$problems\" ]; then printf '%s' \"$problems\" >&2; exit 1; fi",
        "printf '%s' \"$takes\"",
        "echo 'preflight: ok'",
    ]
    return script(*lines)


def _same_filesystem_warning(data_dir: str, backup_dir: str) -> list[str]:
    """Archives on the registry's own disk survive a deleted or corrupted registry, not the disk or the server."""
    return [
        "nearest() { p=$1; while [ ! -e \"$p\" ]; do p=$(dirname \"$p\"); done; printf '%s' \"$p\"; }",
        f"if [ \"$(stat -c %d \"$(nearest {q(data_dir)})\")\" = \"$(stat -c %d \"$(nearest {q(backup_dir)})\")\" ]; then",
        f"  warn \"backupDir {backup_dir} is on the same filesystem as dataDir {data_dir} ($(df -P \"$(nearest {q(data_dir)})\" | "
        "awk 'NR == 2 {print $6}')): its archives survive a deleted or corrupted registry, not a lost disk or server; "
        "copy them off the server (docs/operations.md, Backup now)\"",
        "fi",
    ]


# Every published port of every container (running or not): `NAME|PUBLISH_ALL|HOSTIP:HOSTPORT->PORT/PROTO ...`.
_PUBLISHED = (
    "{{.Name}}|{{.HostConfig.PublishAllPorts}}|{{range $port, $bindings := .HostConfig.PortBindings}}"
    "{{range $bindings}}{{if .HostIp}}{{.HostIp}}{{else}}0.0.0.0{{end}}:{{if .HostPort}}{{.HostPort}}{{else}}(any){{end}}->{{$port}} {{end}}{{end}}"
)


def _registry_port_checks(port: int, container: str, replicas: int = 1) -> list[str]:
    """The registry's loopback port is free or our container's; every other published container port is named.

    A port published with `-p` goes through docker-proxy and Docker's DOCKER chain, which accepts forwarded
    traffic to the container's own address on that port from any neighbour routing to the bridge: those are
    warnings (the program never changes another container), not failures.
    """
    holder_checks: list[str] = []
    for name, replica_port in zip(replica_names(container, replicas), replica_ports(port, replicas), strict=True):
        holder_checks += _port_holder_check(replica_port, name)
    ours = ""
    if replicas > 1:
        ours = "    case \"$cname\" in " + "|".join(q(n) for n in replica_names(container, replicas)[1:]) + ") continue ;; esac"
    return [
        *holder_checks,
        *([f"name={q(container)}"] if replicas > 1 else []),
        "if [ \"$docker_up\" = 1 ]; then",
        "  # shellcheck disable=SC2016 # a Go template for docker inspect, not shell expansions",
        f"  docker ps -aq | xargs -r docker inspect -f {q(_PUBLISHED)} 2>/dev/null | while IFS='|' read -r cname all ports; do",
        "    cname=${cname#/}",
        "    [ \"$cname\" != \"$name\" ] || continue",
        *([ours] if ours else []),
        "    [ \"$all\" != true ] || ports=\"${ports}every exposed port (-P) \"",
        "    [ -n \"$ports\" ] || continue",
        "    warn \"container $cname publishes ${ports% }: Docker also accepts traffic forwarded from other hosts to its container address on those ports, whatever host address they are bound to (left unchanged; see the README, Network exposure)\"",
        "  done",
        "fi",
    ]


def _port_holder_check(port: int, container: str) -> list[str]:
    """This port is free on the server, or held by this (replica's) container."""
    return [
        f"port={port}; name={q(container)}",
        "holders=$(ss -Hltnp \"sport = :$port\" 2>/dev/null || true)",
        "if [ -n \"$holders\" ] && [ \"$docker_up\" = 1 ]; then",
        # Ours: a process of the `registry` container (host networking), or docker-proxy publishing that
        # container's port (a container made by hand the seed's way; the deploy step replaces it).
        "  own=\" $(docker top \"$name\" -eo pid 2>/dev/null | sed 1d | tr -s ' \\n' ' ') \"",
        "  if docker port \"$name\" 2>/dev/null | grep -q \":$port\\$\"; then published=1; else published=0; fi",
        "  foreign=$(printf '%s\\n' \"$holders\" | while IFS= read -r line; do",
        "    ok=0",
        "    for pid in $(printf '%s\\n' \"$line\" | grep -o 'pid=[0-9]*' | cut -d= -f2); do",
        "      case \"$own\" in *\" $pid \"*) ok=1 ;; esac",
        "    done",
        "    case \"$line\" in *'((\"docker-proxy\"'*) [ \"$published\" = 0 ] || ok=1 ;; esac",
        "    [ \"$ok\" = 1 ] || printf '%s; ' \"$line\"",
        "  done)",
        "  holders=$foreign",
        "fi",
        "[ -z \"$holders\" ] || fail \"port $port (the registry's, on 127.0.0.1) is held by something other than the $name container: ${holders%; }\"",
    ]


def node_preflight(node: str, service: str, *, registries_file: str, domain: str) -> str:
    """On a k3s node other than the registry's server: what the trust file steps need, each problem naming the node."""
    label = f"preflight: node {node}"
    return script(
        "problems=''",
        "fail() { problems=\"${problems}$1\n\"; }",
        f"command -v python3 >/dev/null 2>&1 || fail {q(f'{label}: python3 is not installed (needed to merge registries.yaml)')}",
        f"systemctl cat {q(service + '.service')} >/dev/null 2>&1 || "
        f"fail {q(f'{label}: k3s is not installed: systemd unit {service}.service not found (set the node service to k3s or k3s-agent)')}",
        f"command -v k3s >/dev/null 2>&1 || fail {q(f'{label}: the k3s binary is not on the PATH (needed for k3s crictl pull)')}",
        "if [ -n \"$problems\" ]; then printf '%s' \"$problems\" >&2; exit 1; fi",
        f"[ ! -f {q(registries_file)} ] || echo \"{label}: takes over {registries_file} (mode $(stat -c '%a' {q(registries_file)})): "
        f"the entry for {domain} under configs is replaced, every other entry and key stays; the file becomes root:root 0600\"",
        f"echo {q(f'{label}: ok')}",
    )


def takeover_notice(container: str, domain: str, caddyfile: str, registries_file: str | None) -> str:
    """What the first update does to a registry set up by hand; shown in every preview (preflight names what it finds)."""
    parts = [
        f"a container named {container} is replaced by the program's (its data directory is kept as it is)",
        f"an inline site for {domain} in {caddyfile} is replaced by `import` of the program's site in one validated "
        f"reload (the original file is kept beside it as {posixpath.basename(caddyfile)}.YYYYMMDD-HHMMSS.bak; "
        "other sites stay)",
    ]
    if registries_file is not None:
        parts.append(
            f"{registries_file} is merged: the program writes its entry for {domain} under configs, every other "
            "entry and key stays, and k3s restarts only if the content changed"
        )
    return "On a server set up by hand, the first update takes over: " + "; ".join(parts) + "."
