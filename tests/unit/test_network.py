"""Network exposure: the registry listens on the server's loopback only, and preflight names what else Docker publishes.

The registry runs with host networking, bound to 127.0.0.1 (no docker-proxy, no container address, no DOCKER-chain
rule). Every path that (re)creates the container uses the one `docker run` line. The preflight checks run here
against stand-in `ss`/`docker` commands; tests/e2e/test_network.py runs them, and a neighbour host, for real.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from components.registry import CONTAINER, ENV_FILE
from renderers.maintenance_script import READ_ONLY_ENV, MaintenanceSpec, render_maintenance_script
from renderers.preflight import preflight
from renderers.registry_container import DRAIN_ENV, registry_docker_run, registry_listen_env, registry_run
from tests.unit.support import TYPICAL, Programs, shellcheck
from tests.unit.test_lint import sent_scripts

LAUNCH = re.compile(r"\bdocker\s+(container\s+)?(run|create)\s+-")
"""Any command that makes a container."""
SPEC = MaintenanceSpec(
    container=CONTAINER, image="registry:2.8.3", port=5000, data_dir="/srv/data/registry", env_file=ENV_FILE,
    backup_dir="/srv/backups/registry", backup_keep=7,
)  # fmt: skip


# --- the docker run line ---------------------------------------------------------------------------------------


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


def test_window_settings_come_after_the_listen_settings_and_cannot_drop_them() -> None:
    line = registry_docker_run(CONTAINER, "img", 5000, "/d", ENV_FILE, {**DRAIN_ENV, **READ_ONLY_ENV})
    env = [a for a in shlex.split(line) if "=" in a and a.startswith("REGISTRY_")]
    assert env[:2] == ["REGISTRY_HTTP_ADDR=127.0.0.1:5000", "REGISTRY_HTTP_DEBUG_ADDR="]
    assert env[2:] == ["REGISTRY_HTTP_DRAINTIMEOUT=20s", 'REGISTRY_STORAGE_MAINTENANCE_READONLY={"enabled":true}']


def test_no_caller_can_change_where_the_registry_listens() -> None:
    with pytest.raises(ValueError, match="REGISTRY_HTTP_ADDR"):
        registry_docker_run(CONTAINER, "img", 5000, "/d", ENV_FILE, {"REGISTRY_HTTP_ADDR": ":5000"})


def test_deploy_and_both_maintenance_launches_recreate_the_same_networking() -> None:
    deploy = registry_run(CONTAINER, SPEC.image, SPEC.port, SPEC.data_dir, ENV_FILE)
    script = render_maintenance_script(SPEC)
    launches = [line for line in [*deploy.splitlines(), *script.splitlines()] if "docker run -d" in line]
    assert len(launches) == 3  # deploy, maintenance read-write, maintenance read-only
    for line in launches:
        assert "--network host " in line and " -p " not in line, line
        assert "-e REGISTRY_HTTP_ADDR=127.0.0.1:5000 -e REGISTRY_HTTP_DEBUG_ADDR= " in line, line


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
    assert f"port={port}; name=registry" in scripts["host-preflight.create"]


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


# --- preflight: the registry's port, and every other published container ---------------------------------------


def _fake_host(
    tmp_path: Path, *, ss: str = "", top: str | None = None, published: str | None = None, inspect: str = "",
    label: str = "",
) -> Path:
    """A PATH whose ss/docker answer as a server would; docker records every call in tmp_path/docker.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    state = tmp_path / "state"
    state.mkdir()
    (state / "ss").write_text(ss)
    (state / "inspect").write_text(inspect)
    (state / "label").write_text(label + "\n" if label else "")
    if top is not None:
        (state / "top").write_text(top)
    if published is not None:
        (state / "port").write_text(published)
    tools = {
        # Only the registry's port has listeners here; 80/443 are free.
        "ss": f'case "$*" in *":80 "*) ;; *) cat {state}/ss ;; esac\n',
        "docker": (
            f'printf "%s\\n" "$*" >> {tmp_path}/docker.log\n'
            'case "$1" in\n'
            "  info) ;;\n"
            f'  top) [ -f {state}/top ] || {{ echo "Error: No such container: $2" >&2; exit 1; }}; echo PID; cat {state}/top ;;\n'
            f'  port) [ -f {state}/port ] || {{ echo "Error: No such container: $2" >&2; exit 1; }}; cat {state}/port ;;\n'
            f'  ps) [ -s {state}/inspect ] && echo abc123 ;;\n'
            # `docker inspect registry` (the takeover check) knows the container only where `top` says it runs.
            f'  inspect) case "$2" in\n'
            f'    -f) case "$3" in *Labels*) cat {state}/label 2>/dev/null ;; *Mounts*) echo /srv/data/registry ;;\n'
            f'        *Config.Image*) echo registry:2 ;; *) cat {state}/inspect ;; esac ;;\n'
            f'    *) [ -f {state}/top ] || exit 1 ;;\n'
            "  esac ;;\n"
            "  *) exit 3 ;;\n"
            "esac\n"
        ),
        "caddy": "echo 'v2.8.4 h1:abc='\n",
        "systemctl": "exit 0\n",
        "curl": "exit 0\n",
    }
    for name, body in tools.items():
        tool_file = bin_dir / name
        tool_file.write_text("#!/bin/sh\n" + body)
        tool_file.chmod(0o755)
    return bin_dir


