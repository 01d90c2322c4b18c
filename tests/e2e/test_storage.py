"""The core scenarios on Distribution 2.8 and 3, on the data directory and on a real S3-compatible server.

The real Pulumi engine applies the program (`pulumi up` through the Automation API) to the test host over SSH. Each
variant is one stack of its own (its own state), used in file order, then destroyed: a fresh `up` that checked
the live site; CI pushes, k3s pulls, Flux lists, the pull user cannot push; an OCI 1.1 artifact (subject,
artifactType) pushed and found through the referrers tag schema; GC in a read-only window in which the registry
itself refuses writes and that reclaims a deleted image's space (in the data directory, or in the bucket); backups
(an archive, or with S3 nothing: the store's job); destroy keeps the data.

The S3 server is SeaweedFS (`weed mini`, built from its Go module) on the host's 127.0.0.1:8333; the registry
containers reach it on loopback (host networking). Neither it nor the registry:3 stand-in is in the host image:
each variant's fixture installs what it uses (testhost.ensure_extras). Flux is off: its part
runs on the host's Kubernetes API in test_flux.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from renderers.caddyfile import UPSTREAM_DIR, UPSTREAM_SLOTS
from renderers.dockerconfigjson import dockerconfigjson
from renderers.verify_script import curl_user_line
from tests.e2e.clients import CERT_DIR, ProcessSampler, stack_config
from tests.e2e.engine import Engine
from tests.e2e.stacks import EngineStack
from tests.e2e.testhost import TestHost, ensure_extras

pytestmark = pytest.mark.e2e

q = shlex.quote
NEVER = "2099-01-01 00:00:00"
DATA = "/srv/data/registry"
BACKUPS = "/srv/backups/registry"
ENV_FILE = "/etc/registry/registry.env"
PORT = 5000
S3_ENDPOINT = "http://127.0.0.1:8333"
S3_BUCKET = "registry-e2e"
# The test server's credential (tests/e2e/image/extras/s3/rootfs/etc/regtest-s3/s3.json, root-only on the host).
S3_ACCESS_KEY = "regtest-registry"
S3_SECRET_KEY = "regtest-s3-secret-not-for-production"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"


@dataclass(frozen=True)
class Variant:
    image: str
    storage: str
    replicas: int = 1

    @property
    def id(self) -> str:
        return f"{self.image.split(':')[1]}-{self.storage}-x{self.replicas}"

    @property
    def prefix(self) -> str:
        """This variant's directory in the bucket (s3RootDirectory): variants never see each other's data."""
        return f"/e2e-{self.id}"


# registry:2 on the data directory is what test_scenarios and test_operations cover in full.
VARIANTS = [
    Variant("registry:3", "filesystem"),
    Variant("registry:2", "s3", replicas=2),
    Variant("registry:3", "s3", replicas=2),
]


@dataclass
class Stack(EngineStack):
    """One variant's stack, with the host's process table sampled during its fresh `up`."""

    variant: Variant = Variant("registry:2", "filesystem")
    samples: list[str] = field(default_factory=list)

    def recorded(self, name: str) -> dict[str, Any]:
        """A resource's outputs in the state, secrets in clear."""
        outputs: dict[str, Any] = self.stack.resources(show_secrets=True)[name].get("outputs") or {}
        return outputs

    @property
    def ports(self) -> list[int]:
        return [PORT + i for i in range(self.variant.replicas)]

    @property
    def containers(self) -> list[str]:
        return ["registry", *(f"registry-{i}" for i in range(2, self.variant.replicas + 1))]

    def sh(self, cmd: str, check: bool = True, stdin: str | None = None) -> str:
        return self.clients.sh(cmd, stdin=stdin, check=check).stdout

    def maintenance(self, args: str) -> str:
        return self.clients.maintenance(args, timeout=600)

    def push_authfile(self) -> str:
        return self.clients.authfile(f"storage-push-{self.variant.id}", self.exports["dockerConfigJson"])

    def pull_authfile(self) -> str:
        config = dockerconfigjson(self.clients.domain, self.exports["pullUsername"], self.exports["pullPassword"])
        return self.clients.authfile(f"storage-pull-{self.variant.id}", config)

    def api(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
            accept: str | None = None) -> tuple[str, str]:  # fmt: skip
        """(HTTP status, body) of a request with the push credential (on stdin) through the public name."""
        config = curl_user_line(self.exports["pushUsername"], self.exports["pushPassword"]) + "\n"
        how = "-I" if method == "HEAD" else f"-X {method}"
        extra = ""
        if content_type:
            extra += f" -H {q('Content-Type: ' + content_type)}"
        if accept:
            extra += f" -H {q('Accept: ' + accept)}"
        upload = ""
        if body is not None:
            self.clients.sh("cat > /tmp/e2e-storage-body", stdin=body.decode())
            upload = " --data-binary @/tmp/e2e-storage-body"
        out = self.sh(
            f"curl -sS -K - {how}{extra}{upload} -o /tmp/e2e-storage-out -w '%{{http_code}}' --cacert {CERT_DIR}/ca.crt "
            f"https://{q(self.clients.domain)}{q(path)}; echo; cat /tmp/e2e-storage-out 2>/dev/null; rm -f /tmp/e2e-storage-out",
            stdin=config,
        )
        status, _, text = out.partition("\n")
        return status.strip(), text

    def upload_blob(self, repo: str, data: bytes) -> str:
        """POST an upload, PUT the blob with its digest (push credential, through the site); the PUT's status."""
        config = curl_user_line(self.exports["pushUsername"], self.exports["pushPassword"]) + "\n"
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.clients.sh("cat > /tmp/e2e-storage-blob", stdin=data.decode())
        base = f"https://{self.clients.domain}"
        return self.sh(
            f"umask 077; printf '%s\\n' \"$(cat)\" > /tmp/e2e-storage-auth; "
            f"loc=$(curl -sS -K /tmp/e2e-storage-auth -X POST -o /dev/null -D - --cacert {CERT_DIR}/ca.crt "
            f"{q(base + '/v2/' + repo + '/blobs/uploads/')} | sed -n 's/^[Ll]ocation: *//p' | tr -d '\\r'); "
            f'case "$loc" in /*) loc={q(base)}"$loc" ;; esac; case "$loc" in *\\?*) sep="&" ;; *) sep="?" ;; esac; '
            f"curl -sS -K /tmp/e2e-storage-auth -X PUT -o /dev/null -w '%{{http_code}}' --cacert {CERT_DIR}/ca.crt "
            f"-H 'Content-Type: application/octet-stream' --data-binary @/tmp/e2e-storage-blob \"$loc${{sep}}digest={digest}\"; "
            "rm -f /tmp/e2e-storage-auth /tmp/e2e-storage-blob",
            stdin=config,
        ).strip()

    def stored_bytes(self) -> int:
        """What the registry's data takes: the data directory's files, or the objects under the bucket prefix."""
        if self.variant.storage == "filesystem":
            # Upload sessions (the probe loop starts hundreds) are not the registry's data: leave them out.
            return int(self.sh(f"du -sb --exclude=_uploads {DATA}/docker 2>/dev/null | cut -f1 || echo 0").strip() or 0)
        return bucket_bytes(self.host, self.variant.prefix)


