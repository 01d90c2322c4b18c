"""The program's Flux resources on a real Kubernetes API, scanned by Flux's real image-reflector-controller.

The test host gets kube-apiserver (on kine), the Flux CRDs and the controllers (testhost.ensure_extras(flux=True));
the real Pulumi engine applies the program with Flux on, its Kubernetes provider reaching the API through the
host's published port with the kubeconfig k3s wrote (pointed at that port, as a user points theirs at the server).
The controller scans the registry through the site (https://registry.e2e.test, Caddy with a Pebble certificate)
with the pull-only credential of the program's secret, trusting Pebble's root through the `<secret>-ca` secret the
program makes from fluxCaCert (certSecretRef: the way a user hands a private CA to Flux).

The tests run in file order on one stack and end with its destroy.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.e2e.clients import Clients, stack_config
from tests.e2e.engine import Engine
from tests.e2e.stacks import EngineStack
from tests.e2e.testhost import FLUX_RECEIVER_ADDRESS, TestHost, ensure_extras

pytestmark = pytest.mark.e2e

STACK = "flux"
NS = "flux-system"
SECRET = "registry-credentials"
IMAGE = "e2e/flux-app"
IMAGE_REPOSITORY = "e2e-flux-app"
PEBBLE_CLOSED_PORT = 5443
RECEIVER = f"{SECRET}-push"
HOOK_DIR = "/etc/caddy/flux-hook"
HOOK_PORT = 9393
# Where the test host's notification-controller serves Receivers (its unit: --receiverAddr); a k3s server reaches
# the webhook-receiver Service's ClusterIP instead (the program's default).
RECEIVER_ADDRESS = FLUX_RECEIVER_ADDRESS
K8S_TYPES = ("kubernetes:core/v1:Secret", "kubernetes:image.toolkit.fluxcd.io/v1:ImageRepository")


@dataclass
class Stack(EngineStack):
    pushed: list[str] = field(default_factory=list)

    def kubectl(self, args: str, check: bool = True) -> str:
        return self.host.exec(f"k3s kubectl {args}", check=check).stdout

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.kubectl(f"-n {NS} get {kind} {name} -o json"))
        return found

    def image_repository(self) -> dict[str, Any]:
        return self.get("imagerepositories.image.toolkit.fluxcd.io", IMAGE_REPOSITORY)

    def request_scan(self) -> None:
        """What `flux reconcile image repository` does: a new requestedAt annotation."""
        self.kubectl(
            f"-n {NS} annotate --overwrite imagerepositories.image.toolkit.fluxcd.io {IMAGE_REPOSITORY} "
            f"reconcile.fluxcd.io/requestedAt={time.time_ns()}"
        )

    def push(self, tag: str) -> None:
        c = self.clients
        push = c.authfile("flux-push", self.exports["dockerConfigJson"])
        c.push(c.make_image(f"flux-{tag}"), f"{IMAGE}:{tag}", push)
        self.pushed.append(tag)

    def wait_scanned(self, tag: str, timeout: float = 60) -> dict[str, Any]:
        """Request scans until the tag is in status.lastScanResult; the ImageRepository then."""
        deadline = time.monotonic() + timeout
        while True:
            self.request_scan()
            time.sleep(2)
            repo = self.image_repository()
            if tag in ((repo.get("status") or {}).get("lastScanResult") or {}).get("latestTags", []):
                return repo
            if time.monotonic() > deadline:
                raise AssertionError(f"tag {tag} not scanned in {timeout:.0f}s: {json.dumps(repo.get('status'))}")

    def requested_at(self) -> str:
        annotations = self.image_repository()["metadata"].get("annotations") or {}
        return str(annotations.get("reconcile.fluxcd.io/requestedAt", ""))

    def wait_listed(self, tag: str, timeout: float) -> float:
        """Seconds until the tag is in status.lastScanResult, without asking for a scan."""
        t0 = time.monotonic()
        while tag not in ((self.image_repository().get("status") or {}).get("lastScanResult") or {}).get("latestTags", []):
            if time.monotonic() - t0 > timeout:
                logs = self.host.exec(
                    "docker logs --tail 15 registry 2>&1 | grep -iv 'GET /v2' | cut -c1-400; "
                    "journalctl -u notification-controller -n 15 -o cat --no-pager | cut -c1-400", check=False
                ).stdout
                raise AssertionError(
                    f"tag {tag} not listed in {timeout:.0f}s: {self.image_repository().get('status')}\n{logs}"
                )
            time.sleep(0.2)
        return time.monotonic() - t0

    def hook_path(self) -> str:
        return self.host.exec(f"cat {HOOK_DIR}/path").stdout.strip()

    def k8s_ops(self, run: Any) -> dict[str, str]:
        """The engine's step for each Kubernetes resource of a run."""
        kinds = {n: e["type"] for n, e in self.stack.resources().items()}
        return {n: op for n, op in run.ops.items() if kinds.get(n, "").startswith("kubernetes:")}


