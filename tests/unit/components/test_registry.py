"""components/registry.py under Pulumi's mocks: the container step, its env file and secret stdin, replicas."""

from __future__ import annotations

import re
import shlex

import pytest

from components.registry import ENV_FILE, upstream_address
from renderers.registry_env import render_registry_env
from tests.harness import ProgramRun, run_program
from tests.unit.support import (
    ACCESS,
    S3,
    SECRET,
    TYPICAL,
    Programs,
    exposed_strings,
    password,
    sent_scripts,
)


def test_registry_container_is_removed_before_its_replacement_starts(typical: ProgramRun) -> None:
    container = typical.named("registry-container")
    assert container.delete_before_replace
    assert container.value("triggers") == ["registry:2.8.3", 5000]
    create = container.value("create")
    assert "registry:2.8.3" in create and "--network host" in create and "REGISTRY_HTTP_ADDR=127.0.0.1:5000" in create
    assert "-v /srv/data/registry:/var/lib/registry" in create


def test_registry_env_file_holds_the_http_secret(typical: ProgramRun) -> None:
    stdin = typical.named("registry-container").value("stdin")
    assert stdin == render_registry_env(
        password(typical, "credentials-http-secret"), notify_url="http://127.0.0.1:9393/"
    )


LAUNCH = re.compile(r"\bdocker\s+(container\s+)?(run|create)\s+-")
"""Any command that makes a container."""


@pytest.mark.parametrize("port", [5000, 5123])
def test_every_docker_run_the_program_sends_is_the_registry_line(programs: Programs, port: int) -> None:
    run = programs.ok({**TYPICAL, "registryPort": str(port)})
    scripts = sent_scripts(run)
    lines = [(where, line) for where, text in scripts.items() for line in text.splitlines() if LAUNCH.search(line)]
    assert {where for where, _ in lines} == {"registry-container.create", "maintenance-install.create"}
    for where, line in lines:
        assert f"--network host -v /srv/data/registry:/var/lib/registry --env-file {ENV_FILE} " in line, where
        assert f"-e REGISTRY_HTTP_ADDR=127.0.0.1:{port} -e REGISTRY_HTTP_DEBUG_ADDR= " in line, where
        assert not re.search(r"(^|\s)(-p|--publish|-P)(\s|=)", line), where
    # Caddy's upstream and the preflight's port follow the setting.
    assert f"127.0.0.1:{port}" in run.named("registry-container").value("create")
    assert f"\nREPLICAS=registry:{port}\n" in scripts["host-preflight.create"]


def test_every_replica_the_program_runs_is_bound_to_loopback_on_its_own_port(programs: Programs) -> None:
    config = {
        **TYPICAL, "registryReplicas": "3", "storage": "s3", "s3Endpoint": "https://s3.example.com", "s3Bucket": "reg",
        "s3AccessKey": "AKIANET", "s3SecretKey": "net-test-only", "s3CaFile": "/etc/ssl/s3-ca.pem",
    }  # fmt: skip
    scripts = sent_scripts(programs.ok(config))
    lines = [(where, line) for where, text in scripts.items() for line in text.splitlines() if LAUNCH.search(line)]
    assert {where for where, _ in lines} == {"registry-container.create", "registry-container.update", "maintenance-install.create"}
    ports = {"registry": 5000, "registry-2": 5001, "registry-3": 5002}
    seen: dict[str, list[str]] = {}
    for where, line in lines:
        for segment in line.split("docker run ")[1:]:  # the maintenance launchers hold one run per replica
            argv = shlex.split("docker run " + segment.split(" ;;")[0].split("; }")[0].removesuffix(" >/dev/null"))
            name = argv[argv.index("--name") + 1]
            env = [argv[i + 1] for i, a in enumerate(argv) if a == "-e"]
            assert argv[argv.index("--network") + 1] == "host", (where, name)
            assert env[:2] == [f"REGISTRY_HTTP_ADDR=127.0.0.1:{ports[name]}", "REGISTRY_HTTP_DEBUG_ADDR="], (where, name)
            assert not {"-p", "--publish", "-P", "--publish-all"} & set(argv), (where, name)
            seen.setdefault(where, []).append(name)
    assert seen["registry-container.create"] == list(ports) == seen["registry-container.update"]
    assert seen["maintenance-install.create"] == [*ports, *ports]  # read-write and read-only


def test_the_s3_credential_reaches_the_host_only_as_secret_stdin() -> None:
    run = run_program({**TYPICAL, **S3, "registryImage": "registry:3"}, secret_keys=("s3AccessKey", "s3SecretKey"))
    assert run.error is None, run.error
    container = run.named("registry-container")
    assert f"REGISTRY_STORAGE_S3_SECRETKEY={SECRET}" in container.value("stdin")
    for registration in run.registrations:
        leaked = [path for path, text in exposed_strings(registration.inputs) if SECRET in text or ACCESS in text]
        assert leaked == [], (registration.name, leaked)
    assert not any(SECRET in str(v) for v in run.exports.values())


def test_replicas_listen_on_consecutive_loopback_ports() -> None:
    assert upstream_address(5000) == "127.0.0.1:5000"
    assert upstream_address(5000, 3) == "127.0.0.1:5000 127.0.0.1:5001 127.0.0.1:5002"


def test_several_replicas_change_image_by_update_and_one_replica_by_replacement() -> None:
    one = run_program({**TYPICAL})
    three = run_program({**TYPICAL, **S3, "registryReplicas": "3"}, secret_keys=("s3AccessKey", "s3SecretKey"))
    assert three.error is None, three.error
    single, rolling = one.named("registry-container"), three.named("registry-container")
    assert single.value("update") in (None, "") and rolling.value("update") == rolling.value("create")
    assert len(single.value("triggers")) == 2 and rolling.value("triggers") == [5000]
