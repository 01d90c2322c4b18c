"""Pure renderers for the shell scripts the program runs on the host.

Every value is quoted through `q`; no script ever contains a secret (secrets arrive on stdin).
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from collections.abc import Mapping
from pathlib import Path

from components.config import MAX_REPLICAS
from components.render import S3_CA_IN_CONTAINER, UPSTREAM_DIR, UPSTREAM_SLOTS

q = shlex.quote

HOST_TOOLS = Path(__file__).parent / "host_tools"
K3S_RESTART_PENDING = "/run/registry/k3s-restart-pending"
"""Left by the trust file step when it changed registries.yaml; the restart step restarts k3s only then."""

MIN_CADDY = (2, 8)
MAINTENANCE_LOCK = "/run/lock/registry-maintenance.lock"
"""Held by every step that stops or recreates the registry container (deploys, GC, backups, restore)."""
DRAIN_ENV = {"REGISTRY_HTTP_DRAINTIMEOUT": "20s"}
"""On SIGTERM the registry finishes requests in flight (a long blob download) before it exits."""
STOP_TIMEOUT = 25
MANAGED_LABEL = "io.registry-program.managed-by"
"""Label on the container the program runs: preflight tells it from a `registry` container made by hand."""


def as_root(script: str, prefix: str) -> str:
    """The command string that runs `script` with POSIX sh as root (prefix is '' or 'sudo -n ')."""
    return f"{prefix}sh -c {q(script)}"


def _script(*lines: str) -> str:
    return "\n".join(["set -eu", *lines]) + "\n"


def _host_tool(name: str, *args: str, suffix: str = "") -> str:
    """Run components/host_tools/NAME.py with the host's python3; its source travels in a here-document."""
    source = (HOST_TOOLS / f"{name}.py").read_text()
    marker = f"END_OF_{name.upper()}"
    return f"python3 - {' '.join(args)} <<'{marker}'{suffix}\n{source.rstrip()}\n{marker}"


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
        "if [ -n \"$problems\" ]; then printf '%s' \"$problems\" >&2; exit 1; fi",
        "printf '%s' \"$takes\"",
        "echo 'preflight: ok'",
    ]
    return _script(*lines)


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


def data_dir(path: str) -> str:
    """Create the registry's data directory (root-owned: registry:2 runs as root); an existing one is left as it is.

    registry:2 runs as root, so a hand-made directory's mode and owner already let it in (Docker without user
    namespace remapping); changing them could lock out whoever else reads the directory.
    """
    return _script(
        f"if [ -d {q(path)} ]; then echo \"data directory {path} kept as it is ($(stat -c '%U:%G %a' {q(path)}))\"",
        f"else install -d -m 0750 -o root -g root {q(path)}; fi",
        f"echo {q(path)}",
    )


def registry_listen_env(port: int) -> dict[str, str]:
    """Where the registry listens on the host's own network: 127.0.0.1:port, and no debug/metrics listener at all.

    registry:2's config has no `http.debug`, but an image whose config sets one (`:5001`) would listen on every
    host address under host networking; an empty value turns it off whatever the image's config says.
    """
    return {"REGISTRY_HTTP_ADDR": f"127.0.0.1:{port}", "REGISTRY_HTTP_DEBUG_ADDR": ""}


