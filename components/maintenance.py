"""The registry's maintenance on the host: tag retention, garbage collection and backups in a window, and restore."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi

from components.host import Host
from renderers.maintenance_install import maintenance_install, maintenance_remove
from renderers.maintenance_script import MAINTENANCE_SCRIPT, MaintenanceSpec
from renderers.registry_env import StorageSpec
from renderers.retention_config import RetentionSpec

TYPE = "registry:index:Maintenance"


@dataclass(frozen=True)
class MaintenanceArgs:
    host: Host
    """Where the registry container runs."""
    upstream: pulumi.Input[str]
    """The registry's loopback address (ties the install to the container it recreates)."""
    container: str
    """Name of the registry container."""
    image: str
    """Registry image, as the container runs it."""
    port: int
    """Loopback port the registry is published on."""
    env_file: str
    """The container's --env-file."""
    gc_schedule: str
    """systemd OnCalendar of the garbage-collection timer; empty disables it."""
    gc_delete_untagged: bool
    """Pass --delete-untagged to garbage-collect."""
    backup_schedule: str
    """systemd OnCalendar of the backup timer; empty disables it."""
    backup_dir: str
    """Where backup archives go; never removed."""
    backup_keep: int
    """How many archives to keep."""
    backup_min_free_percent: int = 10
    """Free share of backupDir's filesystem a backup must leave, or it is refused before it starts."""
    retention: RetentionSpec = field(default_factory=RetentionSpec)
    """Tag retention inside the GC window (off by default)."""
    distribution: int = 2
    """Distribution's major version the image runs."""
    storage: StorageSpec = field(default_factory=StorageSpec)
    """The data directory or an S3-compatible bucket (no archive backups then)."""
    replicas: int = 1
    """Registry containers sharing the storage."""


class Maintenance(pulumi.ComponentResource):
    """Owns /usr/local/sbin/registry-maintenance (and its retention program and settings), the registry-gc,
    registry-backup and recovery units and timers.

    Removing it removes those files only: the data directory and the backups stay.
    """

    script: pulumi.Output[str]

    def __init__(self, name: str, args: MaintenanceArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE, name, None, opts)
        install_script = pulumi.Output.all(args.host.data_dir, args.upstream).apply(
            lambda v: maintenance_install(
                MaintenanceSpec(
                    container=args.container,
                    image=args.image,
                    port=args.port,
                    data_dir=v[0],
                    env_file=args.env_file,
                    backup_dir=args.backup_dir,
                    backup_keep=args.backup_keep,
                    backup_min_free_percent=args.backup_min_free_percent,
                    gc_delete_untagged=args.gc_delete_untagged,
                    retention=args.retention,
                    distribution=args.distribution,
                    storage=args.storage,
                    replicas=args.replicas,
                ),
                args.gc_schedule,
                args.backup_schedule,
            )
        )
        install = args.host.run(
            f"{name}-install",
            create=install_script,
            delete=maintenance_remove(args.backup_dir),
            parent=self,
        )
        self.script = install.create.apply(lambda _: MAINTENANCE_SCRIPT)
        self.register_outputs({"script": self.script})
