"""Tag retention's settings file and the retention program shipped beside the maintenance script."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from renderers import shipped
from renderers.probe_image import PROBE_REPOSITORY

if TYPE_CHECKING:  # the spec holds a RetentionSpec: a runtime import would be circular
    from renderers.maintenance_script import MaintenanceSpec

RETENTION_DIR = "/usr/local/lib/registry-maintenance"
RETENTION_SCRIPT = f"{RETENTION_DIR}/retention.py"
RETENTION_CONFIG = "/etc/registry/retention.json"


@dataclass(frozen=True)
class RetentionSpec:
    """Tag retention in the GC window (host/usr/local/lib/registry-maintenance/retention.py); the settings are installed even when it is off."""

    enabled: bool = False
    rules: tuple[tuple[str, int], ...] = ()
    """(repository glob, how many of the newest tags to keep); the first match wins."""
    keep_tags: tuple[str, ...] = ()
    """Regular expressions (whole tag): such tags always stay."""
    protect: tuple[str, ...] = ()
    """Digests never deleted."""
    k3s: bool = False
    """k3s runs on this host: if it cannot say which images it holds, nothing is deleted."""


def render_retention_config(spec: MaintenanceSpec) -> str:
    """/etc/registry/retention.json: what the retention script reads (no secret: the registry is reached on loopback)."""
    policy = spec.retention
    document = {
        "enabled": policy.enabled,
        "registry": f"http://127.0.0.1:{spec.port}",
        "data_dir": spec.data_dir,
        "rules": [{"repositories": pattern, "keep": keep} for pattern, keep in policy.rules],
        "keep_tags": list(policy.keep_tags),
        "protect": list(policy.protect),
        "k3s": "required" if policy.k3s else "if-present",
        # The deploy check's probe, not an application image: never counted, never deleted.
        "ignore_repositories": [PROBE_REPOSITORY],
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def retention_script() -> str:
    """The retention program, shipped as it is in this repository."""
    return shipped.text(shipped.RETENTION)