def registry_docker_run(
    name: str,
    image: str,
    port: int,
    data_dir: str,
    env_file: str,
    env: Mapping[str, str] | None = None,
    ca_file: str | None = None,
) -> str:
    """The one `docker run` line for the registry container; `env` adds settings (the maintenance window's).

    Host networking with the registry bound to 127.0.0.1: no docker-proxy, no container address and no DOCKER-chain
    ACCEPT rule, so nothing but the server itself can reach it, whatever Docker's version or firewall defaults.
    The data directory is mounted with S3 storage too (empty then): the image's VOLUME would otherwise leave an
    anonymous volume behind at every replacement. `ca_file` (a private S3 endpoint's CA) is mounted read-only.
    """
    listen = registry_listen_env(port)
    if set(listen) & set(env or {}):
        raise ValueError(f"the registry's listen settings are fixed: {sorted(set(listen) & set(env or {}))}")
    settings = {**listen, **(env or {})}
    extra = "".join(f"-e {q(f'{key}={value}')} " for key, value in settings.items())
    ca = f"-v {q(f'{ca_file}:{S3_CA_IN_CONTAINER}:ro')} " if ca_file else ""
    return (
        f"docker run -d --name {q(name)} --label {q(MANAGED_LABEL + '=pulumi')} --restart unless-stopped --network host "
        f"-v {q(f'{data_dir}:/var/lib/registry')} {ca}--env-file {q(env_file)} {extra}{q(image)}"
    )


def _env_file_then_lock(env_file: str) -> list[str]:
    """Write the env file from stdin (0600), then take the maintenance lock: never swap a container under a GC or
    backup window (wait for it to end)."""
    return [
        "umask 077",
        f"install -d -m 0700 {q(posixpath.dirname(env_file))}",
        f"cat > {q(env_file + '.new')}",
        f"mv {q(env_file + '.new')} {q(env_file)}",
        f"exec 9>{q(MAINTENANCE_LOCK)}",
        "flock -w 900 9 || { echo 'a registry maintenance window (GC, backup or restore) still runs after 15 minutes; retry later' >&2; exit 1; }",
    ]


def registry_run(name: str, image: str, port: int, data_dir: str, env_file: str, ca_file: str | None = None) -> str:
    """Write the env file from stdin (0600), then (re)create the container and wait for /v2/."""
    return _script(
        *_env_file_then_lock(env_file),
        f"docker stop -t {STOP_TIMEOUT} {q(name)} >/dev/null 2>&1 || true",
        f"docker rm -f {q(name)} >/dev/null 2>&1 || true",
        *([f"[ -f {q(ca_file)} ] || {{ echo 's3CaFile {ca_file} does not exist on the server' >&2; exit 1; }}"] if ca_file else []),
        f"{registry_docker_run(name, image, port, data_dir, env_file, DRAIN_ENV, ca_file)} >/dev/null",
        "i=0",
        f"until curl -fsS -o /dev/null {q(f'http://127.0.0.1:{port}/v2/')}; do",
        "  i=$((i + 1))",
        f"  if [ \"$i\" -ge 60 ]; then echo 'registry did not answer on 127.0.0.1:{port}/v2/ within 30 s' >&2; docker logs --tail 20 {q(name)} >&2; exit 1; fi",
        "  sleep 0.5",
        "done",
        f"echo {q(f'127.0.0.1:{port}')}",
    )


def registry_remove(name: str) -> str:
    """Stop the container (it drains requests in flight, a long blob download included), then remove it; the data
    directory stays."""
    return _script(
        f"docker stop -t {STOP_TIMEOUT} {q(name)} >/dev/null 2>&1 || true",
        f"docker rm -f {q(name)} >/dev/null 2>&1 || true",
    )


REPLICA_SETTLE_SECONDS = 1
"""After the upstream slots leave a replica, before it stops: a request that read the slots just before is sent."""


def replica_names(container: str, replicas: int) -> list[str]:
    """The replicas' container names: `registry` (as with one replica), then `registry-2`, `registry-3`, ..."""
    return [container, *(f"{container}-{i}" for i in range(2, replicas + 1))]


def replica_ports(port: int, replicas: int) -> list[int]:
    """Where each replica listens on 127.0.0.1: port, port + 1, ..."""
    return [port + i for i in range(replicas)]


def _wait_answers(name: str, port: int, seconds: int = 30) -> list[str]:
    return [
        "i=0",
        f"until curl -fsS -o /dev/null {q(f'http://127.0.0.1:{port}/v2/')}; do",
        "  i=$((i + 1))",
        f"  if [ \"$i\" -ge {seconds * 2} ]; then echo 'registry {name} did not answer on 127.0.0.1:{port}/v2/ within {seconds} s' >&2; docker logs --tail 20 {q(name)} >&2; exit 1; fi",
        "  sleep 0.5",
        "done",
    ]


