"""The maintenance step: check the schedules, write the script, settings and units, enable the timers; and removal."""

from __future__ import annotations

import json
from dataclasses import dataclass

from renderers import shipped
from renderers.maintenance_script import (
    BACKUP_S3_CONFIG,
    BACKUP_S3_SCRIPT,
    MAINTENANCE_SCRIPT,
    MaintenanceSpec,
    render_maintenance_script,
)
from renderers.retention_config import (
    RETENTION_CONFIG,
    RETENTION_DIR,
    RETENTION_SCRIPT,
    render_retention_config,
    retention_script,
)
from renderers.shell import q
from renderers.systemd_units import (
    BACKUP_UNIT,
    GC_UNIT,
    RECOVER_UNIT,
    UNIT_DIR,
    render_recover_service,
    render_service,
    render_timer,
)


@dataclass(frozen=True)
class HostFile:
    path: str
    mode: str
    content: str


def maintenance_files(spec: MaintenanceSpec, gc_schedule: str, backup_schedule: str) -> list[HostFile]:
    """Every file the maintenance install writes; a timer only for a non-empty schedule."""
    files = [
        HostFile(MAINTENANCE_SCRIPT, "0755", render_maintenance_script(spec)),
        HostFile(RETENTION_SCRIPT, "0644", retention_script()),
        HostFile(BACKUP_S3_SCRIPT, "0644", shipped.text(shipped.BACKUP_S3)),
        HostFile(RETENTION_CONFIG, "0644", render_retention_config(spec)),
        HostFile(f"{UNIT_DIR}/{GC_UNIT}.service", "0644", render_service("Registry garbage collection (read-only window)", "gc")),
        HostFile(f"{UNIT_DIR}/{BACKUP_UNIT}.service", "0644", render_service("Registry backup (read-only window)", "backup")),
        HostFile(f"{UNIT_DIR}/{RECOVER_UNIT}.service", "0644", render_recover_service()),
    ]
    if gc_schedule:
        files.append(HostFile(f"{UNIT_DIR}/{GC_UNIT}.timer", "0644", render_timer("Registry garbage collection", gc_schedule)))
    if backup_schedule:
        files.append(HostFile(f"{UNIT_DIR}/{BACKUP_UNIT}.timer", "0644", render_timer("Registry backup", backup_schedule)))
    return files


def _heredoc(content: str, target: str) -> list[str]:
    marker = "REGISTRY_OPS_FILE_END"
    if marker in content:
        raise ValueError(f"{target}: the file content contains the here-document marker {marker}")
    return [f"cat > {target} <<'{marker}'", *content.rstrip("\n").split("\n"), marker]


def maintenance_install(spec: MaintenanceSpec, gc_schedule: str, backup_schedule: str) -> str:
    """Check the schedules, write the script and units, enable the timers; a disabled timer is removed.

    With S3 storage there is no backup timer: the data is not on this host (the store backs it up).
    """
    if spec.storage.s3:
        backup_schedule = ""
    files = maintenance_files(spec, gc_schedule, backup_schedule)
    lines = [
        "set -eu",
        "check_calendar() {  # check_calendar SETTING EXPRESSION: nothing is changed on a bad schedule",
        '  if ! out=$(systemd-analyze calendar "$2" 2>&1); then',
        "    printf '%s = %s is not a valid systemd OnCalendar expression:\\n%s\\n' \"$1\" \"$2\" \"$out\" >&2",
        "    exit 1",
        "  fi",
        "}",
    ]
    for setting, schedule in (("gcSchedule", gc_schedule), ("backupSchedule", backup_schedule)):
        if schedule:
            lines.append(f"check_calendar {setting} {q(schedule)}")
    lines += ["umask 022", "tmp=$(mktemp -d)", "trap 'rm -rf \"$tmp\"' EXIT"]
    for index, file in enumerate(files):
        lines += _heredoc(file.content, f'"$tmp/{index}"')
    lines.append(f"install -d -m 0755 {q(RETENTION_DIR)}")
    # /etc/registry holds the container's env file (0700); create it only if missing, never loosen it.
    lines.append("[ -d /etc/registry ] || install -d -m 0700 /etc/registry")
    for index, file in enumerate(files):
        lines.append(f'install -m {file.mode} "$tmp/{index}" {q(file.path)}')
    lines.append(f"install -d -m 0700 {q(spec.backup_dir)}")
    for unit, schedule in ((GC_UNIT, gc_schedule), (BACKUP_UNIT, backup_schedule)):
        if not schedule:
            timer = f"{UNIT_DIR}/{unit}.timer"
            lines.append(f"if [ -e {q(timer)} ]; then systemctl disable --now {q(unit + '.timer')} || true; rm -f {q(timer)}; fi")
    lines += ["systemctl daemon-reload", f"systemctl enable {q(RECOVER_UNIT + '.service')}"]
    for unit, action, schedule in ((GC_UNIT, "gc", gc_schedule), (BACKUP_UNIT, "backup", backup_schedule)):
        if action == "backup" and spec.storage.s3:
            lines.append(f"echo {q(f'{unit}.timer is not installed: with S3 storage the store backs the data up (versioning, replication)')}")
        elif schedule:
            lines.append(f"systemctl enable {q(unit + '.timer')}")
            # restart: a changed OnCalendar takes effect now, not at the next boot.
            lines.append(f"systemctl restart {q(unit + '.timer')}")
        else:
            lines.append(f"echo {q(f'{unit}.timer is disabled; run sudo {MAINTENANCE_SCRIPT} {action} by hand')}")
    lines.append("systemctl list-timers 'registry-*' --all --no-pager || true")
    return "\n".join(lines) + "\n"


