"""renderers/registry_container.py: `docker run` on the host network bound to loopback, replicas one at a time."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from components.registry import CONTAINER, ENV_FILE
from renderers.caddyfile import UPSTREAM_DIR
from renderers.maintenance_script import render_maintenance_script
from renderers.preflight import preflight
from renderers.registry_container import (
    REPLICA_SETTLE_SECONDS,
    registry_docker_run,
    registry_listen_env,
    registry_remove_replicas,
    registry_run,
    registry_run_replicas,
)
from renderers.registry_env import S3_CA_IN_CONTAINER, StorageSpec, render_registry_env
from tests.unit.support import REPLICAS, shellcheck


def test_docker_run_uses_host_networking_bound_to_loopback_and_publishes_nothing() -> None:
    line = registry_docker_run(CONTAINER, "registry:2.8.3", 5123, "/srv/data/registry", ENV_FILE)
    assert line == (
        "docker run -d --name registry --label io.registry-program.managed-by=pulumi --restart unless-stopped --network host "
        "-v /srv/data/registry:/var/lib/registry --env-file /etc/registry/registry.env "
        "-e REGISTRY_HTTP_ADDR=127.0.0.1:5123 -e REGISTRY_HTTP_DEBUG_ADDR= registry:2.8.3"
    )
    argv = shlex.split(line)
    assert not {"-p", "--publish", "-P", "--publish-all"} & set(argv)


def test_listen_settings_bind_loopback_and_switch_the_debug_listener_off() -> None:
    # An empty REGISTRY_HTTP_DEBUG_ADDR overrides an image config's `http.debug.addr` (Distribution sets the field
    # from the environment value as given), so no debug/metrics listener can appear on the host's addresses.
    assert registry_listen_env(5000) == {"REGISTRY_HTTP_ADDR": "127.0.0.1:5000", "REGISTRY_HTTP_DEBUG_ADDR": ""}


def test_no_caller_can_change_where_the_registry_listens() -> None:
    with pytest.raises(ValueError, match="REGISTRY_HTTP_ADDR"):
        registry_docker_run(CONTAINER, "img", 5000, "/d", ENV_FILE, {"REGISTRY_HTTP_ADDR": ":5000"})


def test_a_private_ca_is_mounted_read_only_and_is_the_only_trust_root() -> None:
    storage = StorageSpec(kind="s3", endpoint="https://s3.lan", bucket="b", ca_file="/etc/ssl/s3-ca.pem")
    assert f"SSL_CERT_FILE={S3_CA_IN_CONTAINER}" in render_registry_env("x", storage=storage).splitlines()
    line = registry_docker_run(CONTAINER, "registry:3", 5000, "/srv/data/registry", ENV_FILE, ca_file="/etc/ssl/s3-ca.pem")
    argv = shlex.split(line)
    assert argv[argv.index("-v", argv.index("-v") + 1) + 1] == f"/etc/ssl/s3-ca.pem:{S3_CA_IN_CONTAINER}:ro"
    assert "--network" in argv and "REGISTRY_HTTP_ADDR=127.0.0.1:5000" in argv
    deploy = registry_run(CONTAINER, "registry:3", 5000, "/srv/data/registry", ENV_FILE, "/etc/ssl/s3-ca.pem")
    assert "s3CaFile /etc/ssl/s3-ca.pem does not exist on the server" in deploy


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


def test_replica_and_s3_scripts_pass_shellcheck(tmp_path: Path) -> None:
    shellcheck(tmp_path, {
        "run-replicas": registry_run_replicas(CONTAINER, "registry:3", 5000, 3, "/d", ENV_FILE, "/etc/ssl/ca.pem"),
        "remove-replicas": registry_remove_replicas(CONTAINER, 5000),
        "maintenance-replicas": render_maintenance_script(REPLICAS),
        "preflight-replicas": preflight(False, "k3s", registry_port=5000, container=CONTAINER, data_dir="/d",
                                        domain="r.example.com", caddyfile="/c", registries_file=None, replicas=3),
    })  # fmt: skip
