"""Operations on the real test host: the deploy check, GC while pushes run, reclaiming a deleted image, backup and restore.

The real Pulumi engine applies the program (one stack for the module, on the session's engine); the tests run in file
order and the last one destroys it. Flux is off: its part runs on the host's Kubernetes API in test_flux.py.
"""

from __future__ import annotations

import json
import re
import shlex
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from renderers.caddyfile import MAINTENANCE_FLAG
from renderers.maintenance_script import LOCK_FILE, MAINTENANCE_SCRIPT
from renderers.probe_image import MANIFEST_TYPE
from renderers.verify_script import curl_user_line
from tests.e2e.clients import CERT_DIR, stack_config
from tests.e2e.engine import Engine
from tests.e2e.stacks import EngineStack
from tests.e2e.testhost import TestHost

pytestmark = pytest.mark.e2e

STACK = "ops"
# Far enough away that no timer fires while the tests run; the tests start the services themselves.
NEVER = "2099-01-01 00:00:00"
KEEP = 2
DATA = "/srv/data/registry"
BACKUPS = "/srv/backups/registry"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
q = shlex.quote


@dataclass
class Ops(EngineStack):
    """The module's stack, with the operator's helpers."""

    recorded: dict[str, dict[str, Any]] = field(default_factory=dict)
    """State entries (secrets in clear) after the fresh `up`."""

    def secret_values(self) -> list[str]:
        return list(self.secrets().values())

    def sh(self, cmd: str, check: bool = True, stdin: str | None = None) -> str:
        return self.clients.sh(cmd, stdin=stdin, check=check).stdout

    def maintenance(self, args: str) -> str:
        return self.clients.maintenance(args, timeout=300)

    def push_authfile(self) -> str:
        return self.clients.authfile("ops-push", self.exports["dockerConfigJson"])

    def api(self, method: str, path: str) -> str:
        """HTTP status of a request with the push credential (on stdin) through the public name."""
        config = curl_user_line(self.exports["pushUsername"], self.exports["pushPassword"]) + "\n"
        how = "-I" if method == "HEAD" else f"-X {method}"  # curl -X HEAD would wait for a body
        return self.sh(
            f"curl -sS -K - {how} -o /dev/null -w '%{{http_code}}' --cacert {CERT_DIR}/ca.crt "
            f"https://{q(self.clients.domain)}{q(path)}",
            stdin=config,
        ).strip()

    def api_json(self, path: str) -> Any:
        config = curl_user_line(self.exports["pushUsername"], self.exports["pushPassword"]) + "\n"
        accept = " ".join(f"-H {q('Accept: ' + t)}" for t in (MANIFEST_TYPE, OCI_MANIFEST))
        return json.loads(
            self.sh(
                f"curl -fsS -K - {accept} --cacert {CERT_DIR}/ca.crt https://{q(self.clients.domain)}{q(path)}",
                stdin=config,
            )
        )

    def read_only(self) -> bool:
        env = self.sh("docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' registry")
        return "REGISTRY_STORAGE_MAINTENANCE_READONLY=" in env

    def fetch_all(self, refs: list[str], authfile: str) -> list[str]:
        """Copy every ref (manifest and every blob) out of the registry; returns the refs that failed."""
        loop = " ".join(q(f"{self.clients.domain}/{ref}") for ref in refs)
        out = self.sh(
            f"for r in {loop}; do d=$(mktemp -d); "
            f'skopeo copy --quiet --src-cert-dir {CERT_DIR} --src-authfile {q(authfile)} "docker://$r" "dir:$d" '
            '>/dev/null 2>&1 || echo "FAILED $r"; rm -rf "$d"; done'
        )
        return [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("FAILED ")]


def host_config(host: TestHost) -> dict[str, Any]:
    return stack_config(host, flux="false", gcSchedule=NEVER, backupSchedule=NEVER, backupKeep=str(KEEP))


@pytest.fixture(scope="module")
def ops(testhost: TestHost, engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ops]:
    o: Ops = Ops.open(engine, STACK, testhost, tmp_path_factory.mktemp("ops-project"), host_config(testhost))
    o.clients.trust_pebble()
    try:
        t0 = time.monotonic()
        result = o.apply()
        print(f"\nops: fresh up {time.monotonic() - t0:.1f}s")
        assert result.ok, f"fresh up failed:\n{result.error}"
        o.recorded = o.stack.resources(show_secrets=True)
        yield o
    finally:
        # Leave the shared host as the next module expects a fresh one: nothing of this stack, no data.
        o.cleanup()
        testhost.exec(
            f"docker rm -f registry >/dev/null 2>&1; rm -rf {DATA}/docker {DATA}/.before-restore-* {DATA}/.restore-* "
            f"{BACKUPS} {MAINTENANCE_FLAG} /root/e2e/ops-*",
            check=False,
        )