def ready(repo: dict[str, Any]) -> dict[str, Any]:
    conditions = (repo.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "Ready"), {})


@pytest.fixture(scope="module")
def kube(testhost: TestHost) -> TestHost:
    ensure_extras(testhost, flux=True)
    return testhost


def flux_config(host: TestHost, **overrides: str) -> dict[str, Any]:
    return stack_config(
        host, flux="true", kubeconfig=host.kubeconfig(), fluxImages=[IMAGE], fluxInterval="1m",
        fluxCaCert=host.pebble_root(), credentialRotation="1", fluxReceiverAddress=RECEIVER_ADDRESS, **overrides,
    )  # fmt: skip


def test_a_kubeconfig_that_cannot_reach_the_api_fails_naming_the_setting_before_any_change_on_the_host(
    kube: TestHost, engine: Engine, tmp_path_factory: pytest.TempPathFactory
) -> None:
    closed = kube.kubeconfig().replace(f":{kube.api_port}", ":1")
    s: Stack = Stack.open(engine, "flux-unreachable", kube, tmp_path_factory.mktemp("flux-bad"), flux_config(kube))
    s.configure(kubeconfig=closed)
    since = s.clients.now()
    preview = s.preview()
    run = s.apply()
    try:
        for r in (preview, run):
            assert not r.ok
            assert "registry:kubeconfig = <secret> is invalid" in r.text
            assert "https://127.0.0.1:1 cannot be reached" in r.text
            assert "Traceback" not in r.text
            assert "clusters:" not in r.text and "client-key-data" not in r.text  # the kubeconfig stays secret
        assert [e["type"] for e in s.stack.resources().values()] in ([], ["pulumi:pulumi:Stack"])
        assert s.clients.ssh_logins(since) == 0
    finally:
        s.stack.remove()


@pytest.fixture(scope="module")
def stack(kube: TestHost, engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Only HTTP-01 can pass (see test_scenarios). Pebble makes a new root when it restarts: fluxCaCert is read after.
    clients = Clients(kube)
    clients.pebble_tls_port(PEBBLE_CLOSED_PORT)
    clients.forget_certificates()
    s: Stack = Stack.open(engine, STACK, kube, tmp_path_factory.mktemp("flux-project"), flux_config(kube))
    try:
        result = s.apply()
        assert result.ok, f"fresh up failed:\n{result.error}"
        yield s
    finally:
        s.cleanup()
        s.clients.pebble_tls_port(443)


def test_up_creates_the_pull_secret_the_ca_secret_and_the_image_repository(stack: Stack) -> None:
    secret = stack.get("secret", SECRET)
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    config = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))
    auth = config["auths"][stack.host.domain]
    assert (auth["username"], auth["password"]) == (stack.exports["pullUsername"], stack.exports["pullPassword"])
    assert auth["password"] != stack.exports["pushPassword"]
    ca = stack.get("secret", f"{SECRET}-ca")
    assert base64.b64decode(ca["data"]["ca.crt"]).decode() == stack.config["fluxCaCert"]
    spec = stack.image_repository()["spec"]
    assert spec["image"] == f"{stack.host.domain}/{IMAGE}"
    assert spec["interval"] == "1m"
    assert spec["secretRef"] == {"name": SECRET}
    assert spec["certSecretRef"] == {"name": f"{SECRET}-ca"}
    receiver = stack.get("receivers.notification.toolkit.fluxcd.io", RECEIVER)
    assert receiver["spec"]["type"] == "generic"
    assert receiver["spec"]["resources"] == [
        {"apiVersion": "image.toolkit.fluxcd.io/v1", "kind": "ImageRepository", "name": IMAGE_REPOSITORY}
    ]
    deadline = time.monotonic() + 60
    while not (stack.get("receivers.notification.toolkit.fluxcd.io", RECEIVER).get("status") or {}).get("webhookPath"):
        assert time.monotonic() < deadline, "the Receiver never got a webhook path"
        time.sleep(1)
    # The relay's file holds the very path the controller serves; Caddy alone can read it.
    status = stack.get("receivers.notification.toolkit.fluxcd.io", RECEIVER)["status"]
    assert stack.hook_path() == status["webhookPath"]
    assert stack.host.exec(f"stat -c '%a %U %G' {HOOK_DIR}/path").stdout.split() == ["640", "root", "caddy"]
    listeners = stack.clients.sh(f"ss -Hltn 'sport = :{HOOK_PORT}' | awk '{{print $4}}'").stdout.split()
    assert listeners == [f"127.0.0.1:{HOOK_PORT}"], listeners