def _upstream_slots() -> list[str]:
    """`slots PORT...`: point Caddy's upstream slots at those of the replicas that answer, in turn; when none answers
    they stay as they are. Each file is replaced whole (rename), as Caddy reads them at every request; Caddy's user
    reads them (0644: addresses, no secret). Without the slot folder (the site and its slots are gone: a destroy
    removes them while it removes the replicas) it writes nothing."""
    slot = f"{UPSTREAM_DIR}/$i"
    return [
        "slots() {",
        "  live=''",
        "  for port in \"$@\"; do",
        "    if curl -fs -o /dev/null --max-time 2 \"http://127.0.0.1:$port/v2/\"; then live=\"$live $port\"; fi",
        "  done",
        "  [ -n \"$live\" ] || return 0",
        "  i=1",
        f"  while [ \"$i\" -le {UPSTREAM_SLOTS} ]; do",
        "    for port in $live; do",
        f"      [ \"$i\" -le {UPSTREAM_SLOTS} ] || break",
        f"      {{ printf '127.0.0.1:%s\\n' \"$port\" > \"{slot}.new\" && chmod 0644 \"{slot}.new\" && "
        f"mv \"{slot}.new\" \"{slot}\"; }} 2>/dev/null || return 0",
        "      i=$((i + 1))",
        "    done",
        "  done",
        "}",
    ]


def _running(name: str) -> str:
    return f"[ \"$(docker inspect -f '{{{{.State.Running}}}}' {q(name)} 2>/dev/null)\" = true ]"


def registry_run_replicas(
    container: str, image: str, port: int, replicas: int, data_dir: str, env_file: str, ca_file: str | None = None
) -> str:
    """Several replicas: write the env file from stdin (0600), then recreate them one at a time.

    Before a running replica stops, Caddy's upstream slots move to the others that answer, so no new request goes
    to it and the stop only drains what it already has; it is recreated, and once it answers on /v2/ it is back in
    the slots. The slots are files Caddy reads at every request: nothing here reloads Caddy. Replicas beyond
    `replicas` (a scale-down) leave the slots, then stop, last.
    """
    lines = _env_file_then_lock(env_file)
    if ca_file:
        lines.append(f"[ -f {q(ca_file)} ] || {{ echo 's3CaFile {ca_file} does not exist on the server' >&2; exit 1; }}")
    lines += [f"install -d -m 0755 {q(UPSTREAM_DIR)}", *_upstream_slots()]
    names, ports = replica_names(container, replicas), replica_ports(port, replicas)
    for name, replica_port in zip(names, ports, strict=True):
        others = " ".join(str(p) for p in ports if p != replica_port)
        lines += [
            f"if {_running(name)}; then slots {others}; sleep {REPLICA_SETTLE_SECONDS}; fi",
            f"docker stop -t {STOP_TIMEOUT} {q(name)} >/dev/null 2>&1 || true",
            f"docker rm -f {q(name)} >/dev/null 2>&1 || true",
            f"{registry_docker_run(name, image, replica_port, data_dir, env_file, DRAIN_ENV, ca_file)} >/dev/null",
            *_wait_answers(name, replica_port),
            f"slots {' '.join(str(p) for p in ports)}",
            f"echo {q(f'{name}: 127.0.0.1:{replica_port}')}",
        ]
    for name in replica_names(container, MAX_REPLICAS)[replicas:]:
        lines.append(
            f"if docker inspect {q(name)} >/dev/null 2>&1; then sleep {REPLICA_SETTLE_SECONDS}; "
            f"docker stop -t {STOP_TIMEOUT} {q(name)} >/dev/null 2>&1 || true; "
            f"docker rm -f {q(name)} >/dev/null; echo {q(f'{name}: removed (fewer replicas)')}; fi"
        )
    return _script(*lines)


