"""The disposable test host itself: what later end-to-end tests rely on."""

from __future__ import annotations

import base64
import re
import socket
import ssl

import paramiko
import pytest
from paramiko.common import cMSG_CHANNEL_REQUEST
from paramiko.message import Message

from .testhost import (
    ACME_CA_URL,
    EXTRAS_FILES,
    PEBBLE_LISTENER_CA,
    REGISTRY3_TAGS,
    REQUIRED_UNITS,
    TestHost,
    docker,
    ensure_extras,
)

pytestmark = pytest.mark.e2e


def _connect(host: TestHost) -> paramiko.SSHClient:
    """A paramiko client logged in as ubuntu with the test key."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    key = paramiko.Ed25519Key.from_private_key_file(str(host.private_key_path))
    client.connect(
        host.ssh_host, port=host.ssh_port, username=host.user, pkey=key,
        look_for_keys=False, allow_agent=False, timeout=10,
    )  # fmt: skip
    return client


def _env_request_accepted(transport: paramiko.Transport, name: str, value: str) -> bool:
    """Send an `env` request with want-reply (as Go's ssh Setenv does, which pulumi-command uses); True if sshd
    accepts it. paramiko's set_environment_variable sends want_reply=False and so never learns of a refusal."""
    channel = transport.open_session()
    try:
        message = Message()
        message.add_byte(cMSG_CHANNEL_REQUEST)
        message.add_int(channel.remote_chanid)
        message.add_string("env")
        message.add_boolean(True)
        message.add_string(name)
        message.add_string(value)
        channel._event_pending()  # paramiko has no public request-with-reply API
        channel.transport._send_user_message(message)
        try:
            channel._wait_for_event()
        except paramiko.SSHException:
            return False
        return True
    finally:
        channel.close()


def _https_get(host: TestHost, path: str, userpass: str) -> bytes:
    """GET https://DOMAIN{path} via 127.0.0.1:https_port, trusting Pebble's roots; the raw response head."""
    ctx = ssl.create_default_context(cadata=host.pebble_root())
    auth = base64.b64encode(userpass.encode()).decode()
    request = f"GET {path} HTTP/1.1\r\nHost: {host.domain}\r\nAuthorization: Basic {auth}\r\nConnection: close\r\n\r\n"
    with (
        socket.create_connection((host.ssh_host, host.https_port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=host.domain) as tls,
    ):
        tls.sendall(request.encode())
        return tls.recv(200)


def _all_active(host: TestHost) -> None:
    """Every unit the project relies on is active."""
    res = host.exec(f"systemctl is-active {' '.join(REQUIRED_UNITS)}", check=False)
    assert res.stdout.split() == ["active"] * len(REQUIRED_UNITS), res.stdout


def test_ssh_login_as_ubuntu_with_passwordless_sudo(testhost: TestHost) -> None:
    res = testhost.ssh("id -un; sudo -n true && echo sudo-ok")
    assert res.stdout.split() == ["ubuntu", "sudo-ok"]
    assert testhost.host_key().startswith("ssh-ed25519 ")


def test_password_login_impossible(testhost: TestHost) -> None:
    shadow = testhost.exec("getent shadow ubuntu").stdout.split(":")
    assert shadow[1] in ("*", "!", "!*"), "ubuntu must have no usable password"


def test_sshd_refuses_env_other_than_lang_and_lc(testhost: TestHost) -> None:
    client = _connect(testhost)
    try:
        transport = client.get_transport()
        assert transport is not None
        assert _env_request_accepted(transport, "LANG", "C.UTF-8")
        assert _env_request_accepted(transport, "LC_ALL", "C.UTF-8")
        assert not _env_request_accepted(transport, "REGTEST_SECRET", "x")
        # Without want-reply the refusal is silent: the variable is simply not set.
        _, stdout, _ = client.exec_command(
            'printf "%s|%s" "${REGTEST_SECRET-unset}" "${LANG-unset}"',
            environment={"REGTEST_SECRET": "leak", "LANG": "C.UTF-8"},
        )
        assert stdout.read().decode() == "unset|C.UTF-8"
    finally:
        client.close()


def test_inner_docker_runs_registry_stand_in(testhost: TestHost) -> None:
    # Engine data is on a volume (not overlayfs), so the inner Docker uses overlay2 like a real host.
    assert testhost.exec("docker info --format '{{.Driver}}'").stdout.strip() == "overlay2"
    cid = testhost.exec("docker run -d --rm -p 127.0.0.1:5099:5000 registry:2").stdout.strip()
    try:
        code = testhost.exec(
            "for i in $(seq 50); do c=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:5099/v2/) "
            '&& [ "$c" = 200 ] && break; sleep 0.2; done; echo "$c"'
        ).stdout.strip()
        assert code == "200"
        # Like the real image: `registry` is on PATH (for `docker exec registry registry garbage-collect ...`)
        # and the entrypoint passes subcommands and flags on to it.
        assert "2.8" in testhost.exec(f"docker exec {cid} registry --version").stdout
        # busybox applets work, as in the Alpine-based original (e.g. a wget healthcheck).
        assert testhost.exec(f"docker exec {cid} wget -q -O- http://127.0.0.1:5000/v2/").stdout.strip() == "{}"
        assert "2.8" in testhost.exec("docker run --rm registry:2 --version").stdout
    finally:
        testhost.exec(f"docker rm -f {cid}", check=False)


def test_host_image_has_no_extras(testhost: TestHost) -> None:
    # The image the host booted (other tests may have installed the extras into the running host since).
    script = 'for f in "$@"; do [ ! -e "$f" ] || echo "$f"; done'
    assert docker("run", "--rm", "--entrypoint", "sh", testhost.image, "-c", script, "sh", *EXTRAS_FILES) == ""
    seeds = docker("run", "--rm", "--entrypoint", "ls", testhost.image, "/usr/share/regtest/images").split()
    assert sorted(seeds) == ["registry.tags", "registry.tar"]


def test_ensure_extras_loads_registry_3_and_installs_the_s3_server(testhost: TestHost) -> None:
    ensure_extras(testhost, registry3=True, s3=True)
    ensure_extras(testhost, registry3=True, s3=True)  # idempotent: nothing to do the second time
    ids = testhost.exec(f"docker image inspect -f '{{{{.Id}}}}' {' '.join(REGISTRY3_TAGS)}").stdout.split()
    assert len(ids) == len(REGISTRY3_TAGS) and len(set(ids)) == 1
    assert " v3." in testhost.exec("docker run --rm --entrypoint registry registry:3 --version").stdout
    assert "regtest-registry3" not in testhost.exec("docker images --format '{{.Repository}}'").stdout
    assert testhost.exec("stat -c %a /etc/regtest-s3 /etc/regtest-s3/s3.json").stdout.split() == ["700", "600"]
    # Installed, not started at boot: tests start it.
    assert testhost.exec("systemctl is-enabled regtest-s3", check=False).stdout.strip() == "disabled"
    testhost.exec("systemctl start regtest-s3")
    try:
        code = testhost.exec(
            "for i in $(seq 120); do c=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8333/registry-e2e/); "
            '[ "$c" = 403 ] && break; sleep 1; done; echo "$c"'
        ).stdout.strip()
        assert code == "403"  # anonymous: the bucket exists, access denied
    finally:
        testhost.exec("systemctl stop regtest-s3", check=False)


def test_caddy_installed_like_the_package(testhost: TestHost) -> None:
    version = testhost.ssh("caddy version").stdout
    m = re.match(r"v(\d+)\.(\d+)", version)
    assert m and (int(m[1]), int(m[2])) >= (2, 8), version
    assert testhost.exec("systemctl is-active caddy; systemctl is-enabled caddy").stdout.split() == [
        "active",
        "enabled",
    ]
    user = testhost.exec("getent passwd caddy").stdout.split(":")
    assert user[5] == "/var/lib/caddy"
    unit = testhost.exec("systemctl cat caddy").stdout
    assert "ExecReload=/usr/bin/caddy reload --config /etc/caddy/Caddyfile --force" in unit
    assert testhost.exec("curl -fsS http://127.0.0.1/").returncode == 0


def test_pebble_answers_with_listener_ca(testhost: TestHost) -> None:
    directory = testhost.exec(f"curl -fsS --cacert {PEBBLE_LISTENER_CA} {ACME_CA_URL}").stdout
    assert '"newAccount"' in directory
    root = testhost.pebble_root(current_only=True)
    assert root.startswith("-----BEGIN CERTIFICATE-----")
    assert testhost.exec(f"getent hosts {testhost.domain}").stdout.split()[0] == "127.0.0.1"


def test_k3s_stand_in_renders_registries_yaml(testhost: TestHost) -> None:
    assert "+standin" in testhost.exec("k3s --version").stdout
    assert testhost.exec("systemctl is-active k3s").stdout.strip() == "active"
    starts = testhost.exec("cat /var/lib/k3s-standin/starts.log").stdout.splitlines()
    assert starts and re.fullmatch(r"\S+T\S+\.\d{9}Z (absent|[0-9a-f]{64})", starts[-1])


def test_egress_guard_keeps_the_host_to_itself(testhost: TestHost) -> None:
    rules = testhost.exec("iptables -S OUTPUT; iptables -S DOCKER-USER; iptables -S REGTEST-EGRESS").stdout
    assert "-A OUTPUT -j REGTEST-EGRESS" in rules and "-A DOCKER-USER -j REGTEST-EGRESS" in rules
    assert "-j REJECT --reject-with icmp-admin-prohibited" in rules
    # The uplink's gateway is this machine's own Docker bridge. Guarded, a connection fails with
    # EHOSTUNREACH from the rule ("No route to host"), not with a reset from that machine.
    gateway = testhost.exec("ip -o route show default | awk '{print $3}'").stdout.strip()
    res = testhost.exec(f"timeout 5 bash -c 'echo > /dev/tcp/{gateway}/9'", check=False)
    assert "No route to host" in res.stderr, res.stderr
    inner = testhost.exec(f"docker run --rm --entrypoint wget registry:2 -q -O- http://{gateway}:9/", check=False)
    assert inner.returncode != 0 and "No route to host" in inner.stderr, inner.stderr


CHAIN_SETUP = r"""
set -e
docker run -d --name regtest-chain -p 127.0.0.1:5099:5000 registry:2 >/dev/null
hash=$(caddy hash-password --plaintext pullpw)
cp /etc/caddy/Caddyfile /root/Caddyfile.orig
cat > /etc/caddy/Caddyfile <<CADDY
{
	acme_ca ACME_CA
	acme_ca_root LISTENER_CA
}
DOMAIN {
	basic_auth {
		robot $hash
	}
	reverse_proxy 127.0.0.1:5099
}
CADDY
systemctl reload caddy
"""

CHAIN_CLEANUP = """
docker rm -f regtest-chain
cp /root/Caddyfile.orig /etc/caddy/Caddyfile && systemctl reload caddy
rm -f /etc/rancher/k3s/registries.yaml && systemctl restart k3s
k3s ctr images rm DOMAIN/e2e/registry:2
"""


def test_acme_through_pebble_and_k3s_pull_with_credentials(testhost: TestHost) -> None:
    """Caddy gets a Pebble certificate via http-01; the k3s stand-in pulls through it with registries.yaml."""
    d = testhost.domain
    setup = CHAIN_SETUP.replace("ACME_CA", ACME_CA_URL).replace("LISTENER_CA", PEBBLE_LISTENER_CA)
    testhost.exec(setup.replace("DOMAIN", d))
    try:
        testhost.exec(
            "for i in $(seq 60); do pebble-root /tmp/pebble-root.pem && curl -fsS -o /dev/null -u robot:pullpw "
            f"--cacert /tmp/pebble-root.pem https://{d}/v2/ && exit 0; sleep 0.5; done; exit 1"
        )
        # From this machine through the published loopback port, with SNI and Host set to the domain.
        assert _https_get(testhost, "/v2/", "robot:pullpw").startswith(b"HTTP/1.1 200")
        testhost.exec(
            "install -d /tmp/certs && cp /tmp/pebble-root.pem /tmp/certs/ca.crt && skopeo copy -q "
            f"--dest-cert-dir /tmp/certs --dest-creds robot:pullpw docker-daemon:registry:2 docker://{d}/e2e/registry:2"
        )
        registries = (
            f"configs:\n  {d}:\n    auth:\n      username: robot\n      password: PASSWORD\n"
            "    tls:\n      ca_file: /etc/ssl/regtest/pebble-root.pem\n"
        )
        install = "install -d /etc/rancher/k3s /etc/ssl/regtest && pebble-root /etc/ssl/regtest/pebble-root.pem"
        write = "cat > /etc/rancher/k3s/registries.yaml && systemctl restart k3s"
        testhost.exec(f"{install} && {write}", input=registries.replace("PASSWORD", "pullpw").encode())
        hosts_toml = testhost.exec(f"cat /var/lib/rancher/k3s/agent/etc/containerd/certs.d/{d}/hosts.toml").stdout
        assert 'ca = ["/etc/ssl/regtest/pebble-root.pem"]' in hosts_toml
        pulled = testhost.exec(f"k3s crictl pull {d}/e2e/registry:2")
        assert pulled.stdout.startswith("Image is up to date for sha256:")
        testhost.exec(write, input=registries.replace("PASSWORD", "wrong").encode())
        testhost.exec(f"k3s ctr images rm {d}/e2e/registry:2")
        refused = testhost.exec(f"k3s crictl pull {d}/e2e/registry:2", check=False)
        assert refused.returncode != 0 and "401 Unauthorized" in refused.stderr, refused.stderr
    finally:
        testhost.exec(CHAIN_CLEANUP.replace("DOMAIN", d), check=False)


def test_restart_brings_everything_back(testhost: TestHost) -> None:
    starts_before = len(testhost.exec("cat /var/lib/k3s-standin/starts.log").stdout.splitlines())
    key_before = testhost.host_key()
    testhost.restart()
    _all_active(testhost)
    assert testhost.ssh("sudo -n true && echo ok").stdout.strip() == "ok"
    assert testhost.host_key() == key_before
    starts_after = len(testhost.exec("cat /var/lib/k3s-standin/starts.log").stdout.splitlines())
    assert starts_after == starts_before + 1
    assert testhost.exec("docker image inspect registry:2 >/dev/null && echo ok").stdout.strip() == "ok"
