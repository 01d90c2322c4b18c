"""The files under host/ that ship to the server as they are: their text, and the Python ones as modules here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

HOST = Path(__file__).resolve().parent.parent / "host"
"""Mirrors the server: host/usr/... lands at /usr/...; host/steps/<component>/ runs inside that component's steps."""
RETENTION = "usr/local/lib/registry-maintenance/retention.py"
CADDY_TAKEOVER = "steps/caddy-site/caddy_takeover.py"
REGISTRIES_MERGE = "steps/k3s-trust/registries_merge.py"
BACKUP_S3 = "usr/local/lib/registry-maintenance/backup_s3.py"
"""Off-server copies of the backup archives in an S3-compatible bucket (stdlib SigV4)."""
MAINTENANCE = "usr/local/sbin/registry-maintenance.sh"
"""The body of /usr/local/sbin/registry-maintenance; renderers/maintenance_script.py puts the header in front."""
VERIFY = "steps/verify/check.sh"
"""The body of the deploy check; renderers/verify_script.py puts the header in front."""
PREFLIGHT = "steps/host/preflight.sh"
"""The body of the server's preflight check; renderers/preflight.py puts the header in front."""
NODE_PULL = "steps/k3s-trust/node-pull.sh"
"""The body of the probe pull through one node's k3s; renderers/k3s_trust.py puts the header in front."""


def text(path: str) -> str:
    """The content of host/PATH, as it ships."""
    return (HOST / path).read_text(encoding="utf-8")


def module(path: str) -> ModuleType:
    """host/PATH, a standard-library Python program, imported here (once) for the renderers and the tests."""
    name = "shipped_" + Path(path).stem
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HOST / path)
        if spec is None or spec.loader is None:
            raise ImportError(f"host/{path} is not a Python file")
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[name] = loaded  # dataclasses look their module up while the class is created
        spec.loader.exec_module(loaded)
    return sys.modules[name]
