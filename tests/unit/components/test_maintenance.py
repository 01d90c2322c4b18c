"""components/maintenance.py under Pulumi's mocks: what the install step carries and when it runs again."""

from __future__ import annotations

import json

from renderers.maintenance_install import maintenance_install, maintenance_remove
from renderers.maintenance_script import (
    MAINTENANCE_SCRIPT,
    MaintenanceSpec,
)
from renderers.retention_config import (
    RETENTION_CONFIG,
    RetentionSpec,
)
from settings.load import parse_settings
from tests.harness import ProgramRun
from tests.unit.support import (
    BACKUP_SCHEDULE,
    GC_SCHEDULE,
    SPEC,
    TYPICAL,
    Programs,
    heredoc_files,
    sudo_script,
)


def test_maintenance_install_follows_the_registry_container(typical: ProgramRun) -> None:
    install = typical.named("maintenance-install")
    assert typical.named("registry-container").urn in install.dependencies
    assert install.parent == typical.named("maintenance").urn
    assert install.inputs.get("stdin") is None  # nothing secret in it: it logs normally
    settings = parse_settings(TYPICAL)
    retention = RetentionSpec(
        rules=settings.retention_rules, keep_tags=settings.retention_keep_tags, k3s=True
    )
    spec = MaintenanceSpec(**{**SPEC.__dict__, "retention": retention})
    assert sudo_script(install) == maintenance_install(spec, GC_SCHEDULE, BACKUP_SCHEDULE)
    assert sudo_script(install, "delete") == maintenance_remove("/srv/backups/registry")


def test_maintenance_follows_the_settings(programs: Programs) -> None:
    run = programs.ok(
        {**TYPICAL, "gcSchedule": "", "gcDeleteUntagged": "true", "backupDir": "/var/backups/reg", "backupKeep": "3"}
    )
    files = heredoc_files(sudo_script(run.named("maintenance-install")))
    assert "/etc/systemd/system/registry-gc.timer" not in files
    script = files[MAINTENANCE_SCRIPT]
    assert "\nBACKUP_DIR=/var/backups/reg\n" in script and "\nKEEP=3\n" in script and "--delete-untagged" in script


def test_second_run_changes_no_operations_input(programs: Programs, typical: ProgramRun) -> None:
    again = programs.ok(TYPICAL, state=typical.state)
    for name in ("verify-check", "maintenance-install"):
        assert again.named(name).inputs == typical.named(name).inputs


def test_site_change_retriggers_verify_but_not_maintenance(programs: Programs, typical: ProgramRun) -> None:
    changed = programs.ok({**TYPICAL, "allowlist": ["198.51.100.0/24"]}, state=typical.state)
    assert changed.named("verify-check").value("triggers") != typical.named("verify-check").value("triggers")
    assert changed.named("maintenance-install").inputs == typical.named("maintenance-install").inputs


def test_image_change_retriggers_verify_and_rewrites_maintenance(programs: Programs, typical: ProgramRun) -> None:
    changed = programs.ok({**TYPICAL, "registryImage": "registry:2.8.4"}, state=typical.state)
    assert changed.named("verify-check").value("triggers")[2] == "registry:2.8.4"
    assert "registry:2.8.4" in changed.named("maintenance-install").value("create")


def test_retention_settings_reach_the_host(programs: Programs) -> None:
    run = programs.ok({
        **TYPICAL, "retention": "true", "retentionRules": '["ruby-demo-app=5"]',
        "retentionProtect": json.dumps(["sha256:" + "1" * 64]),
    })
    files = heredoc_files(sudo_script(run.named("maintenance-install")))
    config = json.loads(files[RETENTION_CONFIG])
    assert config["enabled"] is True and config["rules"] == [{"repositories": "ruby-demo-app", "keep": 5}]
    assert config["protect"] == ["sha256:" + "1" * 64] and config["k3s"] == "required"
    assert "\nRETENTION=on\n" in files[MAINTENANCE_SCRIPT]
    assert "python3 is not installed" in sudo_script(run.named("host-preflight"))


def test_retention_off_still_installs_the_preview(programs: Programs) -> None:
    # (python3 is checked by preflight either way: the registries.yaml merge and the Caddy takeover need it too.)
    run = programs.ok(TYPICAL)
    files = heredoc_files(sudo_script(run.named("maintenance-install")))
    assert json.loads(files[RETENTION_CONFIG])["enabled"] is False


def test_the_install_command_stays_well_under_the_kernels_single_argument_limit(programs: Programs) -> None:
    # The whole install (the retention program included) is one `sh -c` argument: Linux caps one at 128 KiB.
    command = programs.ok({**TYPICAL, "retention": "true"}).named("maintenance-install").value("create")
    assert len(command.encode()) < 96 * 1024


def test_the_off_server_destination_reaches_the_host_on_secret_stdin_only(programs: Programs) -> None:
    from tests.harness import is_secret

    run = programs.ok({**TYPICAL, "backupS3Bucket": "registry-backups", "backupS3Prefix": "prod",
                       "s3Endpoint": "https://s3.example.com", "s3AccessKey": "AKOFFSERVER", "s3SecretKey": "off/server+secret"})
    step = run.named("maintenance-backup-s3")
    assert is_secret(step.inputs["stdin"])
    config = json.loads(step.value("stdin"))
    assert config == {"endpoint": "https://s3.example.com", "region": "us-east-1", "bucket": "registry-backups",
                      "prefix": "prod", "access_key": "AKOFFSERVER", "secret_key": "off/server+secret", "ca_file": ""}
    for r in run.registrations:
        for op in ("create", "update", "delete"):
            assert "off/server+secret" not in str(r.value(op) or ""), r.name
    install = run.named("maintenance-install").value("create")
    assert "BACKUP_S3=" in install and "s3://registry-backups/prod at https://s3.example.com" in install
    assert "off/server+secret" not in install and "AKOFFSERVER" not in install
    assert "maintenance-backup-s3" not in {r.name for r in programs.ok(TYPICAL).registrations}