def maintenance_remove(backup_dir: str) -> str:
    """Stop any running window (its trap makes the registry read-write), remove script and units; keep data and backups."""
    units = [f"{GC_UNIT}.timer", f"{BACKUP_UNIT}.timer", f"{GC_UNIT}.service", f"{BACKUP_UNIT}.service", f"{RECOVER_UNIT}.service"]
    lines = [
        "set -eu",
        f"systemctl stop {q(GC_UNIT + '.service')} {q(BACKUP_UNIT + '.service')} 2>/dev/null || true",
        f"systemctl disable --now {q(GC_UNIT + '.timer')} {q(BACKUP_UNIT + '.timer')} 2>/dev/null || true",
        f"systemctl disable {q(RECOVER_UNIT + '.service')} 2>/dev/null || true",
        "rm -f " + " ".join(q(f"{UNIT_DIR}/{unit}") for unit in units)
        + f" {q(MAINTENANCE_SCRIPT)} {q(RETENTION_SCRIPT)} {q(RETENTION_CONFIG)} {q(BACKUP_S3_SCRIPT)} {q(BACKUP_S3_CONFIG)}",
        f"rmdir {q(RETENTION_DIR)} 2>/dev/null || true",
        "systemctl daemon-reload",
        f"echo {q(f'maintenance timers removed; the backups in {backup_dir} and the registry data are kept')}",
    ]
    return "\n".join(lines) + "\n"


def backup_s3_config(endpoint: str | None, region: str, bucket: str, prefix: str, access_key: str, secret_key: str,
                     ca_file: str | None) -> str:
    """/etc/registry/backup-s3.json (it holds the credential: it reaches the host on stdin only)."""
    return json.dumps({
        "endpoint": endpoint or "", "region": region, "bucket": bucket, "prefix": prefix,
        "access_key": access_key, "secret_key": secret_key, "ca_file": ca_file or "",
    }, indent=2, sort_keys=True) + "\n"


def backup_s3_target(endpoint: str | None, bucket: str, prefix: str) -> str:
    """Where the off-server copies go, in words (no secret)."""
    return f"s3://{bucket}/{prefix.strip('/')}".rstrip("/") + f" at {endpoint or 'AWS S3'}"


def backup_s3_write() -> str:
    """Write the off-server destination from stdin, root-only, replacing the previous one whole."""
    return "\n".join([
        "set -eu",
        "umask 077",
        "[ -d /etc/registry ] || install -d -m 0700 /etc/registry",
        f"cat > {q(BACKUP_S3_CONFIG)}.new",
        f"mv {q(BACKUP_S3_CONFIG)}.new {q(BACKUP_S3_CONFIG)}",
        f"echo {q('off-server backup destination written to ' + BACKUP_S3_CONFIG + ' (root-only)')}",
    ]) + "\n"


def backup_s3_remove() -> str:
    return f"rm -f {q(BACKUP_S3_CONFIG)}\n"