def bucket_bytes(host: TestHost, prefix: str) -> int:
    """Logical size of everything under the prefix in the test bucket, as SeaweedFS's filer counts it."""
    out = host.exec(
        f"printf 'fs.du /buckets/{S3_BUCKET}{prefix}\\n' | weed shell -master=127.0.0.1:9333 -filer=127.0.0.1:8888 2>&1",
        timeout=120,
    ).stdout
    sizes = re.findall(r"logical size:\s*(\d+)", out)
    if not sizes:
        if "not found" in out.lower() or "no such" in out.lower():
            return 0
        raise AssertionError(f"fs.du gave no size:\n{out}")
    return int(sizes[-1])


def start_s3(host: TestHost) -> None:
    """Start SeaweedFS on the host (if it is not running) and wait until the bucket answers on S3."""
    host.exec("systemctl start regtest-s3.service")
    deadline = time.monotonic() + 120
    while True:
        # Anonymous: 403 (the bucket exists, access denied) once the S3 gateway and its bucket are up.
        res = host.exec(f"curl -s -o /dev/null -w '%{{http_code}}' {S3_ENDPOINT}/{S3_BUCKET}/", check=False)
        if res.stdout.strip() in ("403", "200"):
            return
        if time.monotonic() > deadline:
            logs = host.exec("journalctl -u regtest-s3 -o cat --no-pager | tail -n 30", check=False).stdout
            raise AssertionError(f"the S3 server did not come up: {res.stdout} {res.stderr}\n{logs}")
        time.sleep(1)