# --- the deploy check ----------------------------------------------------------------------------------------


def test_fresh_apply_checked_the_live_site_and_the_k3s_pull(ops: Ops) -> None:
    fresh = ops.history[0]
    [check] = fresh.ran("verify-check")
    assert check.ok, fresh.error
    # The check's output is secret (its stdin holds the credentials): the state holds it, the events do not.
    outputs = ops.recorded["verify-check"]["outputs"]
    report = outputs["stdout"]
    for line in (
        "verify: ok: anonymous GET /v2/ is challenged: HTTP 401",
        "verify: ok: push credential GET /v2/: HTTP 200",
        "verify: ok: pull credential GET /v2/: HTTP 200",
        "verify: ok: pull credential is refused a write (POST blob upload): HTTP 403",
        "verify: ok: push credential pushes ops/verify-probe:v1: HTTP 201",
        "verify: ok: pull credential reads ops/verify-probe:v1: HTTP 200",
    ):
        assert line in report, report
    assert f"verify: ok: k3s pulled {ops.clients.domain}/ops/verify-probe:v1" in report
    assert "verify: all checks passed" in report
    # It ran after the site was installed and after k3s restarted with the trust file.
    ends = {e.name: e.ended for e in fresh.executions}
    assert check.started >= max(ends["caddy-site-file"], ends["k3s-trust-restart"])
    assert ops.recorded["verify-check"]["inputs"]["logging"] == "none"
    assert check.stdout in (None, "[secret]")  # the engine's events carry it as a secret
    combined = outputs["stdout"] + outputs.get("stderr", "")
    assert not any(s in combined for s in ops.secret_values())
    assert not any(s in fresh.text for s in ops.secret_values())


def test_reapply_without_changes_runs_no_command(ops: Ops) -> None:
    result = ops.apply()
    assert result.ok, result.error
    assert result.executions == []


def test_maintenance_units_are_installed_and_enabled(ops: Ops) -> None:
    enabled = ops.sh(
        "systemctl is-enabled registry-gc.timer registry-backup.timer registry-maintenance-recover.service"
    ).split()
    assert enabled == ["enabled"] * 3
    assert ops.sh("systemctl is-active registry-gc.timer registry-backup.timer").split() == ["active"] * 2
    assert "2099-01-01" in ops.sh("systemctl show -p TimersCalendar registry-gc.timer")
    assert ops.sh(f"stat -c '%a %U' {MAINTENANCE_SCRIPT} {BACKUPS}").split() == [
        "755",
        "root",
        "700",
        "root",
    ]
    status = ops.maintenance("status")
    assert "mode: read-write" in status and "registry-gc.timer" in status


def test_a_failed_check_fails_the_update_with_a_readable_message_and_no_secret(ops: Ops) -> None:
    # An allowlist without the server's own address: the site refuses the check's requests.
    result = ops.apply(allowlist=["192.0.2.0/24"])
    assert not result.ok
    [check] = [e for e in result.ran("verify-check") if e.phase == "create"]
    assert not check.ok
    assert re.search(r"verify: FAILED: .*: got HTTP 403, expected (401|200); response: forbidden", result.error)
    assert "its own public address must be in the allowlist" in result.error
    assert "check(s) failed for https://" in result.error
    assert not any(s in result.error for s in ops.secret_values())
    assert not any(s in result.text for s in ops.secret_values())
    fixed = ops.apply(allowlist=[])
    assert fixed.ok, fixed.error
    # The failed replacement left the last verified check in state; back at that configuration, nothing to re-check.
    # (The handover step's part in a site change that is not a rotation is its no-op update; the site file step has
    # no update command, so the engine's update of it runs its create command.)
    assert {(e.name, e.phase) for e in fixed.executions} == {
        ("caddy-site-handover", "update"),
        ("caddy-site-file", "update"),
    }
    assert ops.api("GET", "/v2/") == "200"


# --- garbage collection -------------------------------------------------------------------------------------


@dataclass
class Attempt:
    tag: str
    started: float
    ended: float
    ok: bool
    error: str


