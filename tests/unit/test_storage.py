"""Distribution 3 as an image choice, S3-compatible storage: settings, the env file, the container, maintenance
(graph parts under Pulumi's mocks, not the engine)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from components.registry import CONTAINER, ENV_FILE, upstream_address
from renderers.caddyfile import UPSTREAM_DIR
from renderers.maintenance_install import maintenance_files, maintenance_install
from renderers.maintenance_script import READ_ONLY_ENV, MaintenanceSpec, render_maintenance_script
from renderers.preflight import preflight
from renderers.registry_container import (
    DRAIN_ENV,
    REPLICA_SETTLE_SECONDS,
    registry_docker_run,
    registry_remove_replicas,
    registry_run,
    registry_run_replicas,
)
from renderers.registry_env import S3_CA_IN_CONTAINER, StorageSpec, render_registry_env
from settings.load import parse_settings
from settings.model import ConfigError, image_major_version
from tests.harness import run_program
from tests.unit.support import TYPICAL, exposed_strings, shellcheck

ACCESS, SECRET = "AKIAUNITTESTONLY", "unit/test+secret=key"
S3: dict[str, str] = {
    "storage": "s3", "s3Endpoint": "https://s3.example.com:9000", "s3Bucket": "registry-data", "s3AccessKey": ACCESS,
    "s3SecretKey": SECRET,
}  # fmt: skip
STORAGE = StorageSpec(kind="s3", endpoint="http://127.0.0.1:8333", region="garage", bucket="reg", root_directory="/r")
SPEC = MaintenanceSpec(
    container=CONTAINER, image="registry:3", port=5000, data_dir="/srv/data/registry", env_file=ENV_FILE,
    backup_dir="/srv/backups/registry", backup_keep=7, distribution=3, storage=STORAGE,
)  # fmt: skip


def errors(**raw: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_settings({"host": "192.0.2.1", **raw})
    return [line.strip() for line in str(info.value).splitlines()[1:]]


# --- settings --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "major"),
    [("registry:2", 2), ("registry:2.8.3", 2), ("registry:3", 3), ("registry:3.0.0", 3), ("docker.io/library/registry:3.1", 3),
     ("ghcr.io/distribution/distribution:3.0.0-rc.1", 3), ("localhost:5000/registry:3", 3), ("registry", 2),
     ("registry@sha256:" + "a" * 64, 2), ("registry:30", 2), ("localhost:3/registry", 2)],
)  # fmt: skip
def test_the_distribution_version_comes_from_the_tag_unless_set(image: str, major: int) -> None:
    assert image_major_version(image) == major
    assert parse_settings({"host": "h", "registryImage": image}).distribution == major
    assert parse_settings({"host": "h", "registryImage": image, "registryMajorVersion": "3"}).distribution == 3


def test_s3_settings_parse_and_default_to_path_style() -> None:
    s = parse_settings({"host": "h", **S3})
    assert (s.storage, s.s3_endpoint, s.s3_bucket, s.s3_region, s.s3_force_path_style) == (
        "s3", "https://s3.example.com:9000", "registry-data", "us-east-1", True)  # fmt: skip
    assert ACCESS not in repr(s) and SECRET not in repr(s)


def test_s3_storage_needs_a_bucket_and_both_keys_and_says_so() -> None:
    assert errors(storage="s3") == [
        "registry:s3Bucket is not set; accepted: a bucket name, required with storage = 's3'",
        "registry:s3AccessKey is not set; accepted: the S3 credential (set it with --secret), required with storage = 's3'",
        "registry:s3SecretKey is not set; accepted: the S3 credential (set it with --secret), required with storage = 's3'",
    ]


def test_s3_settings_without_s3_storage_are_refused_and_secrets_are_not_shown() -> None:
    found = errors(s3Bucket="b-1", s3SecretKey=SECRET)
    assert found == [
        "registry:s3Bucket = 'b-1' is invalid; accepted: empty while storage = 'filesystem' (set storage to s3 to use it)",
        "registry:s3SecretKey = <secret> is invalid; accepted: empty while storage = 'filesystem' (set storage to s3 to use it)",
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"storage": "nfs"}, "registry:storage = 'nfs' is invalid; accepted: filesystem or s3"),
        ({**S3, "s3Endpoint": "s3.example.com"}, "registry:s3Endpoint = 's3.example.com' is invalid; accepted: an http:// or https:// URL"),
        ({**S3, "s3Endpoint": "https://s3.example.com/bucket"}, "registry:s3Endpoint = 'https://s3.example.com/bucket' is invalid"),
        ({**S3, "s3Bucket": "Bad_Bucket"}, "registry:s3Bucket = 'Bad_Bucket' is invalid; accepted: an S3 bucket name"),
        ({**S3, "s3SecretKey": "has space"}, "registry:s3SecretKey = <secret> is invalid; accepted: 1-256 printable"),
        ({**S3, "s3RootDirectory": "registry"}, "registry:s3RootDirectory = 'registry' is invalid; accepted: empty, or a prefix"),
        ({**S3, "s3Endpoint": "http://10.0.0.5:9000", "s3CaFile": "/etc/ca.pem"},
         "registry:s3CaFile = '/etc/ca.pem' is invalid; accepted: a CA file only with an https:// s3Endpoint"),
        ({**S3, "s3ForcePathStyle": "false"}, "registry:s3ForcePathStyle = 'false' is invalid; accepted: true with Distribution 2"),
        ({**S3, "retention": "true"}, "registry:retention = 'true' is invalid; accepted: false with storage = 's3'"),
        ({"registryMajorVersion": "4"}, "registry:registryMajorVersion = '4' is invalid; accepted: 2 or 3"),
        ({"registryReplicas": "0"}, "registry:registryReplicas = '0' is invalid; accepted: an integer from 1 to 8"),
        ({"registryPort": "65534", "registryReplicas": "3"},
         "registry:registryReplicas = '3' is invalid; accepted: at most 2 with registryPort = 65534"),
    ],
)  # fmt: skip
def test_each_bad_storage_or_replica_setting_names_key_value_and_what_is_accepted(raw: dict[str, str], expected: str) -> None:
    found = errors(**raw)
    assert any(line.startswith(expected) for line in found), found


def test_virtual_hosted_addressing_is_fine_on_distribution_3() -> None:
    s = parse_settings({"host": "h", **S3, "s3ForcePathStyle": "false", "registryImage": "registry:3"})
    assert not s.s3_force_path_style and s.distribution == 3


# --- the env file and the container ------------------------------------------------------------------------------


def test_s3_env_file_replaces_the_storage_section_and_holds_the_credential() -> None:
    env = dict(line.split("=", 1) for line in render_registry_env("h77p", storage=STORAGE, s3_access_key=ACCESS, s3_secret_key=SECRET).splitlines())
    assert env == {
        "REGISTRY_STORAGE": "s3",
        "REGISTRY_STORAGE_S3_REGION": "garage",
        "REGISTRY_STORAGE_S3_BUCKET": "reg",
        "REGISTRY_STORAGE_S3_REGIONENDPOINT": "http://127.0.0.1:8333",
        "REGISTRY_STORAGE_S3_SECURE": "false",
        "REGISTRY_STORAGE_S3_FORCEPATHSTYLE": "true",
        "REGISTRY_STORAGE_S3_ROOTDIRECTORY": "/r",
        "REGISTRY_STORAGE_S3_ACCESSKEY": ACCESS,
        "REGISTRY_STORAGE_S3_SECRETKEY": SECRET,
        "REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR": "inmemory",
        "REGISTRY_STORAGE_REDIRECT_DISABLE": "true",
        "REGISTRY_STORAGE_DELETE_ENABLED": "true",
        "REGISTRY_HTTP_SECRET": "h77p",
    }


def test_distribution_3_logs_at_info_and_exports_no_traces() -> None:
    env = render_registry_env("x", distribution=3).splitlines()
    assert "REGISTRY_LOG_LEVEL=info" in env and "OTEL_TRACES_EXPORTER=none" in env
    assert not any(line.startswith(("REGISTRY_LOG_LEVEL", "OTEL_")) for line in render_registry_env("x").splitlines())


def test_a_private_ca_is_mounted_read_only_and_is_the_only_trust_root() -> None:
    storage = StorageSpec(kind="s3", endpoint="https://s3.lan", bucket="b", ca_file="/etc/ssl/s3-ca.pem")
    assert f"SSL_CERT_FILE={S3_CA_IN_CONTAINER}" in render_registry_env("x", storage=storage).splitlines()
    line = registry_docker_run(CONTAINER, "registry:3", 5000, "/srv/data/registry", ENV_FILE, ca_file="/etc/ssl/s3-ca.pem")
    argv = shlex.split(line)
    assert argv[argv.index("-v", argv.index("-v") + 1) + 1] == f"/etc/ssl/s3-ca.pem:{S3_CA_IN_CONTAINER}:ro"
    assert "--network" in argv and "REGISTRY_HTTP_ADDR=127.0.0.1:5000" in argv
    deploy = registry_run(CONTAINER, "registry:3", 5000, "/srv/data/registry", ENV_FILE, "/etc/ssl/s3-ca.pem")
    assert "s3CaFile /etc/ssl/s3-ca.pem does not exist on the server" in deploy


def test_the_s3_credential_reaches_the_host_only_as_secret_stdin() -> None:
    run = run_program({**TYPICAL, **S3, "registryImage": "registry:3"}, secret_keys=("s3AccessKey", "s3SecretKey"))
    assert run.error is None, run.error
    container = run.named("registry-container")
    assert f"REGISTRY_STORAGE_S3_SECRETKEY={SECRET}" in container.value("stdin")
    for registration in run.registrations:
        leaked = [path for path, text in exposed_strings(registration.inputs) if SECRET in text or ACCESS in text]
        assert leaked == [], (registration.name, leaked)
    assert not any(SECRET in str(v) for v in run.exports.values())


# --- maintenance -------------------------------------------------------------------------------------------------


def test_distribution_3_gc_reads_the_image_config_where_registry_3_keeps_it() -> None:
    script = render_maintenance_script(SPEC)
    assert "CONFIG=/etc/distribution/config.yml" in script
    two = render_maintenance_script(MaintenanceSpec(**{**SPEC.__dict__, "distribution": 2}))
    assert "CONFIG=/etc/docker/registry/config.yml" in two


def test_with_s3_backups_are_the_store_s_job_and_restore_refuses() -> None:
    script = render_maintenance_script(SPEC)
    assert "STORAGE='S3 bucket reg/r at http://127.0.0.1:8333 (region garage)'" in script
    backup = script[script.index("cmd_backup() {"):script.index("cmd_restore() {")]
    assert backup.splitlines()[1].lstrip().startswith('[ "$STORAGE" = filesystem ] || s3_only')
    install = maintenance_install(SPEC, "Sun *-*-* 03:00:00", "*-*-* 02:30:00")
    assert "registry-backup.timer" not in "".join(f.path for f in maintenance_files(SPEC, "x", ""))
    assert "registry-backup.timer is not installed: with S3 storage the store backs the data up" in install
    assert "systemctl enable registry-backup.timer" not in install
    fs = maintenance_install(MaintenanceSpec(**{**SPEC.__dict__, "storage": StorageSpec()}), "daily", "daily")
    assert "systemctl enable registry-backup.timer" in fs


def test_the_s3_maintenance_script_passes_shellcheck(tmp_path: Path) -> None:
    shellcheck(tmp_path, {"maintenance-s3": render_maintenance_script(SPEC)})


# --- replicas ------------------------------------------------------------------------------------------------------


REPLICAS = MaintenanceSpec(**{**SPEC.__dict__, "replicas": 3})


def test_replicas_listen_on_consecutive_loopback_ports() -> None:
    assert upstream_address(5000) == "127.0.0.1:5000"
    assert upstream_address(5000, 3) == "127.0.0.1:5000 127.0.0.1:5001 127.0.0.1:5002"


def test_replicas_are_recreated_one_at_a_time_each_leaving_the_slots_before_it_stops() -> None:
    script = registry_run_replicas(CONTAINER, "registry:3", 5000, 3, "/srv/data/registry", ENV_FILE)
    lines = script.splitlines()
    runs = [i for i, line in enumerate(lines) if line.startswith("docker run -d")]
    assert [shlex.split(lines[i])[4] for i in runs] == ["registry", "registry-2", "registry-3"]
    ports = (5000, 5001, 5002)
    for i, port in zip(runs, ports, strict=True):
        name = shlex.split(lines[i])[4]
        assert f"-e REGISTRY_HTTP_ADDR=127.0.0.1:{port} " in lines[i] and "--network host" in lines[i]
        stop = max(j for j in range(i) if lines[j].startswith("docker stop -t 25 "))
        assert lines[stop].split()[4] == name  # stopped just before its own run
        # Before it stops (if it runs), the slots go to the other replicas, and requests already sent get a moment.
        others = " ".join(str(p) for p in ports if p != port)
        assert lines[stop - 1] == (
            f"if [ \"$(docker inspect -f '{{{{.State.Running}}}}' {name} 2>/dev/null)\" = true ]; "
            f"then slots {others}; sleep {REPLICA_SETTLE_SECONDS}; fi"
        )
        # Back in the slots only once it answers.
        wait = next(j for j in range(i, len(lines)) if lines[j].startswith("until curl"))
        assert f"http://127.0.0.1:{port}/v2/" in lines[wait]
        back = next(j for j in range(wait, len(lines)) if lines[j].startswith("slots "))
        assert lines[back] == "slots 5000 5001 5002" and lines[wait:back].count("done") == 1
    assert lines.index("cat > /etc/registry/registry.env.new") < runs[0]
    assert "docker inspect registry-4 " in script and "docker inspect registry-3 " not in script  # scale-down
    assert "reload" not in script and "caddy" not in script


def test_the_slots_writer_keeps_only_answering_replicas_and_replaces_each_file_whole() -> None:
    script = registry_run_replicas(CONTAINER, "registry:3", 5000, 2, "/d", ENV_FILE)
    writer = script[script.index("slots() {"):script.index("\n}\n", script.index("slots() {"))]
    assert 'curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:$port/v2/"' in writer
    assert '[ -n "$live" ] || return 0' in writer  # none answers: the slots stay
    assert f'mv "{UPSTREAM_DIR}/$i.new" "{UPSTREAM_DIR}/$i"; }} 2>/dev/null || return 0' in writer and "chmod 0644" in writer
    # Only the roll makes the folder; removing the replicas never brings back slots a destroy just removed.
    assert f"install -d -m 0755 {UPSTREAM_DIR}" in script and "install -d" not in writer
    assert "install -d" not in registry_remove_replicas(CONTAINER, 5000)


def test_removing_the_replicas_moves_the_slots_to_the_first_then_stops_it_last() -> None:
    script = registry_remove_replicas(CONTAINER, 5000)
    lines = script.splitlines()
    assert lines.index("slots 5000") < lines.index("for name in registry-2 registry-3 registry-4 registry-5 registry-6 "
                                                   "registry-7 registry-8; do")  # fmt: skip
    assert lines[-2:] == ["docker stop -t 25 registry >/dev/null 2>&1 || true", "docker rm -f registry >/dev/null 2>&1 || true"]


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
    single = render_maintenance_script(SPEC)
    assert "REPLICAS=registry:5000" in single


def test_preflight_checks_every_replica_port_against_its_own_container() -> None:
    common = {"registry_port": 5000, "container": CONTAINER, "data_dir": "/d", "domain": "r.example.com",
              "caddyfile": "/etc/caddy/Caddyfile", "registries_file": None}  # fmt: skip
    one, three = preflight(False, "k3s", **common), preflight(False, "k3s", **common, replicas=3)  # type: ignore[arg-type]
    assert "port=5001" not in one
    for port, name in ((5000, "registry"), (5001, "registry-2"), (5002, "registry-3")):
        assert f"port={port}; name={name}" in three
    assert "case \"$cname\" in registry-2|registry-3) continue ;; esac" in three


def test_replica_and_s3_scripts_pass_shellcheck(tmp_path: Path) -> None:
    shellcheck(tmp_path, {
        "run-replicas": registry_run_replicas(CONTAINER, "registry:3", 5000, 3, "/d", ENV_FILE, "/etc/ssl/ca.pem"),
        "remove-replicas": registry_remove_replicas(CONTAINER, 5000),
        "maintenance-replicas": render_maintenance_script(REPLICAS),
        "preflight-replicas": preflight(False, "k3s", registry_port=5000, container=CONTAINER, data_dir="/d",
                                        domain="r.example.com", caddyfile="/c", registries_file=None, replicas=3),
    })  # fmt: skip


def test_several_replicas_change_image_by_update_and_one_replica_by_replacement() -> None:
    one = run_program({**TYPICAL})
    three = run_program({**TYPICAL, **S3, "registryReplicas": "3"}, secret_keys=("s3AccessKey", "s3SecretKey"))
    assert three.error is None, three.error
    single, rolling = one.named("registry-container"), three.named("registry-container")
    assert single.value("update") in (None, "") and rolling.value("update") == rolling.value("create")
    assert len(single.value("triggers")) == 2 and rolling.value("triggers") == [5000]