def variant_config(host: TestHost, variant: Variant) -> dict[str, Any]:
    config = stack_config(
        host, flux="false", gcSchedule=NEVER, backupSchedule=NEVER, registryImage=variant.image,
        registryReplicas=str(variant.replicas),
    )  # fmt: skip
    if variant.storage == "s3":
        config.update(
            storage="s3", s3Endpoint=S3_ENDPOINT, s3Bucket=S3_BUCKET, s3RootDirectory=variant.prefix,
            s3AccessKey=S3_ACCESS_KEY, s3SecretKey=S3_SECRET_KEY,
        )  # fmt: skip
    return config


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: v.id)
def stack(
    request: pytest.FixtureRequest, testhost: TestHost, engine: Engine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    variant: Variant = request.param
    ensure_extras(testhost, registry3=variant.image == "registry:3", s3=variant.storage == "s3")
    if variant.storage == "s3":
        start_s3(testhost)
    s: Stack = Stack.open(
        engine, f"storage-{variant.id}", testhost, tmp_path_factory.mktemp(f"storage-{variant.id}"),
        variant_config(testhost, variant), variant=variant,
    )  # fmt: skip
    s.clients.trust_pebble()
    try:
        t0 = time.monotonic()
        with ProcessSampler(testhost) as sampler:
            result = s.apply()
        s.samples.extend(sampler.samples)
        print(f"\nstorage {variant.id}: fresh up {time.monotonic() - t0:.1f}s")
        assert result.ok, f"fresh up failed:\n{result.error}"
        yield s
    finally:
        s.cleanup()
        names = " ".join(s.containers)
        testhost.exec(
            f"docker rm -f {names} >/dev/null 2>&1; rm -rf {DATA}/docker {BACKUPS} /run/registry/read-only /root/e2e/storage-*",
            check=False,
        )


# --- the stack runs the image and the storage it was given ------------------------------------------------------


def test_fresh_apply_runs_the_image_on_the_storage_and_checked_the_site(stack: Stack) -> None:
    fresh = stack.history[0]
    [check] = fresh.ran("verify-check")
    assert check.ok and check.phase == "create"
    report = stack.recorded("verify-check")["stdout"]  # secret (the check reads the passwords on stdin)
    assert "verify: all checks passed" in report, report
    for name, port in zip(stack.containers, stack.ports, strict=True):
        info = stack.clients.inspect_container(name)
        assert info["State"]["Running"] and info["Config"]["Image"] == stack.variant.image
        assert info["HostConfig"]["NetworkMode"] == "host" and not info["HostConfig"]["PortBindings"]
        env = info["Config"]["Env"]
        assert f"REGISTRY_HTTP_ADDR=127.0.0.1:{port}" in env
        if stack.variant.storage == "s3":
            assert "REGISTRY_STORAGE=s3" in env and f"REGISTRY_STORAGE_S3_BUCKET={S3_BUCKET}" in env
            assert not any(e.startswith("REGISTRY_STORAGE_FILESYSTEM_") for e in env)
        else:
            assert "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=/var/lib/registry" in env
        listeners = stack.sh(f"ss -Hltn 'sport = :{port}' | awk '{{print $4}}'").split()
        assert listeners and set(listeners) == {f"127.0.0.1:{port}"}, listeners
    version = stack.sh("docker exec registry /bin/registry --version")
    major = stack.variant.image.split(":")[1]
    assert (" v3." in version) if major == "3" else (" 2.8" in version), version
    # The probe image the check pushed is in the storage the stack uses.
    assert stack.stored_bytes() > 0


def test_s3_credential_reaches_the_container_only_through_the_root_only_env_file(stack: Stack) -> None:
    if stack.variant.storage != "s3":
        pytest.skip("filesystem storage has no S3 credential")
    assert stack.sh(f"stat -c '%a %U:%G' {ENV_FILE}").split() == ["600", "root:root"]
    assert f"REGISTRY_STORAGE_S3_SECRETKEY={S3_SECRET_KEY}" in stack.sh(f"cat {ENV_FILE}").splitlines()
    assert len(stack.samples) > 20 and any("sudo -n sh -c" in s for s in stack.samples), "the sampler saw no apply"
    assert not [s for s in stack.samples if S3_SECRET_KEY in s or S3_ACCESS_KEY in s], "S3 credential in argv"
    # Everything the CLI printed in every run (command output included), and the state as `pulumi stack export`
    # shows it.
    printed = [run.text for run in stack.history] + [json.dumps(stack.stack.export())]
    assert not [t for t in printed if S3_SECRET_KEY in t], "S3 secret key in the CLI's output or the exported state"


def test_ci_pushes_k3s_pulls_lists_and_the_pull_user_cannot_push(stack: Stack) -> None:
    c = stack.clients
    push = stack.push_authfile()
    before = stack.stored_bytes()
    c.push(c.make_image(f"st-{stack.variant.id}"), "e2e/app:1", push)
    assert stack.stored_bytes() > before
    assert "Image is up to date for sha256:" in c.k3s_pull("e2e/app:1").stdout
    pull = stack.pull_authfile()
    assert json.loads(c.list_tags("e2e/app", pull).stdout)["Tags"] == ["1"]
    denied = c.push(c.make_image("st-denied"), "e2e/app:pull-user", pull, check=False)
    assert denied.returncode != 0 and ("403" in denied.stderr or "denied" in denied.stderr.lower()), denied.stderr


def test_oci_artifact_with_a_subject_is_stored_and_found_through_the_referrers_tag_schema(stack: Stack) -> None:
    subject_digest = stack.clients.digest("e2e/app:1", stack.push_authfile())
    status, subject = stack.api("GET", f"/v2/e2e/app/manifests/{subject_digest}", accept=f"{OCI_MANIFEST},application/vnd.docker.distribution.manifest.v2+json")
    assert status == "200"
    subject_type = json.loads(subject).get("mediaType", "application/vnd.docker.distribution.manifest.v2+json")
    empty = b"{}"
    empty_digest = "sha256:" + hashlib.sha256(empty).hexdigest()
    assert stack.upload_blob("e2e/app", empty) == "201"
    artifact = json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom.v1+json",
        "config": {"mediaType": OCI_EMPTY, "digest": empty_digest, "size": 2},
        "layers": [{"mediaType": OCI_EMPTY, "digest": empty_digest, "size": 2}],
        "subject": {"mediaType": subject_type, "digest": subject_digest, "size": len(subject.encode())},
        "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
    }, separators=(",", ":")).encode()  # fmt: skip
    artifact_digest = "sha256:" + hashlib.sha256(artifact).hexdigest()
    # The referrers tag schema (OCI distribution-spec 1.1): what clients use where the referrers API answers 404.
    fallback_tag = subject_digest.replace(":", "-")
    status, _ = stack.api("PUT", f"/v2/e2e/app/manifests/{fallback_tag}", artifact, OCI_MANIFEST)
    assert status == "201"
    status, stored = stack.api("GET", f"/v2/e2e/app/manifests/{artifact_digest}", accept=OCI_MANIFEST)
    assert status == "200" and json.loads(stored)["subject"]["digest"] == subject_digest
    assert json.loads(stored)["artifactType"] == "application/vnd.example.sbom.v1+json"
    # Neither 2.8 nor 3.x serves the referrers API: the registry's own 404 comes through Caddy, so clients fall back.
    status, _ = stack.api("GET", f"/v2/e2e/app/referrers/{subject_digest}")
    assert status == "404"
    status, found = stack.api("GET", f"/v2/e2e/app/manifests/{fallback_tag}", accept=OCI_MANIFEST)
    assert status == "200" and json.loads(found)["subject"]["digest"] == subject_digest


