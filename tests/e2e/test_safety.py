"""Safe to point at a production server, on the real engine: the host key is trusted on first use and a different
host answering on the same address stops the update before any secret is sent; a secret setting stored in plaintext
fails before any connection."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import engine as eng_mod
from tests.e2e.clients import Clients, stack_config
from tests.e2e.conftest import HOST_NAME
from tests.e2e.engine import Engine
from tests.e2e.forward import Forwarder
from tests.e2e.stacks import EngineStack
from tests.e2e.testhost import TestHost, default_key_dir, start_host

pytestmark = pytest.mark.e2e


def _fingerprint(key: str) -> str:
    from components.host import fingerprint

    return fingerprint(key)


@pytest.fixture(scope="module")
def impostor() -> Iterator[TestHost]:
    """A second test host that accepts the same login key as the real one: a connection that did not check the
    host key would log in there and hand it every secret."""
    host = start_host(name=f"{HOST_NAME}-impostor", key_dir=default_key_dir(HOST_NAME))
    try:
        yield host
    finally:
        host.remove()


def _config(host: TestHost, port: int, **extra: str) -> dict[str, Any]:
    config = stack_config(host, flux="false", verify="false", sshPort=str(port), **extra)
    del config["sshHostKey"]
    return config


def test_changed_host_key_stops_the_update_before_any_secret_is_sent(
    testhost: TestHost, impostor: TestHost, engine: Engine, tmp_path: Path
) -> None:
    Clients(testhost).trust_pebble()
    front = Forwarder(testhost.ssh_port)
    stack = EngineStack.open(engine, "host-key", testhost, tmp_path / "project", _config(testhost, front.port,
                             sshHostKeyCheck="false"))
    try:
        # A stack from before host keys were checked (the explicit opt-out connects unverified) ...
        assert stack.apply().ok, stack.history[-1].error
        # ... turns the check on: the preview shows the key the update will record.
        stack.configure(sshHostKeyCheck="true")
        real = _fingerprint(testhost.host_key())
        preview = stack.preview()
        assert preview.ok, preview.error
        assert f"SSH host key of 127.0.0.1:{front.port}: {real} (trust on first use" in preview.text
        upgrade = stack.apply()
        assert upgrade.ok, upgrade.error
        rerun = sorted({e.name for e in upgrade.executions})
        print(f"\nupgrade to a checked host key re-ran {len(rerun)} steps: {rerun}")
        recorded = stack.stack.resources()["host-key"]["outputs"]
        assert (recorded["key"], recorded["fingerprint"]) == (testhost.host_key(), real)
        assert stack.preview(expect_no_changes=True).ok

        # Another server answers on the same address.
        front.target = impostor.ssh_port
        fake = _fingerprint(impostor.host_key())
        assert fake != real
        since = Clients(impostor).now()
        changed = stack.apply(credentialRotation="2")  # an update that would send new passwords
        assert not changed.ok
        assert f"the SSH host key of 127.0.0.1:{front.port} changed: recorded {real} (ssh-ed25519), offered now {fake}" in changed.error, changed.error[-3000:]
        assert changed.executions == []  # no command ran
        journal = Clients(impostor).journal("ssh", since)
        assert "Accepted" not in journal and "authenticating user" not in journal, journal
        assert stack.stack.resources()["host-key"]["outputs"]["key"] == testhost.host_key()  # state kept

        # The real server back: the update goes on.
        front.target = testhost.ssh_port
        assert stack.apply().ok, stack.history[-1].error
    finally:
        front.target = testhost.ssh_port
        stack.cleanup()
        front.close()


def test_plaintext_private_key_fails_before_any_connection(testhost: TestHost, engine: Engine, tmp_path: Path) -> None:
    config = {k: v for k, v in stack_config(testhost, flux="false").items() if k != "sshPrivateKey"}
    stack = eng_mod.Stack(engine, "plaintext-key", eng_mod.make_project(tmp_path / "project"), config)
    # As `pulumi config set sshPrivateKey < key` would, without --secret.
    engine.cli(["config", "set", "registry:sshPrivateKey", "--stack", "plaintext-key"], cwd=stack.project_dir,
               stdin=testhost.private_key)
    stack_file = (stack.project_dir / "Pulumi.plaintext-key.yaml").read_text()
    assert "PRIVATE KEY" in stack_file  # it really is in clear there
    clients = Clients(testhost)
    since = clients.now()
    run = stack.up()
    assert not run.ok
    assert "registry:sshPrivateKey is stored in plaintext in Pulumi.plaintext-key.yaml" in run.error
    assert "`pulumi config set --secret sshPrivateKey --stack plaintext-key < ~/.ssh/registry_deploy`" in run.error
    assert "PRIVATE KEY" not in run.text and "Traceback" not in run.error
    journal = clients.journal("ssh", since)
    assert "Accepted" not in journal and "Connection closed" not in journal, journal  # not even a key scan
    assert [r for r in stack.resources() if not r.startswith("registry-")] == []


SMALL = "/srv/backups/small"
"""A 16 MiB tmpfs as backupDir: a filesystem this test can fill."""


def test_backup_on_a_nearly_full_filesystem_is_refused_and_status_says_so(
    testhost: TestHost, engine: Engine, tmp_path: Path
) -> None:
    clients = Clients(testhost)
    clients.trust_pebble()
    testhost.exec(f"mkdir -p {SMALL} && mount -t tmpfs -o size=16m,mode=0700 tmpfs {SMALL}")
    stack = EngineStack.open(engine, "backup-space", testhost, tmp_path / "project", stack_config(
        testhost, flux="false", backupDir=SMALL, backupSchedule="", gcSchedule=""))
    try:
        up = stack.apply()
        assert up.ok, up.error
        authfile = clients.authfile("backup-space", stack.exports["dockerConfigJson"])
        clients.push(clients.make_image("backup-space"), "backup-space/app:1", authfile)
        # Leave 1 MiB free: under the 10 % margin (1.6 MiB) whatever the archive's size.
        testhost.exec(f"fallocate -l $(( $(df -Pk {SMALL} | awk 'NR == 2 {{print $4}}') - 1024 ))k {SMALL}/filler")
        refused = testhost.ssh("sudo -n registry-maintenance backup", check=False, timeout=120)
        assert refused.returncode == 1
        assert "backup refused: the archive needs about" in refused.stderr
        assert "10% (1 MiB) must stay free (backupMinFreePercent)" in refused.stderr, refused.stderr
        # The registry never went read-only: no flag for Caddy, no read-only container, and a push goes through.
        env = testhost.exec("docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' registry").stdout
        assert "REGISTRY_STORAGE_MAINTENANCE_READONLY" not in env
        assert testhost.exec("test -e /run/registry/read-only", check=False).returncode == 1
        clients.push(clients.make_image("backup-space-2"), "backup-space/app:2", authfile)
        assert testhost.exec(f"ls {SMALL}").stdout.split() == ["filler"]  # nothing half-written

        status = testhost.ssh("sudo -n registry-maintenance status", check=False, timeout=60)
        assert status.returncode == 1
        assert "last backup: FAILED at " in status.stdout and "backup refused" in status.stdout
        assert "status: the last run of backup failed" in status.stderr

        testhost.exec(f"rm {SMALL}/filler")
        clients.maintenance("backup", timeout=120)
        after = testhost.ssh("sudo -n registry-maintenance status", check=False, timeout=60)
        assert after.returncode == 0, after.stdout + after.stderr
        assert "last backup: ok at " in after.stdout and "last successful backup: " in after.stdout
    finally:
        stack.cleanup()
        testhost.exec(f"umount {SMALL}; rmdir {SMALL}; rm -rf /var/lib/registry-maintenance", check=False)


def test_off_server_backup_restores_on_a_fresh_host_with_the_same_digests(
    testhost: TestHost, engine: Engine, tmp_path: Path
) -> None:
    """The server is lost (its stack destroyed, data directory, local archives and maintenance records deleted); a
    fresh host with a new stack restores the off-server copy from the bucket with every digest intact. The bucket
    (SeaweedFS) runs on the first host, so the fresh one reaches it over a Docker network between the two: a
    forwarder on each side keeps the endpoint http://127.0.0.1:8333 on both, the first host's S3 bound to loopback."""
    from tests.e2e.cluster import link
    from tests.e2e.forward import run_on
    from tests.e2e.test_storage import S3_ACCESS_KEY, S3_BUCKET, S3_ENDPOINT, S3_SECRET_KEY, start_s3
    from tests.e2e.testhost import docker, ensure_extras

    ensure_extras(testhost, s3=True)
    start_s3(testhost)
    clients = Clients(testhost)
    clients.trust_pebble()
    # Start from an empty data directory (earlier tests of the session leave theirs: destroy keeps the data).
    testhost.exec("docker rm -f registry >/dev/null 2>&1; rm -rf /srv/data/registry")
    prefix = f"offsite-{os.getpid()}"
    settings = {
        "flux": "false", "backupSchedule": "", "gcSchedule": "", "backupS3Bucket": S3_BUCKET,
        "backupS3Prefix": prefix, "s3Endpoint": S3_ENDPOINT, "s3AccessKey": S3_ACCESS_KEY,
        "s3SecretKey": S3_SECRET_KEY, "backupKeep": "1",
    }  # fmt: skip
    first = EngineStack.open(engine, "offsite", testhost, tmp_path / "one", stack_config(testhost, **settings))
    fresh_name = f"{testhost.name}-fresh"
    docker("rm", "-f", "-v", fresh_name, check=False)
    net = link(testhost)
    fresh = start_host(fresh_name, testhost.domain)
    second: EngineStack | None = None
    try:
        assert first.apply().ok, first.history[-1].error
        assert S3_SECRET_KEY not in "\n".join(first.history[-1].printed)
        authfile = clients.authfile("offsite", first.exports["dockerConfigJson"])
        refs = {"offsite/app:1": "", "offsite/tool:7": ""}
        for ref in refs:
            clients.push(clients.make_image(ref.replace("/", "-").replace(":", "-")), ref, authfile)
            refs[ref] = clients.digest(ref, authfile)
        out = clients.maintenance("backup", timeout=300)
        [name] = re.findall(r"off-server copy written: (registry-\d{8}T\d{6}Z\.tar) in s3://", out)
        # backupKeep = 1 holds off the server too: a second backup replaces the first copy there.
        time.sleep(1.1)
        again = clients.maintenance("backup", timeout=300)
        [newest] = re.findall(r"off-server copy written: (registry-\d{8}T\d{6}Z\.tar)", again)
        assert f"removed old off-server copy {name}" in again and newest != name
        assert "off-server copies: s3://" in clients.maintenance("status", timeout=60)

        assert first.destroy().ok, first.history[-1].error
        testhost.exec("docker rm -f registry >/dev/null 2>&1; rm -rf /srv/data/registry /srv/backups/registry "
                      "/var/lib/registry-maintenance")  # fmt: skip
        docker("network", "connect", "--ip", net.other_address, net.network, fresh.name)
        run_on(testhost, "regtest-s3-forward", (net.server_address, 8333), ("127.0.0.1", 8333))
        run_on(fresh, "regtest-s3-forward", ("127.0.0.1", 8333), (net.server_address, 8333))
        on_fresh = Clients(fresh)
        on_fresh.trust_pebble()
        assert fresh.exec("ls -A /srv/data/registry 2>/dev/null || true").stdout.strip() == ""  # nothing of its own
        second = EngineStack.open(engine, "offsite-new", fresh, tmp_path / "two", stack_config(fresh, **settings))
        assert second.apply().ok, second.history[-1].error
        new_auth = on_fresh.authfile("offsite-new", second.exports["dockerConfigJson"])
        assert on_fresh.list_tags("offsite/app", new_auth, check=False).returncode != 0  # an empty registry
        restored = on_fresh.maintenance(f"restore s3:{newest}", timeout=300)
        assert f"downloading {newest} from s3://" in restored
        # The two pushed, and the deploy check's probe.
        assert "restored 3 repositories with 3 tags" in restored, restored
        on_fresh.wait_registry()
        assert {ref: on_fresh.digest(ref, new_auth) for ref in refs} == refs
    finally:
        first.cleanup()
        if second is not None:
            second.cleanup()
        fresh.remove()
        net.remove(testhost)
        testhost.exec("systemctl stop regtest-s3-forward 2>/dev/null || true")


def test_flux_with_the_ambient_context_fails_naming_it_before_any_connection(
    testhost: TestHost, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\ncurrent-context: someone-elses-cluster\n")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))  # what kubectl on the machine running `pulumi up` would use
    stack = eng_mod.Stack(engine, "ambient-flux", eng_mod.make_project(tmp_path / "project"), stack_config(testhost, flux="true"))
    clients = Clients(testhost)
    since = clients.now()
    run = stack.up()
    assert not run.ok
    assert "registry:kubeconfig is not set while flux = true, and neither is kubeContext" in run.error
    assert "the ambient kubeconfig's current context 'someone-elses-cluster' would be used" in run.error
    assert "`pulumi config set kubeContext someone-elses-cluster --stack ambient-flux`" in run.error
    assert "Accepted" not in clients.journal("ssh", since)
    assert [r for r in stack.resources() if not r.startswith("registry-")] == []