def registry_remove_replicas(container: str, port: int) -> str:
    """Remove every replica container there may be; the data stays.

    Caddy's upstream slots first move to the first replica (if it answers), so the others get no new request; each
    is stopped before it is removed, so it drains requests in flight (a blob download cut mid-stream cannot be
    retried); the first goes last.
    """
    names = replica_names(container, MAX_REPLICAS)
    others = " ".join(q(n) for n in names[1:])
    return _script(
        *_upstream_slots(),
        f"slots {port}",
        f"for name in {others}; do",
        "  docker inspect \"$name\" >/dev/null 2>&1 || continue",
        f"  sleep {REPLICA_SETTLE_SECONDS}",
        f"  docker stop -t {STOP_TIMEOUT} \"$name\" >/dev/null 2>&1 || true",
        "  docker rm -f \"$name\" >/dev/null 2>&1 || true",
        "done",
        f"docker stop -t {STOP_TIMEOUT} {q(container)} >/dev/null 2>&1 || true",
        f"docker rm -f {q(container)} >/dev/null 2>&1 || true",
    )


def upstream_slots_init(upstream: str) -> list[str]:
    """Slot files that do not exist yet point at `upstream` (the first replica): a site that reads them may go live."""
    slot = f"{UPSTREAM_DIR}/$i"
    return [
        f"install -d -m 0755 {q(UPSTREAM_DIR)}",
        f"i=1; while [ \"$i\" -le {UPSTREAM_SLOTS} ]; do",
        f"  if [ ! -s \"{slot}\" ]; then",
        f"    printf '%s\\n' {q(upstream)} > \"{slot}.new\"; chmod 0644 \"{slot}.new\"; mv \"{slot}.new\" \"{slot}\"",
        "  fi",
        "  i=$((i + 1))",
        "done",
    ]


def caddy_site_install(caddyfile: str, site_file: str, domain: str, upstream: str) -> str:
    """Install the site from stdin in one validated reload; an inline site for the domain is taken over.

    The main Caddyfile gets the import line (and loses an inline site for the same domain); when it changes, the
    original is kept beside it as Caddyfile.YYYYMMDD-HHMMSS.bak. On a failed `caddy validate` both files are put back.
    The upstream slots the site reads exist first (missing ones point at `upstream`, the first replica).
    """
    import_line = f"import {site_file}"
    return _script(
        f"site={q(site_file)}; main={q(caddyfile)}",
        "[ -f \"$main\" ] || { echo \"Caddyfile $main not found\" >&2; exit 1; }",
        "umask 027",
        'tmp=$(mktemp "$site.new.XXXXXX"); main_new=$(mktemp "$main.new.XXXXXX")',
        "trap 'rm -f \"$tmp\" \"$main_new\"' EXIT",
        'cat > "$tmp"',
        'chgrp caddy "$tmp" 2>/dev/null || true',
        'chmod 0640 "$tmp"',
        'backup="$main.$(date -u +%Y%m%d-%H%M%S).bak"',
        _host_tool("caddy_takeover", '"$main"', q(domain), q(import_line), '"$backup"', '"$main_new"'),
        *upstream_slots_init(upstream),
        'if cmp -s "$main_new" "$main" && [ -f "$site" ] && cmp -s "$tmp" "$site"; then echo "site unchanged"; exit 0; fi',
        'if [ -f "$site" ]; then cp -p "$site" "$site.bak"; fi',
        'mv "$tmp" "$site"',
        "main_changed=0",
        # cat, not mv: the main Caddyfile keeps its owner, mode and inode.
        # The backup is root-only: an inline site's basic_auth hashes were in it (and may still be live ones).
        'if ! cmp -s "$main_new" "$main"; then',
        '  main_changed=1; cp "$main" "$backup"; chmod 0600 "$backup"; cat "$main_new" > "$main"',
        "fi",
        'if ! out=$(caddy validate --adapter caddyfile --config "$main" 2>&1); then',
        '  if [ -f "$site.bak" ]; then mv "$site.bak" "$site"; else rm -f "$site"; fi',
        '  if [ "$main_changed" = 1 ]; then cat "$backup" > "$main"; rm -f "$backup"; fi',
        "  echo 'caddy validate rejected the new site; the previous configuration is still live:' >&2",
        "  printf '%s\\n' \"$out\" | grep -v '\"level\":\"info\"' >&2",
        "  exit 1",
        "fi",
        'rm -f "$site.bak"',
        "if systemctl is-active --quiet caddy; then systemctl reload caddy; else systemctl enable --now caddy; fi",
        "echo 'site installed and Caddy reloaded'",
        'if [ "$main_changed" = 1 ]; then echo "the previous $main is kept as $backup"; fi',
    )


