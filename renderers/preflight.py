"""The preflight check: one readable line per problem before anything changes, and what a hand-made setup hands over."""

from __future__ import annotations

import posixpath
import re

from renderers import shipped
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
    warn about what it leaves alone (host/steps/host/preflight.sh behind a header of these values). With several
    replicas each one's port is checked against its container."""
    pairs = zip(replica_names(container, replicas), replica_ports(registry_port, replicas), strict=True)
    header = {
        "CONTAINER": container,
        "DATA_DIR": data_dir,
        "DOMAIN": domain,
        "CADDYFILE": caddyfile,
        "SITE_RE": _site_address_regexp(domain),
        "MIN_MAJOR": str(MIN_CADDY[0]),
        "MIN_MINOR": str(MIN_CADDY[1]),
        "MANAGED_LABEL": MANAGED_LABEL,
        "REGISTRIES_FILE": registries_file or "",
        "K3S_SERVICE": k3s_service if require_k3s else "",
        "REPLICAS": " ".join(f"{name}:{port}" for name, port in pairs),
        "BACKUP_DIR": backup_dir or "",
    }
    return script(
        *(f"{key}={q(value)}" for key, value in header.items()),
        "# shellcheck disable=SC2016 # a Go template for docker inspect, not shell expansions",
        f"PUBLISHED={q(_PUBLISHED)}",
        shipped.text(shipped.PREFLIGHT).rstrip("\n"),
    )


# Every published port of every container (running or not): `NAME|PUBLISH_ALL|HOSTIP:HOSTPORT->PORT/PROTO ...`.
_PUBLISHED = (
    "{{.Name}}|{{.HostConfig.PublishAllPorts}}|{{range $port, $bindings := .HostConfig.PortBindings}}"
    "{{range $bindings}}{{if .HostIp}}{{.HostIp}}{{else}}0.0.0.0{{end}}:{{if .HostPort}}{{.HostPort}}{{else}}(any){{end}}->{{$port}} {{end}}{{end}}"
)


def node_preflight(node: str, service: str, *, registries_file: str, domain: str) -> str:
    """On a k3s node other than the registry's server: what the trust file steps need, each problem naming the node."""
    label = f"preflight: node {node}"
    return script(
        "problems=''",
        'fail() { problems="${problems}$1\n"; }',
        f"command -v python3 >/dev/null 2>&1 || fail {q(f'{label}: python3 is not installed (needed to merge registries.yaml)')}",
        f"systemctl cat {q(service + '.service')} >/dev/null 2>&1 || "
        f"fail {q(f'{label}: k3s is not installed: systemd unit {service}.service not found (set the node service to k3s or k3s-agent)')}",
        f"command -v k3s >/dev/null 2>&1 || fail {q(f'{label}: the k3s binary is not on the PATH (needed for k3s crictl pull)')}",
        'if [ -n "$problems" ]; then printf \'%s\' "$problems" >&2; exit 1; fi',
        f"[ ! -f {q(registries_file)} ] || echo \"{label}: takes over {registries_file} (mode $(stat -c '%a' {q(registries_file)})): "
        f'the entry for {domain} under configs is replaced, every other entry and key stays; the file becomes root:root 0600"',
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
