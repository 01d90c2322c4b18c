"""The trust file steps: merge the program's entries into registries.yaml, remove them, restart k3s when it changed."""

from __future__ import annotations

import json
import posixpath

from renderers import shipped
from renderers.probe_image import PROBE_REPOSITORY, PROBE_TAG
from renderers.shell import host_tool, q, script

K3S_RESTART_PENDING = "/run/registry/k3s-restart-pending"
"""Left by the trust file step when it changed registries.yaml; the restart step restarts k3s only then."""


def trust_file_write(path: str) -> str:
    """Merge the program's entries (JSON on stdin) into registries.yaml, root:root 0600; other entries stay.

    The file is replaced only when its content changes, and only then is a k3s restart left pending.
    """
    return script(
        "umask 077",
        f"f={q(path)}",
        'install -d -m 0755 "$(dirname "$f")"',
        'owned=$(mktemp "$f.owned.XXXXXX"); tmp=$(mktemp "$f.new.XXXXXX")',
        "trap 'rm -f \"$owned\" \"$tmp\"' EXIT",
        'cat > "$owned"',
        host_tool(shipped.REGISTRIES_MERGE, "merge", '"$f"', '"$owned"', '"$tmp"'),
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
    return script(
        "umask 077",
        f"f={q(path)}",
        '[ -f "$f" ] || exit 0',
        'owned=$(mktemp "$f.owned.XXXXXX"); tmp=$(mktemp "$f.new.XXXXXX")',
        "trap 'rm -f \"$owned\" \"$tmp\"' EXIT",
        f"printf '%s\\n' {q(owned)} > \"$owned\"",
        "rc=0",
        host_tool(shipped.REGISTRIES_MERGE, "remove", '"$f"', '"$owned"', '"$tmp"', suffix=" || rc=$?"),
        'case $rc in',
        '  0) chown root:root "$tmp"; chmod 0600 "$tmp"; mv "$tmp" "$f" ;;',
        '  3) rm -f "$f" ;;',
        '  *) exit "$rc" ;;',
        "esac",
    )


def k3s_restart(service: str) -> str:
    """Restart k3s if the trust file step changed registries.yaml and k3s runs (a stopped k3s reads it at start)."""
    return script(
        f"if [ -e {q(K3S_RESTART_PENDING)} ]; then",
        f"  systemctl try-restart {q(service + '.service')}",
        f"  rm -f {q(K3S_RESTART_PENDING)}",
        f"  echo {q(f'{service} restarted if it was running')}",
        f"else echo {q(f'registries.yaml unchanged: {service} not restarted')}; fi",
    )


def node_pull(node: str, service: str, registry: str, *, accept_missing: bool, deadline: int = 180) -> str:
    """Wait until the node's k3s unit is active and its containerd pulls the probe image with the trust file's
    credential; with accept_missing the registry's "not found" for a probe not pushed yet is enough."""
    return script(
        f"NODE={q(node)}",
        f"SERVICE={q(service)}",
        f"REF={q(f'{registry}/{PROBE_REPOSITORY}:{PROBE_TAG}')}",
        f"DEADLINE={deadline}",
        f"ACCEPT_MISSING={'yes' if accept_missing else 'no'}",
        shipped.text(shipped.NODE_PULL).rstrip("\n"),
    )