GRACE_SEPARATOR = "# --- the site once the grace period is over ---"
"""Between the two sites a grace-period step receives on stdin: the one to install now, the one after expiry."""
EXPIRY_UNIT = "registry-credential-expiry"
EXPIRY_DIR = "/var/lib/registry-credential-expiry"
"""Root-only: the site to install when the grace period ends, and the scripts the expiry unit runs."""


def _expiry_disarm() -> list[str]:
    """Stop and remove the expiry timer and its staged site, if any (quiet when there is none)."""
    unit_dir = "/etc/systemd/system"
    return [
        f"if [ -e {q(f'{unit_dir}/{EXPIRY_UNIT}.timer')} ] || [ -e {q(EXPIRY_DIR)} ]; then",
        f"  systemctl disable --now {q(EXPIRY_UNIT + '.timer')} {q(EXPIRY_UNIT + '.service')} >/dev/null 2>&1 || true",
        f"  rm -f {q(f'{unit_dir}/{EXPIRY_UNIT}.timer')} {q(f'{unit_dir}/{EXPIRY_UNIT}.service')}",
        f"  rm -rf {q(EXPIRY_DIR)}",
        "  systemctl daemon-reload",
        "  echo 'grace period: expiry timer removed'",
        "fi",
    ]


HANDOVER_SEPARATOR = "# --- the settled site (what the handover step installs when it is no rotation) ---"
"""Between the two parts of the handover step's stdin: the site accepting both generations, the settled site."""


def handover_stdin(handover_site: str, settled_site: str) -> str:
    """The handover step's stdin: the site for a rotation (create) and the settled site (any other change)."""
    return f"{handover_site.rstrip()}\n{HANDOVER_SEPARATOR}\n{settled_site}"


def _with_stdin_part(part: int, script: str) -> str:
    """Run `script` with part 0 or 1 of this step's stdin (split at HANDOVER_SEPARATOR)."""
    keep = "found" if part else "!found"
    return _script(
        "umask 077",
        "work=$(mktemp -d)",
        "trap 'rm -rf \"$work\"' EXIT",
        f"awk -v sep={q(HANDOVER_SEPARATOR)} '$0 == sep {{ found = 1; next }} {keep} {{ print }}' > \"$work/in\"",
        f"cat > \"$work/step\" <<'REGISTRY_SITE_STEP'\n{script}REGISTRY_SITE_STEP",
        'sh "$work/step" < "$work/in"',
    )


def caddy_site_handover(caddyfile: str, site_file: str, domain: str, upstream: str) -> str:
    """A rotation's first step: the site accepting the new and the previous credentials goes live."""
    return _with_stdin_part(0, caddy_site_install(caddyfile, site_file, domain, upstream))


def caddy_site_handover_settle(caddyfile: str, site_file: str, domain: str, upstream: str, deadline: int) -> str:
    """The handover step's update (no rotation): the settled site goes live now, before the clients' steps."""
    return _with_stdin_part(1, caddy_site_settle(caddyfile, site_file, domain, upstream, deadline))


