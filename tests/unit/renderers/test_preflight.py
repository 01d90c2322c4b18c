"""renderers/preflight.py: the port checks and warnings against stand-in `ss`/`docker`, and the takeover notice."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from components.registry import CONTAINER
from renderers.preflight import preflight, takeover_notice
from tests.unit.support import DOMAIN, shellcheck


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


def test_preflight_checks_every_replica_port_against_its_own_container(tmp_path: Path) -> None:
    # Every registry port is held by a process of no container: each replica's port fails naming that replica.
    bin_dir = _fake_host(tmp_path, ss=_listener(5000, "nginx", 99))
    script = preflight(
        False, "k3s", registry_port=5000, container=CONTAINER, data_dir="/d", domain="r.example.com",
        caddyfile=str(tmp_path / "Caddyfile"), registries_file=None, replicas=3,
    )  # fmt: skip
    result = subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, check=False
    )
    assert result.returncode == 1
    failures = [line for line in result.stderr.splitlines() if line.startswith("preflight: port ")]
    assert [line.split(" is held")[0] for line in failures] == [
        f"preflight: port {port} (the registry's, on 127.0.0.1)" for port in (5000, 5001, 5002)
    ]
    assert [line.split("other than the ")[1].split(" container")[0] for line in failures] == [
        "registry", "registry-2", "registry-3"
    ]


def test_the_preview_notice_says_what_a_first_update_takes_over() -> None:
    notice = takeover_notice("registry", DOMAIN, "/etc/caddy/Caddyfile", "/etc/rancher/k3s/registries.yaml")
    assert "a container named registry is replaced" in notice
    assert f"an inline site for {DOMAIN} in /etc/caddy/Caddyfile is replaced" in notice
    assert "Caddyfile.YYYYMMDD-HHMMSS.bak" in notice and "other sites stay" in notice
    assert "/etc/rancher/k3s/registries.yaml is merged" in notice and "every other entry and key stays" in notice
    assert "registries.yaml" not in takeover_notice("registry", DOMAIN, "/etc/caddy/Caddyfile", None)


def _same_filesystem_warning_output(tmp_path: Path, data_dir: str, backup_dir: str | None) -> str:
    """The whole preflight against a stand-in host; its backupDir warning lines (stderr), if any."""
    bin_dir = _fake_host(tmp_path)
    script = preflight(
        False, "k3s", registry_port=5000, container=CONTAINER, data_dir=data_dir, domain="r.example.com",
        caddyfile=str(tmp_path / "Caddyfile"), registries_file=None, backup_dir=backup_dir,
    )  # fmt: skip
    result = subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, check=True
    )
    return "".join(line + "\n" for line in result.stderr.splitlines() if line.startswith("preflight: warning: backupDir"))


def test_preflight_warns_when_backups_share_the_data_directory_s_filesystem(tmp_path: Path) -> None:
    # Neither directory exists yet: each is judged by its nearest existing parent, as on a fresh server.
    out = _same_filesystem_warning_output(
        tmp_path, str(tmp_path / "data" / "registry"), str(tmp_path / "backups" / "registry")
    )
    assert out.startswith(f"preflight: warning: backupDir {tmp_path}/backups/registry is on the same filesystem as dataDir ")
    assert "survive a deleted or corrupted registry, not a lost disk or server" in out


@pytest.mark.skipif(
    not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == os.stat(tempfile.gettempdir()).st_dev,
    reason="needs two filesystems (/dev/shm and the temporary directory)",
)
def test_preflight_says_nothing_when_backups_are_on_another_filesystem(tmp_path: Path) -> None:
    assert _same_filesystem_warning_output(tmp_path, str(tmp_path / "data"), "/dev/shm/registry-backups-test") == ""


def test_preflight_checks_the_backup_filesystem_only_when_backups_are_archived(tmp_path: Path) -> None:
    data, backups = str(tmp_path / "data"), str(tmp_path / "backups")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert "same filesystem as dataDir" in _same_filesystem_warning_output(tmp_path / "a", data, backups)
    assert _same_filesystem_warning_output(tmp_path / "b", data, None) == ""