def _preflight_script(require_k3s: bool, service: str, registry_port: int, tmp_path: Path) -> str:
    return preflight(
        require_k3s, service, registry_port=registry_port, container=CONTAINER, data_dir="/srv/data/registry",
        domain="registry.example.test", caddyfile=str(tmp_path / "Caddyfile"),
        registries_file=str(tmp_path / "registries.yaml") if require_k3s else None,
    )


def _preflight(tmp_path: Path, registry_port: int = 5000, **host: str) -> subprocess.CompletedProcess[str]:
    bin_dir = _fake_host(tmp_path, **host)
    return subprocess.run(
        ["sh", "-c", _preflight_script(False, "k3s", registry_port, tmp_path)],
        capture_output=True, text=True, env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, check=False, timeout=60,
    )  # fmt: skip


def _listener(port: int, process: str, pid: int) -> str:
    return f'LISTEN 0      4096   127.0.0.1:{port}  0.0.0.0:* users:(("{process}",pid={pid},fd=3))\n'


def test_free_port_and_no_published_container_pass_without_a_warning(tmp_path: Path) -> None:
    result = _preflight(tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "preflight: ok\n", "")


def test_port_held_by_the_registry_containers_own_process_passes(tmp_path: Path) -> None:
    result = _preflight(tmp_path, ss=_listener(5000, "registry", 4242), top="   4242\n", published="", label="pulumi")
    assert (result.returncode, result.stdout, result.stderr) == (0, "preflight: ok\n", "")


def test_port_published_by_a_hand_made_registry_container_passes(tmp_path: Path) -> None:
    # The seed's `docker run -p 127.0.0.1:5000:5000 --name registry`: docker-proxy holds the port; deploy replaces it.
    result = _preflight(
        tmp_path, ss=_listener(5000, "docker-proxy", 351), top="   386\n", published="5000/tcp -> 127.0.0.1:5000\n",
        inspect="/registry|false|127.0.0.1:5000->5000/tcp \n",
    )  # fmt: skip
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("preflight: takes over the existing container registry (registry:2): replaced")
    assert result.stdout.endswith("\npreflight: ok\n")


def test_port_held_by_another_process_fails_naming_it(tmp_path: Path) -> None:
    result = _preflight(tmp_path, registry_port=5123, ss=_listener(5123, "nginx", 77), top="   4242\n", published="")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(
        "preflight: port 5123 (the registry's, on 127.0.0.1) is held by something other than the registry container: "
    )
    assert '"nginx",pid=77' in result.stderr


def test_port_published_by_another_container_fails_even_with_a_registry_container(tmp_path: Path) -> None:
    result = _preflight(
        tmp_path, ss=_listener(5000, "docker-proxy", 351), top="   4242\n", published="",
        inspect="/other|false|127.0.0.1:5000->5000/tcp \n",
    )  # fmt: skip
    assert result.returncode == 1
    assert "held by something other than the registry container" in result.stderr and "docker-proxy" in result.stderr
    assert "preflight: warning: container other publishes 127.0.0.1:5000->5000/tcp" in result.stderr


def test_port_held_without_any_registry_container_fails(tmp_path: Path) -> None:
    result = _preflight(tmp_path, ss=_listener(5000, "docker-proxy", 351))
    assert result.returncode == 1 and "held by something other than the registry container" in result.stderr


def test_every_other_published_container_gets_a_warning_and_is_left_alone(tmp_path: Path) -> None:
    inspect = (
        "/registry|false|127.0.0.1:5000->5000/tcp \n"
        "/app|false|127.0.0.1:8080->80/tcp 0.0.0.0:8443->443/tcp \n"
        "/quiet|false|\n"
        "/all|true|\n"
    )
    result = _preflight(tmp_path, inspect=inspect)
    assert (result.returncode, result.stdout) == (0, "preflight: ok\n")
    warnings = result.stderr.splitlines()
    assert [w.split(":", 2)[2].split(" publishes ")[0] for w in warnings] == [" container app", " container all"]
    assert warnings[0].startswith(
        "preflight: warning: container app publishes 127.0.0.1:8080->80/tcp 0.0.0.0:8443->443/tcp: "
        "Docker also accepts traffic forwarded from other hosts to its container address"
    )
    assert warnings[1].startswith("preflight: warning: container all publishes every exposed port (-P): ")
    calls = [line.split()[0] for line in (tmp_path / "docker.log").read_text().splitlines()]
    assert set(calls) <= {"info", "ps", "inspect", "top", "port"}  # read-only: nothing is changed


def test_preflight_passes_shellcheck(tmp_path: Path) -> None:
    shellcheck(tmp_path, {"preflight": _preflight_script(True, "k3s-agent", 5000, tmp_path)})