def test_a_tag_pushed_with_the_push_credential_is_scanned_with_the_pull_credential(stack: Stack) -> None:
    stack.push("1")
    repo = stack.wait_scanned("1")
    assert repo["status"]["lastScanResult"]["tagCount"] == 1
    condition = ready(repo)
    assert condition.get("status") == "True", condition


def test_a_rotation_updates_the_secret_in_place_and_scans_keep_succeeding(stack: Stack) -> None:
    before = stack.get("secret", SECRET)["metadata"]
    observed: list[dict[str, Any]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                stack.request_scan()
                observed.append(ready(stack.image_repository()))
            except Exception as exc:  # noqa: BLE001 - a failed read is recorded, not fatal to the watch
                observed.append({"status": "unread", "message": str(exc)[-300:]})
            stop.wait(1.0)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        run = stack.apply(credentialRotation="2")
        assert run.ok, run.error
        stack.push("2")
        repo = stack.wait_scanned("2")
    finally:
        stop.set()
        watcher.join(timeout=30)
    after = stack.get("secret", SECRET)["metadata"]
    assert after["uid"] == before["uid"], "the secret was recreated, not updated in place"
    assert after["resourceVersion"] != before["resourceVersion"]
    assert stack.k8s_ops(run).get("flux-secret") == "update"
    config = json.loads(base64.b64decode(stack.get("secret", SECRET)["data"][".dockerconfigjson"]))
    assert config["auths"][stack.host.domain]["password"] == stack.exports["pullPassword"]
    assert {"1", "2"} <= set(repo["status"]["lastScanResult"]["latestTags"])
    assert len([o for o in observed if o.get("status") == "True"]) >= 5, observed
    failed = [o for o in observed if o.get("status") == "False"]
    assert not failed, f"Ready turned False during the rotation: {failed}"


def test_a_push_reaches_the_image_repository_through_the_receiver_within_seconds(stack: Stack) -> None:
    """After the rotation's `up` (a new token, so a new path): no manual reconcile, well before the 1m interval."""
    path = stack.hook_path()
    status = stack.get("receivers.notification.toolkit.fluxcd.io", RECEIVER)["status"]
    assert path == status["webhookPath"]
    before = stack.requested_at()
    latencies = []
    for tag in ("hook-1", "hook-2", "hook-3"):
        stack.push(tag)
        latencies.append(stack.wait_listed(tag, timeout=20))
    print(f"\npush -> ImageRepository status through the Receiver: {', '.join(f'{s:.1f}s' for s in latencies)}")
    assert max(latencies) < 15, latencies
    # The Receiver asked for each scan: its requestedAt annotation (not a test's, which is an integer) was handled.
    asked = stack.requested_at()
    assert asked != before and not asked.isdigit(), asked
    assert (stack.image_repository().get("status") or {}).get("lastHandledReconcileAt") == asked


def test_with_the_receiver_down_a_push_succeeds_and_the_tag_arrives_at_the_next_interval(stack: Stack) -> None:
    stack.host.exec("systemctl stop notification-controller")
    try:
        asked = stack.requested_at()
        t0 = time.monotonic()
        stack.push("receiver-down")  # fails the test if the push fails
        pushed = time.monotonic() - t0
        seconds = stack.wait_listed("receiver-down", timeout=100)
        assert stack.requested_at() == asked  # nobody asked: the interval scan found it
        print(f"\nreceiver down: push {pushed:.1f}s, tag listed {seconds:.0f}s later (interval 1m)")
        assert pushed < 30
    finally:
        stack.host.exec("systemctl start notification-controller")


def test_the_token_and_hook_path_stay_out_of_logs_state_and_output(stack: Stack) -> None:
    path = stack.hook_path()
    token = json.loads(stack.kubectl(f"-n {NS} get secret {RECEIVER}-token -o json"))["data"]["token"]
    token = base64.b64decode(token).decode()
    digest = path.rsplit("/", 1)[1]
    leaks = {
        "registry log": stack.host.exec("docker logs registry 2>&1").stdout,
        "caddy journal": stack.host.exec("journalctl -u caddy -o cat --no-pager").stdout,
        "CLI output": "\n".join(r.text for r in stack.history),
        "state": json.dumps(stack.stack.export()),
        "caddy config": stack.host.exec("curl -s localhost:2019/config/", check=False).stdout,
        "process table": stack.host.exec("ps -eo args").stdout,
    }
    for where, text in leaks.items():
        assert token not in text and digest not in text, f"the hook token or path shows in the {where}"
    # The registry's own log names the relay's URL, nothing more.
    assert f"127.0.0.1:{HOOK_PORT}" in leaks["registry log"] or "flux-receiver" in leaks["registry log"]


def test_a_second_up_and_a_preview_change_nothing_in_the_cluster(stack: Stack) -> None:
    run = stack.apply()
    assert run.ok, run.error
    assert {n: op for n, op in stack.k8s_ops(run).items() if op != "same"} == {}
    preview = stack.preview(expect_no_changes=True)
    assert preview.ok, preview.error


def test_destroy_removes_what_the_program_created_and_nothing_else(stack: Stack) -> None:
    k = stack.kubectl
    k(f"-n {NS} create secret generic regtest-not-ours --from-literal=a=b")
    other = {
        "apiVersion": "image.toolkit.fluxcd.io/v1", "kind": "ImageRepository",
        "metadata": {"name": "regtest-not-ours", "namespace": NS},
        "spec": {"image": "registry.e2e.test/not-ours", "interval": "10m"},
    }  # fmt: skip
    stack.host.exec("k3s kubectl apply -f -", input=json.dumps(other).encode())
    try:
        run = stack.destroy()
        assert run.ok, run.error
        gone = [
            ("secret", SECRET), ("secret", f"{SECRET}-ca"), ("imagerepositories.image.toolkit.fluxcd.io", IMAGE_REPOSITORY),
            ("receivers.notification.toolkit.fluxcd.io", RECEIVER), ("secret", f"{RECEIVER}-token"),
        ]  # fmt: skip
        for kind, name in gone:
            assert "NotFound" in stack.host.exec(f"k3s kubectl -n {NS} get {kind} {name}", check=False).stderr, name
        assert stack.get("secret", "regtest-not-ours")["metadata"]["name"] == "regtest-not-ours"
        assert stack.get("imagerepositories.image.toolkit.fluxcd.io", "regtest-not-ours")["spec"]["interval"] == "10m"
        assert json.loads(k(f"get namespace {NS} -o json"))["status"]["phase"] == "Active"
        assert "imagerepositories.image.toolkit.fluxcd.io" in k("get crd -o name")
        assert stack.host.exec(f"test -e {HOOK_DIR} || echo gone").stdout.strip() == "gone"
    finally:
        k(f"-n {NS} delete secret regtest-not-ours --ignore-not-found")
        k(f"-n {NS} delete imagerepositories.image.toolkit.fluxcd.io regtest-not-ours --ignore-not-found")
