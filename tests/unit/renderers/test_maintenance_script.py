"""renderers/maintenance_script.py with host/usr/local/sbin/registry-maintenance.sh: the read-only window, GC,
backup, restore, retention's place in the window, S3 and replicas."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from components.registry import CONTAINER, ENV_FILE
from renderers.caddyfile import MAINTENANCE_FLAG
from renderers.maintenance_install import maintenance_files, maintenance_install, maintenance_remove
from renderers.maintenance_script import (
    LOCK_FILE,
    READ_ONLY_ENV,
    MaintenanceSpec,
    render_maintenance_script,
)
from renderers.registry_container import DRAIN_ENV, registry_docker_run, registry_run
from renderers.registry_env import StorageSpec
from renderers.retention_config import (
    RetentionSpec,
    render_retention_config,
)
from tests.unit.support import (
    BACKUP_SCHEDULE,
    DEFAULT_KEEP,
    GC_SCHEDULE,
    REPLICAS,
    RETENTION_SPEC,
    S3_SPEC,
    SPEC,
    Policy,
    Rule,
    retention,
    shellcheck,
)


def test_window_settings_come_after_the_listen_settings_and_cannot_drop_them() -> None:
    line = registry_docker_run(CONTAINER, "img", 5000, "/d", ENV_FILE, {**DRAIN_ENV, **READ_ONLY_ENV})
    env = [a for a in shlex.split(line) if "=" in a and a.startswith("REGISTRY_")]
    assert env[:2] == ["REGISTRY_HTTP_ADDR=127.0.0.1:5000", "REGISTRY_HTTP_DEBUG_ADDR="]
    assert env[2:] == ["REGISTRY_HTTP_DRAINTIMEOUT=20s", 'REGISTRY_STORAGE_MAINTENANCE_READONLY={"enabled":true}']


def test_deploy_and_both_maintenance_launches_recreate_the_same_networking() -> None:
    deploy = registry_run(CONTAINER, SPEC.image, SPEC.port, SPEC.data_dir, ENV_FILE)
    script = render_maintenance_script(SPEC)
    launches = [line for line in [*deploy.splitlines(), *script.splitlines()] if "docker run -d" in line]
    assert len(launches) == 3  # deploy, maintenance read-write, maintenance read-only
    for line in launches:
        assert "--network host " in line and " -p " not in line, line
        assert "-e REGISTRY_HTTP_ADDR=127.0.0.1:5000 -e REGISTRY_HTTP_DEBUG_ADDR= " in line, line


def test_maintenance_relaunches_the_container_exactly_as_the_program_creates_it() -> None:
    script = render_maintenance_script(SPEC)
    program = registry_docker_run(CONTAINER, SPEC.image, SPEC.port, SPEC.data_dir, ENV_FILE, DRAIN_ENV)
    assert program in registry_run(CONTAINER, SPEC.image, SPEC.port, SPEC.data_dir, ENV_FILE)
    read_write = next(line for line in script.splitlines() if line.startswith("launch_read_write()"))
    read_only = next(line for line in script.splitlines() if line.startswith("launch_read_only()"))
    extra_ro = "-e 'REGISTRY_STORAGE_MAINTENANCE_READONLY={\"enabled\":true}' "
    image = f" {SPEC.image}"
    assert read_write == "launch_read_write() { " + program + "; }"
    assert read_only == "launch_read_only() { " + program.replace(image, f" {extra_ro.strip()}{image}") + "; }"


def test_deploys_and_maintenance_windows_share_one_lock() -> None:
    assert f"exec 9>{LOCK_FILE}" in registry_run(CONTAINER, SPEC.image, SPEC.port, SPEC.data_dir, ENV_FILE)
    assert "flock" in render_maintenance_script(SPEC)


def test_read_only_switch_is_json_distribution_parses() -> None:
    assert json.loads(READ_ONLY_ENV["REGISTRY_STORAGE_MAINTENANCE_READONLY"]) == {"enabled": True}


@pytest.mark.parametrize(("untagged", "flag"), [(False, ""), (True, " --delete-untagged")])
def test_garbage_collect_uses_delete_untagged_only_when_asked(untagged: bool, flag: str) -> None:
    script = render_maintenance_script(MaintenanceSpec(**{**SPEC.__dict__, "gc_delete_untagged": untagged}))
    gc = next(line for line in script.splitlines() if line.startswith("garbage_collect()"))
    assert gc == f'garbage_collect() {{ docker exec "$NAME" /bin/registry garbage-collect "$@"{flag} "$CONFIG"; }}'
    assert ("--delete-untagged" in script) is untagged


def test_gc_runs_a_dry_run_first_inside_the_read_only_window() -> None:
    body = render_maintenance_script(SPEC)
    gc = body[body.index("cmd_gc() {") : body.index("\n}\n", body.index("cmd_gc() {"))]
    steps = [line.strip() for line in gc.splitlines()]
    assert steps.index('open_window "garbage collection"') < steps.index("collect --dry-run") < steps.index("collect")
    assert steps.index("collect") < steps.index("close_window")
    assert steps[1:3] == ["RUN=gc", "take_lock"]  # its outcome is recorded for `status`, whatever happens next


def test_backup_is_taken_inside_the_window_and_renamed_only_once_it_reads_back() -> None:
    body = render_maintenance_script(SPEC)
    backup = body[body.index("cmd_backup() {") : body.index("\n}\n", body.index("cmd_backup() {"))]
    order = [
        "open_window backup",
        'tar -C "$DATA_DIR" -cf "$partial" docker',
        "close_window",
        'tar -tf "$partial"',
        'mv "$partial" "$archive"',
        "prune",
    ]
    positions = [backup.index(step) for step in order]
    assert positions == sorted(positions)
    assert "umask 077" in backup and 'install -d -m 0700 "$BACKUP_DIR"' in backup


def test_maintenance_settings_are_quoted_values_at_the_top() -> None:
    spec = MaintenanceSpec(**{**SPEC.__dict__, "data_dir": "/srv/data/registry@2", "backup_keep": 3})
    script = render_maintenance_script(spec)
    assert script.startswith("#!/bin/sh\n")
    assert "\nDATA_DIR=/srv/data/registry@2\n" in script and "\nKEEP=3\n" in script
    assert f"\nFLAG={MAINTENANCE_FLAG}\n" in script


def test_restore_never_deletes_the_current_data() -> None:
    body = render_maintenance_script(SPEC)
    restore = body[body.index("cmd_restore() {") : body.index("\n}\n", body.index("cmd_restore() {"))]
    assert 'mv "$DATA_DIR/docker" "$aside/docker"' in restore
    removals = [line.strip() for line in restore.splitlines() if line.strip().startswith("rm ")]
    assert removals == ['rm -rf "$staging"']  # only the half-extracted copy, when extraction failed


def test_no_maintenance_script_line_removes_the_data_directory_or_backups_wholesale() -> None:
    script = render_maintenance_script(SPEC)
    for line in script.splitlines():
        if "rm " in line:
            assert '"$DATA_DIR"' not in line.split("rm ", 1)[1] and '"$BACKUP_DIR"' not in line.split("rm ", 1)[1]


def test_maintenance_scripts_pass_shellcheck(tmp_path: Path) -> None:
    scripts = {
        "maintenance": render_maintenance_script(SPEC),
        "maintenance-untagged": render_maintenance_script(
            MaintenanceSpec(**{**SPEC.__dict__, "gc_delete_untagged": True})
        ),
        "install": maintenance_install(SPEC, GC_SCHEDULE, BACKUP_SCHEDULE),
        "install-disabled": maintenance_install(SPEC, "", ""),
        "remove": maintenance_remove(SPEC.backup_dir),
    }
    shellcheck(tmp_path, scripts)


def test_maintenance_script_runs_under_dash_syntax_check(tmp_path: Path) -> None:
    path = tmp_path / "m.sh"
    path.write_text(render_maintenance_script(SPEC))
    assert subprocess.run(["sh", "-n", str(path)], capture_output=True, check=False).returncode == 0


def _function(script: str, name: str) -> list[str]:
    body = script[script.index(f"{name}() {{") : script.index("\n}\n", script.index(f"{name}() {{"))]
    return [line.strip() for line in body.splitlines()]


def test_gc_deletes_tags_while_caddy_refuses_writes_and_before_the_registry_goes_read_only() -> None:
    steps = _function(render_maintenance_script(RETENTION_SPEC), "cmd_gc")
    order = [
        "take_lock",
        'refuse_writes "tag retention and garbage collection"',
        "if retention; then record retention ok; else retention_failed=1; fi",
        'open_window "garbage collection"',
        "collect --dry-run",
        "collect",
        "close_window",
    ]
    assert [steps.index(step) for step in order] == sorted(steps.index(step) for step in order)
    assert steps[-1].startswith('[ "$retention_failed" = 0 ] || die')


def test_retention_talks_to_the_registry_on_loopback_not_through_the_site() -> None:
    config = json.loads(render_retention_config(RETENTION_SPEC))
    assert config["registry"] == "http://127.0.0.1:5000"
    assert config == {
        "enabled": True, "registry": "http://127.0.0.1:5000", "data_dir": "/srv/data/registry",
        "rules": [{"repositories": "*", "keep": 10}], "keep_tags": list(DEFAULT_KEEP), "protect": [], "k3s": "required",
        "ignore_repositories": ["ops/verify-probe"],
    }
    assert retention.load_policy(config) == Policy((Rule("*", 10),), DEFAULT_KEEP, frozenset())


def test_retention_is_skipped_in_gc_when_off_but_the_preview_stays() -> None:
    off = MaintenanceSpec(**{**RETENTION_SPEC.__dict__, "retention": RetentionSpec()})
    script = render_maintenance_script(off)
    assert "\nRETENTION=off\n" in script and "\nRETENTION=on\n" in render_maintenance_script(RETENTION_SPEC)
    assert "retention) shift; cmd_retention" in script
    assert json.loads(render_retention_config(off))["enabled"] is False
    assert json.loads(render_retention_config(off))["k3s"] == "if-present"


def test_retention_command_only_previews() -> None:
    steps = _function(render_maintenance_script(RETENTION_SPEC), "cmd_retention")
    assert steps[-1] == "retention --dry-run"
    assert not any("refuse_writes" in s or "open_window" in s for s in steps)


def test_distribution_3_gc_reads_the_image_config_where_registry_3_keeps_it() -> None:
    script = render_maintenance_script(S3_SPEC)
    assert "CONFIG=/etc/distribution/config.yml" in script
    two = render_maintenance_script(MaintenanceSpec(**{**S3_SPEC.__dict__, "distribution": 2}))
    assert "CONFIG=/etc/docker/registry/config.yml" in two


def test_with_s3_backups_are_the_store_s_job_and_restore_refuses() -> None:
    script = render_maintenance_script(S3_SPEC)
    assert "STORAGE='S3 bucket reg/r at http://127.0.0.1:8333 (region garage)'" in script
    backup = script[script.index("cmd_backup() {"):script.index("cmd_restore() {")]
    assert backup.splitlines()[1].lstrip().startswith('[ "$STORAGE" = filesystem ] || s3_only')
    install = maintenance_install(S3_SPEC, "Sun *-*-* 03:00:00", "*-*-* 02:30:00")
    assert "registry-backup.timer" not in "".join(f.path for f in maintenance_files(S3_SPEC, "x", ""))
    assert "registry-backup.timer is not installed: with S3 storage the store backs the data up" in install
    assert "systemctl enable registry-backup.timer" not in install
    fs = maintenance_install(MaintenanceSpec(**{**S3_SPEC.__dict__, "storage": StorageSpec()}), "daily", "daily")
    assert "systemctl enable registry-backup.timer" in fs


def test_the_s3_maintenance_script_passes_shellcheck(tmp_path: Path) -> None:
    shellcheck(tmp_path, {"maintenance-s3": render_maintenance_script(S3_SPEC)})


def test_the_maintenance_window_makes_every_replica_read_only_one_at_a_time() -> None:
    script = render_maintenance_script(REPLICAS)
    assert "REPLICAS='registry:5000 registry-2:5001 registry-3:5002'" in script
    read_only = next(line for line in script.splitlines() if line.startswith("launch_read_only()"))
    for name, port in (("registry", 5000), ("registry-2", 5001), ("registry-3", 5002)):
        case = read_only.split(f" {name}) ", 1)[1].split(" ;;", 1)[0]
        assert case == registry_docker_run(
            name, "registry:3", port, "/srv/data/registry", ENV_FILE, {**DRAIN_ENV, **READ_ONLY_ENV}
        )
    relaunch = script[script.index("relaunch() {"):script.index("remove_all() {")]
    assert 'for replica in $REPLICAS; do' in relaunch and 'wait_ready "$name" "$port"' in relaunch
    single = render_maintenance_script(S3_SPEC)
    assert "REPLICAS=registry:5000" in single
