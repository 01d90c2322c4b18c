"""The deploy check: the live registry through its public name, as CI, k3s and an anonymous client see it."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from renderers import shipped
from renderers.probe_image import MANIFEST_TYPE, PROBE_PLATFORMS, PROBE_REPOSITORY, PROBE_TAG, probe_image
from renderers.shell import q


def curl_user_line(username: str, password: str) -> str:
    """One curl config line (`curl -K -`) carrying a credential, escaped the way curl reads quoted values."""
    value = f"{username}:{password}".replace("\\", "\\\\").replace('"', '\\"')
    return f'user = "{value}"'


def verify_stdin(push_user: str, push_password: str, pull_user: str, pull_password: str) -> str:
    """The deploy check's stdin: the push credential's curl config line, then the pull credential's."""
    return curl_user_line(push_user, push_password) + "\n" + curl_user_line(pull_user, pull_password) + "\n"


@dataclass(frozen=True)
class VerifySpec:
    domain: str
    ca_file: str | None = None
    """CA file on the host for the registry's certificate; the system trust store when None."""
    k3s: bool = False
    """Also pull the probe image through k3s's containerd (`k3s crictl pull`) with registries.yaml's credential."""
    allowlist: bool = False
    """Whether an allowlist guards the site (a 403 then most likely means the host's own address is not in it)."""
    deadline_seconds: int = 180
    """How long the site may take to answer (first certificate, Caddy reload, k3s restart)."""


def render_verify_script(spec: VerifySpec) -> str:
    """The deploy check, run on the host through the public name; credentials come as curl config lines on stdin."""
    image = probe_image("amd64")
    tls = f" --cacert {q(spec.ca_file)}" if spec.ca_file else ""
    lines = [
        "set -eu",
        f"REGISTRY={q(spec.domain)}",
        'BASE="https://$REGISTRY"',
        f"PROBE={q(PROBE_REPOSITORY)}",
        f"TAG={q(PROBE_TAG)}",
        f"MANIFEST_TYPE={q(MANIFEST_TYPE)}",
        f"DEADLINE={spec.deadline_seconds}",
        f"K3S={'yes' if spec.k3s else 'no'}",
        f"ALLOWLIST={'yes' if spec.allowlist else 'no'}",
        f"LAYER={q(base64.b64encode(image.layer).decode())}",
        f"LAYER_DIGEST={q(image.layer_digest)}",
        f'curl_tls() {{ curl{tls} "$@"; }}',
        "probe_files() {  # probe_files DIR: the config and manifest for this machine's platform; sets config_digest",
        '  case "$(uname -m)" in',
    ]
    for pattern, architecture, variant in PROBE_PLATFORMS:
        probe = probe_image(architecture, variant)
        lines += [
            f"    {pattern})",
            f"      printf '%s' {q(probe.config.decode())} >\"$1/config\"",
            f"      printf '%s' {q(probe.manifest.decode())} >\"$1/manifest\"",
            f"      config_digest={q(probe.config_digest)} ;;",
        ]
    lines += ["    *) return 1 ;;", "  esac", "}"]
    return "\n".join(lines) + "\n" + shipped.text(shipped.VERIFY)