# --- replicas ---------------------------------------------------------------------------------------------------


PULL_LOOP = r"""
stop=/run/e2e-storage-pull.stop; rm -f "$stop"; i=0
while [ ! -e "$stop" ] && [ "$i" -lt 2000 ]; do
  d=$(mktemp -d)
  if skopeo copy --quiet --src-cert-dir CERTS --src-authfile AUTH "docker://REF" "dir:$d" >/dev/null 2>"$d.err"; then
    echo "ok $i $(date +%s.%N)"
  else
    echo "FAIL $i $(date +%s.%N) $(tr '\n' ' ' <"$d.err")"
  fi
  rm -rf "$d" "$d.err"; i=$((i + 1))
done
rm -f "$stop"
"""


@dataclass
class PullLoop:
    """Pulls (manifest and every blob) of one image through the site, one after another, until stopped."""

    stack: Stack
    ref: str
    proc: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)

    def __enter__(self) -> PullLoop:
        loop = (
            PULL_LOOP.replace("CERTS", CERT_DIR).replace("AUTH", self.stack.pull_authfile())
            .replace("REF", f"{self.stack.clients.domain}/{self.ref}")
        )  # fmt: skip
        self.proc = subprocess.Popen(["docker", "exec", self.stack.host.name, "sh", "-c", loop], stdout=subprocess.PIPE, text=True)
        time.sleep(2)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(2)
        self.stack.host.exec("touch /run/e2e-storage-pull.stop")
        assert self.proc is not None
        out, _ = self.proc.communicate(timeout=120)
        self.lines = out.splitlines()

    @property
    def failed(self) -> list[str]:
        return [line for line in self.lines if line.startswith("FAIL")]

    def during(self, start: float, end: float) -> list[str]:
        return [line for line in self.lines if start <= float(line.split()[2]) <= end]