def test_gc_while_pushes_run_loses_nothing_that_was_pushed(ops: Ops) -> None:
    c = ops.clients
    auth = ops.push_authfile()
    c.push(c.make_image("ops-reader"), "ops/reader:1", auth)
    reader = c.digest("ops/reader:1", auth)
    pushes: list[Attempt] = []
    pulls: list[tuple[float, bool]] = []
    stop = threading.Event()

    def push_loop() -> None:
        for i in range(20):
            local = c.make_image(f"ops-loop-{i}")
            t0 = time.time()
            res = c.push(local, f"ops/loop:{i}", auth, check=False)
            pushes.append(Attempt(str(i), t0, time.time(), res.returncode == 0, res.stderr.strip()))

    def pull_loop() -> None:
        while not stop.is_set():
            res = c.sh(
                f"skopeo inspect --raw --cert-dir {CERT_DIR} --authfile {q(auth)} "
                f"docker://{q(f'{c.domain}/ops/reader@{reader}')}",
                check=False,
            )
            pulls.append((time.time(), res.returncode == 0))
            time.sleep(0.2)

    pusher, puller = threading.Thread(target=push_loop), threading.Thread(target=pull_loop)
    pusher.start()
    puller.start()
    try:
        while len(pushes) < 3 and pusher.is_alive():
            time.sleep(0.2)
        window_start = time.time()
        gc = ops.host.ssh("sudo -n systemctl start registry-gc.service", check=False, timeout=300)
        window_end = time.time()
        pusher.join(timeout=300)
    finally:
        stop.set()
        pusher.join(timeout=300)
        puller.join(timeout=60)
    assert gc.returncode == 0, gc.stderr
    journal = ops.sh("journalctl -u registry-gc.service -o cat --no-pager")
    assert journal.index("read-only window open for garbage collection") < journal.index("dry run (nothing is deleted)")
    assert journal.index("dry run (nothing is deleted)") < journal.index("registry-maintenance: collecting:")
    assert journal.index("registry-maintenance: collecting:") < journal.index("read-only window closed")
    assert "garbage collection done" in journal

    during = [p for p in pushes if p.ended > window_start and p.started < window_end]
    failed = [p for p in pushes if not p.ok]
    print(
        f"\nops: GC window {window_end - window_start:.1f}s; {len(pushes)} pushes, {len(during)} overlapping it, "
        f"{len(failed)} refused: " + "; ".join(f"{p.tag}: {p.error[-160:]}" for p in failed)
    )
    assert len(pushes) == 20 and during, "no push overlapped the maintenance window"
    for p in failed:  # the maintenance 503 is the only refusal (skopeo shows the status, the Docker CLI the message)
        assert "503 Service Unavailable" in p.error, p.error
    # The pushes refused during the window go through once it is closed.
    for p in failed:
        c.push(f"e2e/ops-loop-{p.tag}:1", f"ops/loop:{p.tag}", auth)
    assert not ops.read_only() and ops.sh(f"test -e {MAINTENANCE_FLAG} && echo flag || echo none").strip() == "none"
    assert ops.fetch_all([f"ops/loop:{i}" for i in range(20)] + [f"ops/reader@{reader}"], auth) == []
    assert pulls and all(ok for _, ok in pulls), [t for t, ok in pulls if not ok]
    assert any(window_start <= t <= window_end for t, _ in pulls)


def test_deleted_image_space_is_reclaimed_by_gc(ops: Ops) -> None:
    c = ops.clients
    auth = ops.push_authfile()
    c.sh(
        'd=$(mktemp -d) && head -c 8388608 /dev/urandom > "$d/blob" && '
        'tar -C "$d" -c . | docker import - e2e/ops-big:1 >/dev/null && rm -rf "$d"'
    )
    c.push("e2e/ops-big:1", "ops/big:1", auth)
    digest = c.digest("ops/big:1", auth)
    layers = [layer["digest"] for layer in ops.api_json(f"/v2/ops/big/manifests/{digest}")["layers"]]
    before = int(ops.sh(f"du -sk {DATA}/docker | cut -f1"))
    assert ops.api("DELETE", f"/v2/ops/big/manifests/{digest}") == "202"
    assert ops.api("GET", f"/v2/ops/big/manifests/{digest}") == "404"
    out = ops.maintenance("gc")
    after = int(ops.sh(f"du -sk {DATA}/docker | cut -f1"))
    print(f"\nops: data {before} KiB -> {after} KiB after deleting an 8 MiB image and collecting")
    assert before - after >= 7 * 1024, out
    assert f"blob eligible for deletion: {layers[0]}" in out
    assert ops.api("HEAD", f"/v2/ops/big/blobs/{layers[0]}") == "404"
    assert ops.fetch_all(["ops/reader:1", "ops/loop:0"], auth) == []


# --- backup and restore --------------------------------------------------------------------------------------


def _all_digests(ops: Ops, auth: str) -> dict[str, str]:
    refs = {}
    for repo in ops.api_json("/v2/_catalog")["repositories"]:
        for tag in ops.api_json(f"/v2/{repo}/tags/list").get("tags") or []:
            refs[f"{repo}:{tag}"] = ops.clients.digest(f"{repo}:{tag}", auth)
    return refs


