"""The registry's maintenance on the host: tag retention, garbage collection and backups in a window, and restore."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi

from components.host import Host, sha256
from providers.host_state import HostState
from renderers.maintenance_install import (
    backup_s3_config,
    backup_s3_remove,
    backup_s3_target,
    backup_s3_write,
    maintenance_files,
    maintenance_install,
    maintenance_remove,
)
from renderers.maintenance_script import MAINTENANCE_SCRIPT, MaintenanceSpec
from renderers.registry_env import StorageSpec
from renderers.retention_config import RetentionSpec
from renderers.systemd_units import BACKUP_UNIT, GC_UNIT, RECOVER_UNIT

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
    backup_s3: BackupS3 | None = None
    """Where every backup archive is also copied, off the server; None keeps them on the server only."""


@dataclass(frozen=True)
class BackupS3:
    endpoint: str | None
    """URL of the S3-compatible server; AWS S3 when None."""
    region: str
    """Region of the bucket."""
    bucket: str
    """The bucket (it must exist)."""
    prefix: str
    """Prefix of the copies inside it."""
    access_key: pulumi.Input[str]
    """Access key id (secret)."""
    secret_key: pulumi.Input[str]
    """Secret access key (secret)."""
    ca_file: str | None
    """PEM CA on the host for a private https endpoint."""


class Maintenance(pulumi.ComponentResource):
    """Owns /usr/local/sbin/registry-maintenance (and its retention program and settings), the registry-gc,
    registry-backup and recovery units and timers.

    Removing it removes those files only: the data directory and the backups stay.
    """

    script: pulumi.Output[str]
    state: HostState
    """Reads the installed files and the units back on refresh."""

    def __init__(self, name: str, args: MaintenanceArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE, name, None, opts)
        spec = pulumi.Output.all(args.host.data_dir, args.upstream).apply(
            lambda v: MaintenanceSpec(
                container=args.container,
                image=args.image,
                port=args.port,
                data_dir=v[0],
                env_file=args.env_file,
                backup_dir=args.backup_dir,
                backup_keep=args.backup_keep,
                backup_min_free_percent=args.backup_min_free_percent,
                backup_s3=backup_s3_target(args.backup_s3.endpoint, args.backup_s3.bucket, args.backup_s3.prefix)
                if args.backup_s3 else "",
                gc_delete_untagged=args.gc_delete_untagged,
                retention=args.retention,
                distribution=args.distribution,
                storage=args.storage,
                replicas=args.replicas,
            )
        )
        install_script = spec.apply(lambda sp: maintenance_install(sp, args.gc_schedule, args.backup_schedule))
        # What refresh reads back: every file the install writes, the timers enabled and waiting, the recovery unit
        # enabled.
        backup_schedule = "" if args.storage.s3 else args.backup_schedule
        units: dict[str, dict[str, str]] = {f"{RECOVER_UNIT}.service": {"enabled": "enabled"}}
        for unit, schedule in ((GC_UNIT, args.gc_schedule), (BACKUP_UNIT, backup_schedule)):
            if schedule:
                units[f"{unit}.timer"] = {"enabled": "enabled", "active": "active"}
        self.state = args.host.observe(f"{name}-state", {
            "files": spec.apply(lambda sp: {
                f.path: {"sha256": [sha256(f.content.rstrip("\n") + "\n")], "mode": f.mode, "owner": "root"}
                for f in maintenance_files(sp, args.gc_schedule, backup_schedule)
            }),
            "units": units,
        }, parent=self)
        install = args.host.run(
            f"{name}-install",
            create=install_script,
            delete=maintenance_remove(args.backup_dir),
            repairs=self.state.repairs,
            parent=self,
        )
        if args.backup_s3 is not None:
            s3 = args.backup_s3
            config = pulumi.Output.all(s3.access_key, s3.secret_key).apply(
                lambda keys: backup_s3_config(s3.endpoint, s3.region, s3.bucket, s3.prefix, keys[0], keys[1], s3.ca_file)
            )
            args.host.run(
                f"{name}-backup-s3", create=backup_s3_write(), delete=backup_s3_remove(),
                stdin=pulumi.Output.secret(config), parent=self,
            )
        self.script = install.create.apply(lambda _: MAINTENANCE_SCRIPT)
        self.register_outputs({"script": self.script})