def _host_time(stack: Stack) -> float:
    return float(stack.sh("date +%s.%N"))


def _needs_replicas(stack: Stack) -> None:
    if stack.variant.replicas < 2:
        pytest.skip("one replica")


def _slots(stack: Stack) -> list[str]:
    """What Caddy's upstream slot files hold, slot 1 first."""
    return stack.sh(f"for i in $(seq 1 {UPSTREAM_SLOTS}); do cat {UPSTREAM_DIR}/$i; done").split()


def _caddy_reloads(stack: Stack, since: float) -> int:
    journal = stack.sh(f"journalctl -u caddy -o cat --no-pager --since @{int(since)}")
    return journal.count('"msg":"load complete"')


def test_caddy_balances_across_every_replica_through_the_upstream_slots(stack: Stack) -> None:
    _needs_replicas(stack)
    site = stack.sh("cat /etc/caddy/registry.caddy")
    assert not [p for p in stack.ports if f"127.0.0.1:{p}" in site]  # the site names the slots, never a replica
    for line in ("lb_policy round_robin", "lb_try_duration 30s", "fail_duration 2s"):
        assert line in site, site
    addresses = [f"127.0.0.1:{p}" for p in stack.ports]
    assert _slots(stack) == [addresses[i % len(addresses)] for i in range(UPSTREAM_SLOTS)]
    upstream_state = json.loads(stack.sh("curl -fsS http://localhost:2019/reverse_proxy/upstreams"))
    assert sorted(u["address"] for u in upstream_state) == sorted(
        f"{{http.vars.registry_upstream_{i}}}" for i in range(1, UPSTREAM_SLOTS + 1)
    )


def test_an_image_pushed_through_one_replica_pulls_through_another(stack: Stack) -> None:
    _needs_replicas(stack)
    c = stack.clients
    first, second = stack.ports[0], stack.ports[-1]
    c.make_image("st-replica")
    # Straight to the replicas on loopback (no auth there: Caddy does it), so each side is one known replica.
    c.sh(f"skopeo copy --quiet --dest-tls-verify=false docker-daemon:e2e/st-replica:1 docker://127.0.0.1:{first}/e2e/replica:1")
    pushed = c.sh(f"skopeo inspect --tls-verify=false --format '{{{{.Digest}}}}' docker://127.0.0.1:{first}/e2e/replica:1").stdout.strip()
    pulled = c.sh(
        f"d=$(mktemp -d) && skopeo copy --quiet --src-tls-verify=false docker://127.0.0.1:{second}/e2e/replica:1 dir:$d && "
        f"skopeo inspect --tls-verify=false --format '{{{{.Digest}}}}' docker://127.0.0.1:{second}/e2e/replica:1 && rm -rf $d"
    ).stdout.strip()
    assert pushed.startswith("sha256:") and pulled == pushed
    assert c.digest("e2e/replica:1", stack.push_authfile()) == pushed


