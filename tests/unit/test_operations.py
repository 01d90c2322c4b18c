"""Operations as code: the deploy check, the maintenance script and its units, their settings and their place in the
graph (under Pulumi's mocks, not the engine)."""

from __future__ import annotations

import configparser
import gzip
import hashlib
import io
import json
import shlex
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.registry import CONTAINER, ENV_FILE
from renderers.caddyfile import MAINTENANCE_FLAG
from renderers.maintenance_install import _heredoc, maintenance_install, maintenance_remove
from renderers.maintenance_script import (
    LOCK_FILE,
    MAINTENANCE_SCRIPT,
    READ_ONLY_ENV,
    MaintenanceSpec,
    render_maintenance_script,
)
from renderers.probe_image import CONFIG_TYPE, LAYER_TYPE, MANIFEST_TYPE, probe_image, probe_platforms
from renderers.registry_container import DRAIN_ENV, registry_docker_run, registry_run
from renderers.retention_config import RetentionSpec
from renderers.verify_script import VerifySpec, curl_user_line, render_verify_script, verify_stdin
from settings.load import parse_settings
from settings.model import ConfigError
from settings.schema import SCHEMA
from tests.harness import ROOT, ProgramRun, Registration, is_secret
from tests.unit.support import DOMAIN, TYPICAL, Programs, exposed_strings, password, shellcheck

SPEC = MaintenanceSpec(
    container=CONTAINER,
    image="registry:2.8.3",
    port=5000,
    data_dir="/srv/data/registry",
    env_file=ENV_FILE,
    backup_dir="/srv/backups/registry",
    backup_keep=7,
)
GC_SCHEDULE, BACKUP_SCHEDULE = "Sun *-*-* 03:00:00", "*-*-* 02:30:00"


def unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def heredoc_files(install: str) -> dict[str, str]:
    """target path -> content, from the install script's here-documents and install lines."""
    lines = install.split("\n")
    by_tmp: dict[str, str] = {}
    i = 0
    while i < len(lines):
        if lines[i].startswith("cat > ") and lines[i].endswith("<<'REGISTRY_OPS_FILE_END'"):
            tmp = lines[i].split()[2]
            end = lines.index("REGISTRY_OPS_FILE_END", i)
            by_tmp[tmp] = "\n".join(lines[i + 1 : end]) + "\n"
            i = end
        i += 1
    files = {}
    for line in lines:
        if line.startswith("install -m "):
            _, _, _mode, tmp, target = shlex.split(line)
            files[target] = by_tmp[f'"{tmp}"']
    return files


# --- the maintenance script ------------------------------------------------------------------------------------


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
    assert steps[1] == "take_lock"


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


# --- units and the install -------------------------------------------------------------------------------------


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
    }
    # Stopping a running window first lets its exit trap put the registry back to read-write.
    assert remove.index("systemctl stop registry-gc.service registry-backup.service") < remove.index("rm -f")


def test_heredoc_marker_in_content_is_refused() -> None:
    with pytest.raises(ValueError, match="here-document marker"):
        _heredoc("a\nREGISTRY_OPS_FILE_END\nb", '"$tmp/0"')


# --- the deploy check ------------------------------------------------------------------------------------------


def test_probe_image_is_a_valid_single_layer_image() -> None:
    for platform, probe in probe_platforms().items():
        manifest = json.loads(probe.manifest)
        config = json.loads(probe.config)
        assert manifest["mediaType"] == MANIFEST_TYPE
        assert manifest["config"] == {
            "mediaType": CONFIG_TYPE, "size": len(probe.config), "digest": probe.config_digest,
        }
        assert manifest["layers"] == [
            {"mediaType": LAYER_TYPE, "size": len(probe.layer), "digest": probe.layer_digest}
        ]
        assert probe.config_digest == "sha256:" + hashlib.sha256(probe.config).hexdigest()
        raw = gzip.decompress(probe.layer)
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            assert tar.getmembers() == []
        assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(raw).hexdigest()]
        assert platform == "/".join(filter(None, [config["os"], config["architecture"], config.get("variant")]))