def caddy_site_settle(caddyfile: str, site_file: str, domain: str, upstream: str, deadline: int) -> str:
    """The site step after the trust file and the Flux secret switched: refuse the previous credentials.

    stdin is the site to install, or (grace period) the site accepting both generations, GRACE_SEPARATOR and the
    site without the previous one. Before `deadline` (Unix time) the first goes live and a persistent timer
    installs the second at the deadline (and at boot, should the host be down then); from the deadline on, the
    second goes live at once. Any earlier timer is replaced or removed.
    """
    install = caddy_site_install(caddyfile, site_file, domain, upstream)
    if deadline <= 0:
        return _script(*_expiry_disarm(), *install.splitlines()[1:])
    when = f"$(date -u -d @{deadline} '+%Y-%m-%d %H:%M:%S UTC')"
    timer = "\n".join([
        "[Unit]",
        "Description=End of the registry credential grace period: refuse the previous passwords",
        "[Timer]",
        f"OnCalendar={when}",
        "AccuracySec=1s",
        "Persistent=true",
        "[Install]",
        "WantedBy=timers.target",
    ])
    service = "\n".join([
        "[Unit]",
        "Description=Refuse the registry's previous credentials once the grace period is over",
        "After=caddy.service",
        f"ConditionPathExists={EXPIRY_DIR}/site",
        "[Service]",
        "Type=oneshot",
        f"ExecStart=/bin/sh {EXPIRY_DIR}/expire",
        "[Install]",
        "WantedBy=multi-user.target",
    ])
    expire = "\n".join([
        "set -eu",
        f"[ -f {EXPIRY_DIR}/site ] || exit 0",
        f"if [ \"$(date +%s)\" -lt {deadline} ]; then echo 'grace period not over yet'; exit 0; fi",
        f"sh {EXPIRY_DIR}/install < {EXPIRY_DIR}/site",
        f"rm -f {EXPIRY_DIR}/site",
        "echo 'grace period over: previous credentials refused'",
    ])
    return _script(
        "umask 077",
        'work=$(mktemp -d)',
        "trap 'rm -rf \"$work\"' EXIT",
        'cat > "$work/in"',
        f"cat > \"$work/install\" <<'REGISTRY_SITE_INSTALL'\n{install}REGISTRY_SITE_INSTALL",
        f"sep={q(GRACE_SEPARATOR)}",
        'if grep -qxF "$sep" "$work/in"; then',
        '  awk -v sep="$sep" \'$0 == sep { exit } { print }\' "$work/in" > "$work/now"',
        '  awk -v sep="$sep" \'found { print } $0 == sep { found = 1 }\' "$work/in" > "$work/later"',
        "else",
        '  cp "$work/in" "$work/later"; : > "$work/now"',
        "fi",
        f"if [ -s \"$work/now\" ] && [ \"$(date +%s)\" -lt {deadline} ]; then",
        '  sh "$work/install" < "$work/now"',
        f"  install -d -m 0700 {EXPIRY_DIR}",
        f'  cp "$work/install" {EXPIRY_DIR}/install',
        f'  cp "$work/later" {EXPIRY_DIR}/site',
        f"  cat > {EXPIRY_DIR}/expire <<'REGISTRY_EXPIRE'\n{expire}\nREGISTRY_EXPIRE",
        f"  printf '%s\\n' \"{timer}\" > /etc/systemd/system/{EXPIRY_UNIT}.timer",
        f"  cat > /etc/systemd/system/{EXPIRY_UNIT}.service <<'REGISTRY_EXPIRY_UNIT'\n{service}\nREGISTRY_EXPIRY_UNIT",
        f"  chmod 0644 /etc/systemd/system/{EXPIRY_UNIT}.timer /etc/systemd/system/{EXPIRY_UNIT}.service",
        "  systemctl daemon-reload",
        f"  systemctl enable --quiet {EXPIRY_UNIT}.service",
        f"  systemctl enable --quiet {EXPIRY_UNIT}.timer",
        f"  systemctl restart {EXPIRY_UNIT}.timer",
        f"  echo \"grace period: previous credentials accepted until {when}\"",
        "  exit 0",
        "fi",
        *_expiry_disarm(),
        'sh "$work/install" < "$work/later"',
    )


