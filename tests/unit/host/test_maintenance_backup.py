"""The maintenance script run here, for real, against stand-ins of what it drives on a server (docker, curl, df,
systemctl): a backup that would leave too little free space is refused before the registry goes read-only, and
`status` exits non-zero naming the failed run and when; a good backup is reported with its age."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from renderers.maintenance_script import render_maintenance_script
from tests.unit.support import SPEC

STUBS = {
    "docker": '#!/bin/sh\necho "docker $*" >>"$STUB_LOG"\n[ "$1" != inspect ] || exit 1\nexit 0\n',
    "curl": "#!/bin/sh\nexit 0\n",
    "systemctl": "#!/bin/sh\nexit 0\n",
    "id": "#!/bin/sh\necho 0\n",
    # df -Pk PATH: one filesystem of DF_TOTAL KiB with DF_AVAIL KiB free.
    "df": '#!/bin/sh\necho "Filesystem 1024-blocks Used Available Capacity Mounted on"\n'
          'echo "/dev/stub $DF_TOTAL $((DF_TOTAL - DF_AVAIL)) $DF_AVAIL 50% /srv"\n',
}


class Host:
    def __init__(self, tmp: Path) -> None:
        self.data, self.backups, self.state = tmp / "data", tmp / "backups", tmp / "state"
        self.flag, self.log = tmp / "run" / "read-only", tmp / "docker.log"
        spec = replace(SPEC, data_dir=str(self.data), backup_dir=str(self.backups), backup_min_free_percent=10)
        text = render_maintenance_script(spec)
        for name, value in (("FLAG", self.flag), ("LOCK", tmp / "lock"), ("STATE_DIR", self.state)):
            text, n = re.subn(rf"^{name}=.*$", f"{name}='{value}'", text, count=1, flags=re.M)
            assert n == 1, name
        self.script = tmp / "registry-maintenance"
        self.script.write_text(text)
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        for name, body in STUBS.items():
            (bin_dir / name).write_text(body)
            (bin_dir / name).chmod(0o755)
        self.env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_LOG": str(self.log)}
        blob = self.data / "docker" / "registry" / "v2" / "blobs" / "sha256" / "ab" / "ab12" / "data"
        blob.parent.mkdir(parents=True)
        blob.write_bytes(os.urandom(2 * 1024 * 1024))  # 2 MiB of data to archive

    def run(self, *args: str, total_kib: int, avail_kib: int) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "DF_TOTAL": str(total_kib), "DF_AVAIL": str(avail_kib)}
        return subprocess.run(["sh", str(self.script), *args], env=env, capture_output=True, text=True, timeout=60, check=False)

    def docker_calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


GIB = 1024 * 1024


def test_a_backup_that_would_leave_too_little_free_space_is_refused_before_the_window(host: Host) -> None:
    # 10 GiB disk, 1 GiB + 1 MiB free: a 2 MiB archive would leave less than 10 % (1 GiB).
    result = host.run("backup", total_kib=10 * GIB, avail_kib=GIB + 1024)
    assert result.returncode == 1
    assert "backup refused: the archive needs about 2 MiB" in result.stderr
    assert "has 1025 MiB free of 10240 MiB; 10% (1024 MiB) must stay free (backupMinFreePercent)" in result.stderr
    assert "the registry stayed writable" in result.stderr
    assert host.docker_calls() == []  # no container was stopped or relaunched read-only
    assert not host.flag.exists()  # Caddy never refused a push
    assert list(host.backups.glob("*")) == []


def test_status_exits_non_zero_naming_the_failed_backup_and_when(host: Host) -> None:
    host.run("backup", total_kib=10 * GIB, avail_kib=GIB)
    status = host.run("status", total_kib=10 * GIB, avail_kib=GIB)
    assert status.returncode == 1
    failed = re.search(r"last backup: FAILED at (\S+) \((\d+) min ago\): backup refused: ", status.stdout)
    assert failed, status.stdout
    assert "last successful backup: none yet" in status.stdout
    assert "status: the last run of backup failed" in status.stderr


def test_a_backup_with_room_is_written_and_status_reports_its_age(host: Host) -> None:
    result = host.run("backup", total_kib=10 * GIB, avail_kib=5 * GIB)
    assert result.returncode == 0, result.stderr
    assert "space: the archive needs about 2 MiB" in result.stdout
    archives = list(host.backups.glob("registry-*.tar"))
    assert len(archives) == 1
    assert any(c.startswith("docker run") for c in host.docker_calls())  # the window opened and closed
    assert not host.flag.exists()
    status = host.run("status", total_kib=10 * GIB, avail_kib=5 * GIB)
    assert status.returncode == 0, status.stdout + status.stderr
    assert re.search(r"last backup: ok at \S+ \(0 min ago\)", status.stdout)
    assert re.search(r"last successful backup: \S+ \(0 min ago\)", status.stdout)


def test_a_later_failure_is_reported_while_the_last_success_is_kept(host: Host) -> None:
    assert host.run("backup", total_kib=10 * GIB, avail_kib=5 * GIB).returncode == 0
    assert host.run("backup", total_kib=10 * GIB, avail_kib=GIB).returncode == 1
    status = host.run("status", total_kib=10 * GIB, avail_kib=GIB)
    assert status.returncode == 1
    assert "last backup: FAILED at" in status.stdout
    assert re.search(r"last successful backup: \S+ \(0 min ago\)", status.stdout)


def test_a_failed_garbage_collection_makes_status_fail_naming_it(host: Host) -> None:
    (host.data / "docker" / "registry" / "v2" / "repositories").mkdir(parents=True)
    fail_gc = '#!/bin/sh\necho "docker $*" >>"$STUB_LOG"\ncase "$1" in inspect) exit 1 ;; exec) echo "disk I/O error" >&2; exit 1 ;; esac\n'
    (host.script.parent / "bin" / "docker").write_text(fail_gc)
    gc = host.run("gc", total_kib=10 * GIB, avail_kib=5 * GIB)
    assert gc.returncode == 1 and "garbage-collect --dry-run failed" in gc.stderr
    assert not host.flag.exists()  # the exit trap closed the window
    status = host.run("status", total_kib=10 * GIB, avail_kib=5 * GIB)
    assert status.returncode == 1
    assert re.search(r"last gc: FAILED at \S+ \(0 min ago\): garbage-collect --dry-run failed", status.stdout), status.stdout
    assert "status: the last run of gc failed" in status.stderr