def test_backup_wipe_restore_brings_every_digest_back(ops: Ops) -> None:
    c = ops.clients
    auth = ops.push_authfile()
    digests = _all_digests(ops, auth)
    assert len(digests) >= 22  # the probe, the reader, twenty from the push loop

    out = ops.maintenance("backup")
    archive = re.search(r"backup written: (\S+\.tar)", out)
    assert archive, out
    path = archive.group(1)
    assert ops.sh(f"stat -c '%a %U' {q(path)} {q(path + '.sha256')}").split() == ["600", "root", "600", "root"]
    assert ops.sh(f"cd {BACKUPS} && sha256sum -c {q(path.rsplit('/', 1)[1] + '.sha256')}").strip().endswith("OK")
    assert ops.sh(f"ls -A {BACKUPS} | grep -c partial || true").strip() == "0"

    # Wipe: the data moves out of the registry's reach; then something new lands in the empty registry.
    ops.sh(f"mv {DATA}/docker /root/e2e/ops-wiped")
    assert ops.api("GET", "/v2/ops/reader/manifests/1") == "404"
    c.push(c.make_image("ops-after-wipe"), "ops/after-wipe:1", auth)

    restored = ops.maintenance(f"restore {q(path)}")
    assert re.search(r"restored \d+ repositories with \d+ tags from " + re.escape(path), restored), restored
    aside = re.search(r"kept in (\S+): delete it once", restored)
    assert aside, restored
    assert (
        ops.sh(f"test -d {q(aside.group(1))}/docker/registry/v2/repositories/ops/after-wipe && echo kept").strip()
        == "kept"
    )

    assert _all_digests(ops, auth) == digests
    assert ops.fetch_all(sorted(digests), auth) == []
    assert "Image is up to date" in c.k3s_pull(f"ops/reader@{digests['ops/reader:1']}").stdout
    assert not ops.read_only()


def test_backups_keep_only_the_newest(ops: Ops) -> None:
    for _ in range(KEEP + 1):
        time.sleep(1.1)  # archive names have one-second resolution
        ops.maintenance("backup")
    archives = ops.sh(f"ls {BACKUPS}").split()
    tars = sorted(a for a in archives if a.endswith(".tar"))
    assert len(tars) == KEEP
    assert sorted(archives) == sorted([*tars, *(f"{t}.sha256" for t in tars)])


# --- a window cut short --------------------------------------------------------------------------------------


def test_a_window_cut_short_is_recovered_by_the_boot_unit(ops: Ops) -> None:
    auth = ops.push_authfile()
    # Kill the maintenance run (no exit trap runs on SIGKILL) once the registry is read-only: a reboot mid-window.
    ops.sh(
        f"{MAINTENANCE_SCRIPT} backup >/root/e2e/ops-cut.log 2>&1 & pid=$!; "
        "until docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' registry 2>/dev/null "
        "| grep -q READONLY; do sleep 0.05; done; kill -9 $pid"
    )
    assert ops.read_only()
    refused = ops.clients.push(ops.clients.make_image("ops-cut"), "ops/cut:1", auth, check=False)
    assert refused.returncode != 0 and "503 Service Unavailable" in refused.stderr, refused.stderr
    # Children of the killed run may still hold its lock for a moment.
    ops.sh(f"for i in $(seq 100); do flock -n {LOCK_FILE} true && break; sleep 0.2; done")
    ops.sh("systemctl start registry-maintenance-recover.service")
    assert "recovered" in ops.sh("journalctl -u registry-maintenance-recover.service -o cat --no-pager")
    assert not ops.read_only()
    assert ops.sh(f"test -e {MAINTENANCE_FLAG} && echo flag || echo none").strip() == "none"
    ops.clients.push("e2e/ops-cut:1", "ops/cut:1", auth)
    ops.sh(f"rm -f {BACKUPS}/.registry-*.partial")


# --- destroy ------------------------------------------------------------------------------------------------------


def test_destroy_removes_the_units_and_keeps_data_and_backups(ops: Ops) -> None:
    backups = ops.sh(f"ls {BACKUPS}").split()
    result = ops.destroy()
    assert result.ok, result.error
    assert ops.stack.resources() == {}
    assert [e.ok for e in result.ran("maintenance-install")] == [True]
    left = ops.sh(
        f"ls {MAINTENANCE_SCRIPT} /etc/systemd/system/registry-gc.timer "
        "/etc/systemd/system/registry-backup.service 2>/dev/null || true"
    )
    assert left.strip() == ""
    assert ops.sh("systemctl list-timers 'registry-*' --all --no-legend").strip() == ""
    assert ops.sh(f"ls {BACKUPS}").split() == backups
    assert ops.sh(f"test -d {DATA}/docker/registry/v2/repositories/ops/reader && echo kept").strip() == "kept"