def caddy_site_remove(caddyfile: str, site_file: str) -> str:
    """Drop the import line and the site file (and any grace-period timer), then reload, then the upstream slots the
    site read; other sites are untouched."""
    import_line = f"import {site_file}"
    return _script(
        *_expiry_disarm(),
        f"site={q(site_file)}; main={q(caddyfile)}",
        f"if [ -f \"$main\" ]; then grep -vxF {q(import_line)} \"$main\" > \"$main.tmp\" || true; cat \"$main.tmp\" > \"$main\"; rm -f \"$main.tmp\"; fi",
        'rm -f "$site"',
        "if systemctl is-active --quiet caddy; then systemctl reload caddy; fi",
        # Moved aside first: the replicas' removal may run alongside (destroy), and a slot it writes then can only
        # fail (its folder is gone), never land in a folder being removed.
        f"if [ -d {q(UPSTREAM_DIR)} ]; then",
        f"  gone=$(mktemp -d {q(UPSTREAM_DIR + '.gone.')}XXXXXX)",
        f"  mv {q(UPSTREAM_DIR)} \"$gone/\"",
        "  rm -rf \"$gone\"",
        "fi",
    )


def trust_file_write(path: str) -> str:
    """Merge the program's entries (JSON on stdin) into registries.yaml, root:root 0600; other entries stay.

    The file is replaced only when its content changes, and only then is a k3s restart left pending.
    """
    return _script(
        "umask 077",
        f"f={q(path)}",
        'install -d -m 0755 "$(dirname "$f")"',
        'owned=$(mktemp "$f.owned.XXXXXX"); tmp=$(mktemp "$f.new.XXXXXX")',
        "trap 'rm -f \"$owned\" \"$tmp\"' EXIT",
        'cat > "$owned"',
        _host_tool("registries_merge", "merge", '"$f"', '"$owned"', '"$tmp"'),
        'chown root:root "$tmp"; chmod 0600 "$tmp"',
        'if [ -f "$f" ] && cmp -s "$tmp" "$f"; then',
        '  chown root:root "$f"; chmod 0600 "$f"',
        "  echo 'registries.yaml unchanged'",
        "else",
        '  mv "$tmp" "$f"',
        f"  mkdir -p {q(posixpath.dirname(K3S_RESTART_PENDING))}; : > {q(K3S_RESTART_PENDING)}",
        "  echo 'registries.yaml written'",
        "fi",
    )


def trust_file_remove(path: str, registry: str) -> str:
    """Remove the program's entries from registries.yaml; the file goes only when nothing else is left in it."""
    owned = json.dumps({"configs": {registry: {}}})
    return _script(
        "umask 077",
        f"f={q(path)}",
        '[ -f "$f" ] || exit 0',
        'owned=$(mktemp "$f.owned.XXXXXX"); tmp=$(mktemp "$f.new.XXXXXX")',
        "trap 'rm -f \"$owned\" \"$tmp\"' EXIT",
        f"printf '%s\\n' {q(owned)} > \"$owned\"",
        "rc=0",
        _host_tool("registries_merge", "remove", '"$f"', '"$owned"', '"$tmp"', suffix=" || rc=$?"),
        'case $rc in',
        '  0) chown root:root "$tmp"; chmod 0600 "$tmp"; mv "$tmp" "$f" ;;',
        '  3) rm -f "$f" ;;',
        '  *) exit "$rc" ;;',
        "esac",
    )


def k3s_restart(service: str) -> str:
    """Restart k3s if the trust file step changed registries.yaml and k3s runs (a stopped k3s reads it at start)."""
    return _script(
        f"if [ -e {q(K3S_RESTART_PENDING)} ]; then",
        f"  systemctl try-restart {q(service + '.service')}",
        f"  rm -f {q(K3S_RESTART_PENDING)}",
        f"  echo {q(f'{service} restarted if it was running')}",
        f"else echo {q(f'registries.yaml unchanged: {service} not restarted')}; fi",
    )

