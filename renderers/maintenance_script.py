"""/usr/local/sbin/registry-maintenance: the header of values in front of host/usr/local/sbin/registry-maintenance.sh."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from renderers import shipped
from renderers.caddyfile import MAINTENANCE_FLAG
from renderers.registry_container import (
    DRAIN_ENV,
    MAINTENANCE_LOCK,
    REPLICA_SETTLE_SECONDS,
    STOP_TIMEOUT,
    registry_docker_run,
    replica_names,
    replica_ports,
)
from renderers.registry_env import StorageSpec
from renderers.retention_config import RETENTION_CONFIG, RETENTION_SCRIPT, RetentionSpec
from renderers.shell import q

MAINTENANCE_SCRIPT = "/usr/local/sbin/registry-maintenance"
LOCK_FILE = MAINTENANCE_LOCK
STATE_DIR = "/var/lib/registry-maintenance"
"""The outcome of the last gc, retention and backup run (`status` reads it)."""
BACKUP_S3_SCRIPT = "/usr/local/lib/registry-maintenance/backup_s3.py"
BACKUP_S3_CONFIG = "/etc/registry/backup-s3.json"
"""Root-only: where off-server copies go and the credential (written from secret stdin by maintenance-backup-s3)."""
REGISTRY_CONFIG = "/etc/docker/registry/config.yml"
"""The config file inside the registry:2 image; garbage-collect reads it (plus the container's env)."""
REGISTRY3_CONFIG = "/etc/distribution/config.yml"
"""The same file in the registry:3 image."""


def registry_config_path(distribution: int) -> str:
    """Where the image's own config file is, for `registry garbage-collect CONFIG`."""
    return REGISTRY3_CONFIG if distribution >= 3 else REGISTRY_CONFIG


READ_ONLY_ENV = {"REGISTRY_STORAGE_MAINTENANCE_READONLY": '{"enabled":true}'}


@dataclass(frozen=True)
class MaintenanceSpec:
    """What the maintenance script must know to recreate the registry container exactly as the program does."""

    container: str
    image: str
    port: int
    data_dir: str
    env_file: str
    backup_dir: str
    backup_keep: int
    gc_delete_untagged: bool = False
    retention: RetentionSpec = field(default_factory=RetentionSpec)
    distribution: int = 2
    """Distribution's major version (where the image keeps its config file)."""
    storage: StorageSpec = field(default_factory=StorageSpec)
    """filesystem (the data directory, archived by backups) or S3 (the store's own backups)."""
    replicas: int = 1
    """Registry containers sharing the storage: a window makes every one read-only, one at a time."""
    backup_s3: str = ""
    """Where off-server copies go, for messages (`s3://bucket/prefix at endpoint`); empty: none."""
    backup_min_free_percent: int = 10
    """Free share of backupDir's filesystem a backup must leave, or it is refused before the window opens."""


def render_maintenance_script(spec: MaintenanceSpec) -> str:
    """/usr/local/sbin/registry-maintenance: GC, backup, restore, recover and status around a read-only window."""
    ca = spec.storage.ca_file if spec.storage.s3 else None
    replicas = list(zip(replica_names(spec.container, spec.replicas), replica_ports(spec.port, spec.replicas), strict=True))

    def launcher(env: Mapping[str, str]) -> str:
        runs = [registry_docker_run(n, spec.image, p, spec.data_dir, spec.env_file, env, ca) for n, p in replicas]
        if len(runs) == 1:
            return f"{{ {runs[0]}; }}"
        cases = " ".join(f"{q(n)}) {run} ;;" for (n, _), run in zip(replicas, runs, strict=True))
        return f'{{ case "$1" in {cases} *) return 1 ;; esac; }}'

    launch, launch_ro = launcher(DRAIN_ENV), launcher({**DRAIN_ENV, **READ_ONLY_ENV})
    untagged = " --delete-untagged" if spec.gc_delete_untagged else ""
    header = [
        "#!/bin/sh",
        "# Managed by the registry Pulumi program; edits are overwritten.",
        "# A maintenance window runs the registry read-only (Distribution's storage.maintenance.readonly),",
        "# so garbage collection and backups see a store no push can change underneath them.",
        "set -eu",
        "",
        f"NAME={q(spec.container)}",
        f"PORT={spec.port}",
        f"REPLICAS={q(' '.join(f'{n}:{p}' for n, p in replicas))}",
        f"SETTLE={REPLICA_SETTLE_SECONDS}",
        f"DATA_DIR={q(spec.data_dir)}",
        f"BACKUP_DIR={q(spec.backup_dir)}",
        f"KEEP={spec.backup_keep}",
        f"MIN_FREE_PERCENT={spec.backup_min_free_percent}",
        f"BACKUP_S3={q(spec.backup_s3)}",
        f"STATE_DIR={q(STATE_DIR)}",
        f"FLAG={q(MAINTENANCE_FLAG)}",
        f"LOCK={q(LOCK_FILE)}",
        f"CONFIG={q(registry_config_path(spec.distribution))}",
        f"STORAGE={q(spec.storage.describe())}",
        f"STOP_TIMEOUT={STOP_TIMEOUT}",
        f"RETENTION={'on' if spec.retention.enabled else 'off'}",
        "",
        # --delete-untagged is off by default: in 2.8 it deletes the per-platform children of multi-arch images.
        f'garbage_collect() {{ docker exec "$NAME" /bin/registry garbage-collect "$@"{untagged} "$CONFIG"; }}',
        "# The container exactly as the program creates it, plus a drain timeout (and the read-only switch).",
        f"launch_read_write() {launch}",
        f"launch_read_only() {launch_ro}",
        f"retention() {{ python3 -I {q(RETENTION_SCRIPT)} {q(RETENTION_CONFIG)} \"$@\"; }}",
        f"backup_s3() {{ python3 -I {q(BACKUP_S3_SCRIPT)} {q(BACKUP_S3_CONFIG)} \"$@\"; }}",
    ]
    return "\n".join(header) + "\n\n" + shipped.text(shipped.MAINTENANCE)
