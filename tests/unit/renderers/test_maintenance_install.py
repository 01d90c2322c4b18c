"""renderers/maintenance_install.py: the files, units and timers the maintenance step writes, and their removal."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import pytest

from renderers import shipped
from renderers.maintenance_install import _heredoc, maintenance_install, maintenance_remove
from renderers.maintenance_script import (
    MAINTENANCE_SCRIPT,
    render_maintenance_script,
)
from renderers.retention_config import (
    RETENTION_CONFIG,
    RETENTION_SCRIPT,
    render_retention_config,
)
from tests.unit.support import (
    BACKUP_SCHEDULE,
    GC_SCHEDULE,
    RETENTION_SPEC,
    SPEC,
    heredoc_files,
    shellcheck,
)


def unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def test_install_writes_script_services_and_both_timers() -> None:
    files = heredoc_files(maintenance_install(SPEC, GC_SCHEDULE, BACKUP_SCHEDULE))
    assert files[MAINTENANCE_SCRIPT] == render_maintenance_script(SPEC)
    gc_timer = unit(files["/etc/systemd/system/registry-gc.timer"])
    assert dict(gc_timer["Timer"]) == {"OnCalendar": GC_SCHEDULE, "Persistent": "true", "RandomizedDelaySec": "60"}
    assert gc_timer["Install"]["WantedBy"] == "timers.target"
    assert unit(files["/etc/systemd/system/registry-backup.timer"])["Timer"]["OnCalendar"] == BACKUP_SCHEDULE
    for action in ("gc", "backup"):
        service = unit(files[f"/etc/systemd/system/registry-{action}.service"])
        assert service["Service"]["Type"] == "oneshot"
        assert service["Service"]["ExecStart"] == f"/usr/local/sbin/registry-maintenance {action}"
        assert service["Unit"]["After"].split()[0] == "docker.service"
    recover = unit(files["/etc/systemd/system/registry-maintenance-recover.service"])
    assert recover["Service"]["ExecStart"] == "/usr/local/sbin/registry-maintenance recover"
    assert recover["Install"]["WantedBy"] == "multi-user.target"


def test_install_checks_every_schedule_before_writing_anything() -> None:
    install = maintenance_install(SPEC, GC_SCHEDULE, BACKUP_SCHEDULE)
    lines = install.splitlines()
    checks = [i for i, line in enumerate(lines) if line.startswith("check_calendar ")]
    assert [lines[i] for i in checks] == [
        f"check_calendar gcSchedule {shlex.quote(GC_SCHEDULE)}",
        f"check_calendar backupSchedule {shlex.quote(BACKUP_SCHEDULE)}",
    ]
    first_write = next(i for i, line in enumerate(lines) if line.startswith("install "))
    assert max(checks) < first_write
    assert "systemd-analyze calendar" in install


def test_install_enables_and_restarts_timers_so_a_new_schedule_applies_at_once() -> None:
    install = maintenance_install(SPEC, GC_SCHEDULE, BACKUP_SCHEDULE)
    lines = install.splitlines()
    reload_at = lines.index("systemctl daemon-reload")
    for timer in ("registry-gc.timer", "registry-backup.timer"):
        assert lines.index(f"systemctl enable {timer}") > reload_at
        assert lines.index(f"systemctl restart {timer}") > lines.index(f"systemctl enable {timer}")
    assert "systemctl enable registry-maintenance-recover.service" in lines


def test_empty_schedule_removes_that_timer_but_keeps_the_service() -> None:
    install = maintenance_install(SPEC, "", BACKUP_SCHEDULE)
    files = heredoc_files(install)
    assert "/etc/systemd/system/registry-gc.timer" not in files
    assert "/etc/systemd/system/registry-gc.service" in files
    assert (
        "if [ -e /etc/systemd/system/registry-gc.timer ]; then systemctl disable --now registry-gc.timer || true; "
        "rm -f /etc/systemd/system/registry-gc.timer; fi"
    ) in install.splitlines()
    assert "systemctl enable registry-gc.timer" not in install
    assert "check_calendar gcSchedule" not in install


def test_remove_takes_units_and_script_but_never_data_or_backups() -> None:
    remove = maintenance_remove("/srv/backups/registry")
    rm_lines = [line for line in remove.splitlines() if line.startswith("rm ")]
    assert len(rm_lines) == 1
    removed = shlex.split(rm_lines[0])[2:]
    assert set(removed) == {
        "/etc/systemd/system/registry-gc.timer",
        "/etc/systemd/system/registry-backup.timer",
        "/etc/systemd/system/registry-gc.service",
        "/etc/systemd/system/registry-backup.service",
        "/etc/systemd/system/registry-maintenance-recover.service",
        "/usr/local/sbin/registry-maintenance",
        "/usr/local/lib/registry-maintenance/retention.py",
        "/etc/registry/retention.json",
        "/usr/local/lib/registry-maintenance/backup_s3.py",
        "/etc/registry/backup-s3.json",  # the off-server destination and its credential; the copies stay
    }
    # Stopping a running window first lets its exit trap put the registry back to read-write.
    assert remove.index("systemctl stop registry-gc.service registry-backup.service") < remove.index("rm -f")


def test_heredoc_marker_in_content_is_refused() -> None:
    with pytest.raises(ValueError, match="here-document marker"):
        _heredoc("a\nREGISTRY_OPS_FILE_END\nb", '"$tmp/0"')


def test_install_ships_the_retention_program_verbatim_and_its_settings() -> None:
    files = heredoc_files(maintenance_install(RETENTION_SPEC, "Sun *-*-* 03:00:00", ""))
    assert files[RETENTION_SCRIPT] == shipped.text(shipped.RETENTION)
    assert files[RETENTION_CONFIG] == render_retention_config(RETENTION_SPEC)
    remove = maintenance_remove("/srv/backups/registry")
    removed = shlex.split(next(line for line in remove.splitlines() if line.startswith("rm ")))
    assert RETENTION_SCRIPT in removed and RETENTION_CONFIG in removed


def test_scripts_with_retention_pass_shellcheck(tmp_path: Path) -> None:
    shellcheck(tmp_path, {
        "maintenance": render_maintenance_script(RETENTION_SPEC),
        "install": maintenance_install(RETENTION_SPEC, "Sun *-*-* 03:00:00", "*-*-* 02:30:00"),
    })