def test_probe_image_is_the_same_bytes_every_run() -> None:
    assert probe_image("amd64") == probe_image("amd64")
    assert probe_image("amd64").config_digest != probe_image("arm64").config_digest


@pytest.mark.parametrize(
    ("password", "line"),
    [
        ("abcXYZ123", 'user = "robot_user:abcXYZ123"'),
        ('a"b\\c', 'user = "robot_user:a\\"b\\\\c"'),
    ],
)
def test_credentials_are_curl_config_lines(password: str, line: str) -> None:
    assert curl_user_line("robot_user", password) == line


def test_verify_stdin_holds_push_then_pull() -> None:
    assert verify_stdin("robot_user", "P1", "k3s_pull", "P2") == (
        'user = "robot_user:P1"\nuser = "k3s_pull:P2"\n'
    )


def test_verify_script_checks_every_promise_of_the_site() -> None:
    script = render_verify_script(VerifySpec(domain=DOMAIN))
    assert f"REGISTRY={DOMAIN}\n" in script and 'BASE="https://$REGISTRY"' in script
    wanted = {
        "anonymous GET /v2/ is challenged": "401 anon GET",
        "push credential GET /v2/": "200 push GET",
        "pull credential GET /v2/": "200 pull GET",
        "pull credential is refused a write (POST blob upload)": "403 pull POST",
    }
    for name, expectation in wanted.items():
        assert f"check '{name}' {expectation} " in script
    assert 'check "push credential pushes $PROBE:$TAG" 201 push PUT' in script
    assert 'check "pull credential reads $PROBE:$TAG" 200 pull GET' in script
    assert "K3S=no\n" in script


def test_verify_pulls_through_k3s_crictl_only_when_k3s_trusts_the_registry() -> None:
    with_k3s = render_verify_script(VerifySpec(domain=DOMAIN, k3s=True))
    assert "K3S=yes\n" in with_k3s
    assert 'out=$(k3s crictl pull "$ref" 2>&1)' in with_k3s
    # crictl reads the credential from registries.yaml; `ctr --user` would need it on the command line.
    assert "ctr" not in with_k3s.replace("crictl", "")


def test_verify_trusts_the_registry_ca_file_when_set() -> None:
    assert "curl_tls() { curl \"$@\"; }" in render_verify_script(VerifySpec(domain=DOMAIN))
    with_ca = render_verify_script(VerifySpec(domain=DOMAIN, ca_file="/etc/rancher/k3s/ca 1.pem"))
    assert "curl_tls() { curl --cacert '/etc/rancher/k3s/ca 1.pem' \"$@\"; }" in with_ca


def test_verify_reads_credentials_from_stdin_and_never_passes_them_as_arguments() -> None:
    script = render_verify_script(VerifySpec(domain=DOMAIN, k3s=True))
    assert "IFS= read -r push_auth" in script and "IFS= read -r pull_auth" in script
    # printf is a shell builtin: the credential goes down the pipe into `curl -K -`, never into an argv.
    assert "printf '%s\\n' \"$push_auth\" ;;" in script and "-K -" in script
    assert script.count("push_auth") == 3 and script.count("pull_auth") == 3  # read, empty check, printf
    assert " -u \"" not in script and "--user" not in script and "Authorization" not in script


@pytest.mark.parametrize(
    "spec",
    [VerifySpec(domain=DOMAIN), VerifySpec(domain=DOMAIN, ca_file="/etc/ca.pem", k3s=True, allowlist=True)],
    ids=["plain", "every-option"],
)
def test_verify_script_passes_shellcheck(tmp_path: Path, spec: VerifySpec) -> None:
    shellcheck(tmp_path, {"verify": render_verify_script(spec)})