def test_stopping_a_replica_during_a_pull_loop_fails_no_pull(stack: Stack) -> None:
    _needs_replicas(stack)
    victim = stack.containers[-1]
    with PullLoop(stack, "e2e/app:1") as loop:
        stopped_at = _host_time(stack)
        stack.sh(f"docker stop -t 25 {victim} >/dev/null")
        time.sleep(5)
        stack.sh(f"docker start {victim} >/dev/null")
        back_at = _host_time(stack)
        time.sleep(3)
        # And the first replica, the one every fresh connection may have gone to.
        stack.sh(f"docker stop -t 25 {stack.containers[0]} >/dev/null")
        time.sleep(5)
        stack.sh(f"docker start {stack.containers[0]} >/dev/null")
    print(f"\nstorage {stack.variant.id}: {len(loop.lines)} pulls, {len(loop.during(stopped_at, back_at))} while {victim} was down")
    assert loop.failed == []
    assert len(loop.during(stopped_at, back_at)) >= 3, loop.lines
    stack.clients.wait_registry(timeout=60)


def test_a_new_image_rolls_one_replica_at_a_time_and_no_pull_fails(stack: Stack) -> None:
    _needs_replicas(stack)
    rolled = f"{stack.variant.image}-e2e"
    stack.sh(f"docker tag {stack.variant.image} {rolled}")
    with PullLoop(stack, "e2e/app:1") as loop:
        result = stack.apply(registryImage=rolled)
    assert result.ok, result.error
    assert [e.phase for e in result.ran("registry-container")] == ["update"]
    starts = []
    for name in stack.containers:
        info = stack.clients.inspect_container(name)
        assert info["Config"]["Image"] == rolled and info["State"]["Running"]
        starts.append(info["State"]["StartedAt"])
    assert starts == sorted(starts) and len(set(starts)) == len(starts)  # one after the other
    print(f"\nstorage {stack.variant.id}: {len(loop.lines)} pulls across the rolling image change")
    assert loop.failed == [] and len(loop.lines) >= 5, loop.lines