def _fake_tools(tmp_path: Path, codes: dict[str, str]) -> Path:
    """A PATH with a curl that answers by (user, method) and a k3s that succeeds; records curl's argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cases = "\n".join(f'  "{key}") code={code} ;;' for key, code in codes.items())
    (bin_dir / "curl").write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$*" >> {tmp_path}/argv\n'
        'cfg=$(cat); user=$(printf "%s" "$cfg" | sed -n \'s/^user = "\\([^:]*\\):.*/\\1/p\')\n'
        'method=GET; out=/dev/null; hdr=/dev/null\n'
        'while [ $# -gt 0 ]; do case "$1" in -X) method=$2; shift ;; -o) out=$2; shift ;; -D) hdr=$2; shift ;; esac; shift; done\n'
        'case "${user:-anon} $method" in\n'
        f"{cases}\n"
        "  *) code=200 ;;\n"
        "esac\n"
        'printf "Location: /v2/ops/verify-probe/blobs/uploads/u1?_state=x\\r\\n" > "$hdr"\n'
        'printf "body" > "$out"\n'
        'printf "%s" "$code"\n'
    )
    (bin_dir / "k3s").write_text("#!/bin/sh\necho 'Image is up to date for sha256:abc'\n")
    for tool_file in bin_dir.iterdir():
        tool_file.chmod(0o755)
    return bin_dir


def _run_verify(tmp_path: Path, codes: dict[str, str], k3s: bool = True) -> subprocess.CompletedProcess[str]:
    bin_dir = _fake_tools(tmp_path, codes)
    script = render_verify_script(VerifySpec(domain=DOMAIN, k3s=k3s, deadline_seconds=0))
    return subprocess.run(
        ["sh", "-c", script],
        input=verify_stdin("robot_user", "SECRET-push-pw", "k3s_pull", "SECRET-pull-pw"),
        capture_output=True,
        text=True,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
        check=False,
        timeout=60,
    )


def test_verify_passes_when_every_answer_is_right(tmp_path: Path) -> None:
    result = _run_verify(
        tmp_path,
        {"anon GET": "401", "k3s_pull POST": "403", "robot_user POST": "202", "robot_user PUT": "201"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("verify: ok:") == 11  # 4 site checks, 2x(start, upload), manifest, pull read, k3s
    assert "verify: all checks passed for https://registry.example.com" in result.stdout
    argv = (tmp_path / "argv").read_text()
    assert "SECRET" not in argv
    assert "https://registry.example.com/v2/ops/verify-probe/blobs/uploads/u1?_state=x&digest=sha256:" in argv


def test_failed_check_names_it_with_got_and_expected_and_no_secret(tmp_path: Path) -> None:
    result = _run_verify(
        tmp_path,
        {"anon GET": "401", "k3s_pull POST": "201", "robot_user POST": "202", "robot_user PUT": "201"},
    )
    assert result.returncode == 1
    assert (
        "verify: FAILED: pull credential is refused a write (POST blob upload): got HTTP 201, expected 403"
        in result.stderr
    )
    assert "verify: 1 check(s) failed for https://registry.example.com" in result.stderr
    assert "SECRET" not in result.stdout + result.stderr


def test_probe_push_failure_skips_the_pull_checks(tmp_path: Path) -> None:
    result = _run_verify(tmp_path, {"anon GET": "401", "k3s_pull POST": "403", "robot_user POST": "401"})
    assert result.returncode == 1
    assert "got HTTP 401, expected 202" in result.stderr
    assert "the pull checks were skipped" in result.stderr
    assert "k3s" not in result.stdout


# --- settings ---------------------------------------------------------------------------------------------------


def test_operations_settings_defaults() -> None:
    settings = parse_settings({"host": "192.0.2.1"})
    assert (settings.verify, settings.gc_delete_untagged) == (True, False)
    assert (settings.gc_schedule, settings.backup_schedule) == (GC_SCHEDULE, BACKUP_SCHEDULE)
    assert (settings.backup_dir, settings.backup_keep) == ("/srv/backups/registry", 7)


@pytest.mark.parametrize(
    ("raw", "field", "expected"),
    [
        ({"gcSchedule": ""}, "gc_schedule", ""),
        ({"gcSchedule": "daily"}, "gc_schedule", "daily"),
        ({"gcSchedule": "Mon..Fri *-*-* 01:15:00"}, "gc_schedule", "Mon..Fri *-*-* 01:15:00"),
        ({"backupSchedule": "*-*-* 00/6:00:00"}, "backup_schedule", "*-*-* 00/6:00:00"),
        ({"backupSchedule": ""}, "backup_schedule", ""),
        ({"gcDeleteUntagged": "true"}, "gc_delete_untagged", True),
        ({"verify": "false"}, "verify", False),
        ({"backupKeep": "30"}, "backup_keep", 30),
        ({"backupKeep": 2}, "backup_keep", 2),
        ({"backupDir": "/var/backups/registry"}, "backup_dir", "/var/backups/registry"),
    ],
)
def test_operations_settings_accept(raw: dict[str, Any], field: str, expected: Any) -> None:
    assert getattr(parse_settings({"host": "192.0.2.1", **raw}), field) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"gcSchedule": "Sun 03:00; rm -rf /"}, "registry:gcSchedule = 'Sun 03:00; rm -rf /' is invalid; accepted: a systemd OnCalendar"),
        ({"gcSchedule": " daily"}, "registry:gcSchedule = ' daily' is invalid"),
        ({"backupSchedule": "$(reboot)"}, "registry:backupSchedule = '$(reboot)' is invalid; accepted: a systemd OnCalendar"),
        ({"backupSchedule": "daily\nweekly"}, "registry:backupSchedule = 'daily\\nweekly' is invalid"),
        ({"gcSchedule": "..."}, "registry:gcSchedule = '...' is invalid"),
        ({"gcDeleteUntagged": "yes"}, "registry:gcDeleteUntagged = 'yes' is invalid; accepted: true or false"),
        ({"verify": "1"}, "registry:verify = '1' is invalid; accepted: true or false"),
        ({"backupKeep": "0"}, "registry:backupKeep = '0' is invalid; accepted: an integer from 1 to 1000"),
        ({"backupKeep": "many"}, "registry:backupKeep = 'many' is invalid; accepted: an integer from 1 to 1000"),
        ({"backupDir": "backups"}, "registry:backupDir = 'backups' is invalid; accepted: an absolute normalised path"),
        ({"backupDir": "/srv/data/registry/backups"}, "registry:backupDir = '/srv/data/registry/backups' is invalid; accepted: a directory outside dataDir ('/srv/data/registry')"),
        ({"backupDir": "/srv/data/registry"}, "registry:backupDir = '/srv/data/registry' is invalid; accepted: a directory outside dataDir"),
        ({"backupDir": "/srv", "dataDir": "/srv/data/registry"}, "registry:backupDir = '/srv' is invalid; accepted: a directory outside dataDir ('/srv/data/registry') that does not contain it"),
    ],
)
def test_operations_settings_reject(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings({"host": "192.0.2.1", **raw})
    assert message in str(info.value)


def test_backup_dir_overlap_is_reported_with_other_errors() -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings({"host": "192.0.2.1", "domain": "BAD", "backupDir": "/srv/data/registry/b"})
    assert "registry:domain = 'BAD'" in str(info.value) and "registry:backupDir" in str(info.value)


def test_operations_settings_are_in_the_project_schema() -> None:
    schema = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    expected_types = {
        "verify": "boolean", "gcSchedule": "string", "gcDeleteUntagged": "boolean",
        "backupSchedule": "string", "backupDir": "string", "backupKeep": "integer",
    }
    for key, typ in expected_types.items():
        assert key in SCHEMA
        assert schema[key]["type"] == typ and schema[key]["description"]
        default = schema[key]["default"]
        parsed = parse_settings({"host": "192.0.2.1", key: default if isinstance(default, str) else json.dumps(default)})
        assert getattr(parsed, SCHEMA[key][0]) == getattr(parse_settings({"host": "192.0.2.1"}), SCHEMA[key][0])


# --- the graph ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def typical(programs: Programs) -> ProgramRun:
    return programs.ok(TYPICAL)


def _script(command: Registration, op: str = "create") -> str:
    argv = shlex.split(command.value(op))
    assert argv[:-1] == ["sudo", "-n", "sh", "-c"]
    return argv[-1]


def test_verify_runs_after_the_site_and_the_k3s_restart(typical: ProgramRun) -> None:
    check = typical.named("verify-check")
    assert typical.named("caddy-site-file").urn in check.dependencies
    assert typical.named("k3s-trust-restart").urn in check.dependencies
    assert check.parent == typical.named("verify").urn
    assert typical.named("verify").type == "registry:index:Verify"


def test_verify_reruns_for_site_trust_and_registry_changes(typical: ProgramRun) -> None:
    check = typical.named("verify-check")
    site_sha = typical.named("caddy-site-file").value("stdin")
    trust_sha = typical.named("k3s-trust-file").value("stdin")
    assert check.value("triggers") == [
        hashlib.sha256(site_sha.encode()).hexdigest(),
        hashlib.sha256(trust_sha.encode()).hexdigest(),
        "registry:2.8.3",
        5000,
        1,  # replicas: a change of replicas leaves the site alone, the check runs for it all the same
    ]


def test_verify_credentials_travel_on_secret_stdin_only(typical: ProgramRun) -> None:
    check = typical.named("verify-check")
    push, pull = password(typical, "credentials-push"), password(typical, "credentials-pull")
    assert is_secret(check.inputs["stdin"])
    assert check.value("stdin") == verify_stdin("robot_user", push, "k3s_pull", pull)
    assert check.value("logging") == "none"
    assert {"stdout", "stderr"} <= set(check.additional_secret_outputs)
    for path, text in exposed_strings(check.inputs):
        assert push not in text and pull not in text, path


def test_no_operations_command_carries_a_password(typical: ProgramRun) -> None:
    secrets = [password(typical, "credentials-push"), password(typical, "credentials-pull")]
    for name in ("verify-check", "maintenance-install"):
        command = typical.named(name)
        for op in ("create", "update", "delete"):
            text = command.value(op) or ""
            assert not any(s in text for s in secrets), f"{name}.{op}"


def test_verify_script_is_rendered_for_this_stack(typical: ProgramRun) -> None:
    expected = render_verify_script(VerifySpec(domain=DOMAIN, k3s=True, allowlist=True))
    assert _script(typical.named("verify-check")) == expected


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
    assert _script(install) == maintenance_install(spec, GC_SCHEDULE, BACKUP_SCHEDULE)
    assert _script(install, "delete") == maintenance_remove("/srv/backups/registry")


def test_maintenance_follows_the_settings(programs: Programs) -> None:
    run = programs.ok(
        {**TYPICAL, "gcSchedule": "", "gcDeleteUntagged": "true", "backupDir": "/var/backups/reg", "backupKeep": "3"}
    )
    files = heredoc_files(_script(run.named("maintenance-install")))
    assert "/etc/systemd/system/registry-gc.timer" not in files
    script = files[MAINTENANCE_SCRIPT]
    assert "\nBACKUP_DIR=/var/backups/reg\n" in script and "\nKEEP=3\n" in script and "--delete-untagged" in script


def test_verify_false_registers_no_check(programs: Programs) -> None:
    run = programs.ok({**TYPICAL, "verify": "false"})
    assert not [r for r in run.registrations if r.name.startswith("verify")]
    assert run.named("maintenance-install")


def test_verify_without_k3s_does_not_wait_for_k3s_or_pull_through_it(programs: Programs) -> None:
    run = programs.ok({**TYPICAL, "k3sTrust": "false", "flux": "false"})
    check = run.named("verify-check")
    assert "K3S=no\n" in _script(check)
    assert check.value("triggers")[1] == ""
    assert not [r for r in run.registrations if r.name.startswith("k3s-trust")]


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


def test_preview_with_unknown_passwords_still_registers_the_check(programs: Programs) -> None:
    run = programs.ok(TYPICAL, preview=True)
    assert run.named("verify-check") and run.named("maintenance-install")