def test_one_replica_scales_to_two_on_the_data_directory_and_back_with_no_failed_pull(stack: Stack) -> None:
    if stack.variant.replicas != 1 or stack.variant.storage != "filesystem":
        pytest.skip("the filesystem variant starts with one replica")
    since = _host_time(stack)
    with PullLoop(stack, "e2e/app:1") as loop:
        up = stack.apply(registryReplicas="2")
    assert up.ok, up.error
    # 1 -> 2 changes the container step's triggers: one replacement (its delete, then both replicas).
    assert [e.phase for e in up.ran("registry-container")] == ["delete", "create"]
    # Caddy follows through its upstream slots, never a reload (which drops requests on fresh connections).
    assert up.ran("caddy-site-handover") == [] and _caddy_reloads(stack, since) == 0
    assert _slots(stack) == ["127.0.0.1:5000", "127.0.0.1:5001"] * (UPSTREAM_SLOTS // 2)
    for name, port in (("registry", PORT), ("registry-2", PORT + 1)):
        info = stack.clients.inspect_container(name)
        assert info["State"]["Running"] and f"REGISTRY_HTTP_ADDR=127.0.0.1:{port}" in info["Config"]["Env"]
        assert [(m["Source"], m["Destination"]) for m in info["Mounts"]] == [(DATA, "/var/lib/registry")]
        # Both serve the one data directory.
        tags = stack.sh(f"curl -fsS http://127.0.0.1:{port}/v2/e2e/app/tags/list")
        assert "1" in json.loads(tags)["tags"], (name, tags)
    assert loop.failed == [] and len(loop.lines) >= 5, loop.lines
    since = _host_time(stack)
    with PullLoop(stack, "e2e/app:1") as loop:
        down = stack.apply(registryReplicas="1")
    assert down.ok, down.error
    assert stack.sh("docker ps -aq --filter name=^registry-2$").strip() == ""
    assert stack.clients.inspect_container("registry")["State"]["Running"]
    assert down.ran("caddy-site-handover") == [] and _caddy_reloads(stack, since) == 0
    assert _slots(stack) == ["127.0.0.1:5000"] * UPSTREAM_SLOTS
    assert loop.failed == [] and len(loop.lines) >= 5, loop.lines


# --- maintenance ------------------------------------------------------------------------------------------------


PROBE_LOOP = r"""
stop=/run/e2e-storage-probe.stop; rm -f "$stop"; i=0
while [ ! -e "$stop" ] && [ "$i" -lt 4000 ]; do
  for p in PORTS; do
    c=$(curl -s -o /dev/null -m 2 -w '%{http_code}' -X POST "http://127.0.0.1:$p/v2/e2e/probe/blobs/uploads/")
    echo "$p $c"
  done
  i=$((i + 1)); sleep 0.05
done
rm -f "$stop"
"""


def _collapse(codes: list[str]) -> list[str]:
    out: list[str] = []
    for code in codes:
        if not out or out[-1] != code:
            out.append(code)
    return out


def test_gc_window_every_replica_refuses_writes_and_the_deleted_image_space_is_reclaimed(stack: Stack) -> None:
    c = stack.clients
    auth = stack.push_authfile()
    c.sh(
        'd=$(mktemp -d) && head -c 8388608 /dev/urandom > "$d/blob" && '
        'tar -C "$d" -c . | docker import - e2e/st-big:1 >/dev/null && rm -rf "$d"'
    )
    c.push("e2e/st-big:1", "e2e/big:1", auth)
    digest = c.digest("e2e/big:1", auth)
    assert stack.api("DELETE", f"/v2/e2e/big/manifests/{digest}")[0] == "202"
    before = stack.stored_bytes()
    loop = PROBE_LOOP.replace("PORTS", " ".join(map(str, stack.ports)))
    probe = subprocess.Popen(
        ["docker", "exec", stack.host.name, "sh", "-c", loop], stdout=subprocess.PIPE, text=True
    )
    try:
        time.sleep(1)
        out = stack.maintenance("gc")
        time.sleep(1)
    finally:
        stack.host.exec("touch /run/e2e-storage-probe.stop")
        probe_out, _ = probe.communicate(timeout=60)
    after = stack.stored_bytes()
    print(f"\nstorage {stack.variant.id}: {before} -> {after} bytes after deleting an 8 MiB image and collecting")
    assert "read-only window open for garbage collection" in out and "read-only window closed" in out, out
    assert before - after >= 7 * 1024 * 1024, out
    # Every replica answered a write with 202 before the window, refused it (405, read-only) in it, took it after.
    for port in stack.ports:
        codes = _collapse([line.split()[1] for line in probe_out.splitlines() if line.split()[0] == str(port)])
        assert "405" in codes, (port, codes)
        first, last = codes.index("405"), len(codes) - 1 - codes[::-1].index("405")
        assert "202" not in codes[first:last], (port, codes)
        assert codes[0] == "202" and codes[-1] == "202", (port, codes)
    # What was kept still pulls.
    assert "Image is up to date" in c.k3s_pull("e2e/app:1").stdout
    assert stack.api("GET", f"/v2/e2e/big/manifests/{digest}")[0] == "404"


def test_backup_archives_the_data_directory_or_leaves_s3_to_the_store(stack: Stack) -> None:
    listing = f"ls {BACKUPS} 2>/dev/null | grep '^registry-.*[.]tar$' || true"
    before = set(stack.sh(listing).split())  # earlier tests on this host may have left archives of their own
    out = stack.maintenance("backup")
    archives = str(len(set(stack.sh(listing).split()) - before))  # the archives this backup wrote
    timer = stack.sh("systemctl list-unit-files --no-legend registry-backup.timer || true").strip()
    if stack.variant.storage == "s3":
        assert "back it up with the store's own means" in out, out
        assert archives == "0" and timer == ""
        status = stack.maintenance("status")
        assert f"S3 bucket {S3_BUCKET}{stack.variant.prefix} at {S3_ENDPOINT}" in status, status
    else:
        assert "backup written" in out and archives == "1" and timer.startswith("registry-backup.timer"), (out, timer)


def test_destroy_keeps_the_data(stack: Stack) -> None:
    result = stack.destroy()
    assert result.ok, result.error
    assert stack.stack.resources() == {}
    for name in stack.containers:
        assert stack.sh(f"docker ps -aq --filter name=^{name}$").strip() == ""
    assert stack.sh(f"test -e {UPSTREAM_DIR} || echo gone").strip() == "gone"  # the site's slots went with it
    assert stack.stored_bytes() > 0
