"""The test host's Kubernetes API and Flux's controllers (testhost.ensure_extras(flux=True)), before any program runs.

kube-apiserver on kine (SQLite) and the controller manager, built from their modules, serve the API on the host's
:6443; `k3s kubectl` works with the kubeconfig where k3s writes it; the Flux CRDs come from the controllers' modules
and both controllers run as services. The API is published on a loopback port of this machine, the way a user's
kubeconfig reaches their server.
"""

from __future__ import annotations

import base64
import json

import pytest

from settings.cluster import check_cluster
from settings.model import ConfigError
from tests.e2e.testhost import KUBE_VERSION, KUBECONFIG, TestHost, ensure_extras

pytestmark = pytest.mark.e2e

CONTROLLERS = ("image-reflector-controller", "notification-controller")


@pytest.fixture(scope="module")
def kube(testhost: TestHost) -> TestHost:
    ensure_extras(testhost, flux=True)
    return testhost


def test_k3s_kubectl_talks_to_a_real_api_server_with_the_kubeconfig_where_k3s_writes_it(kube: TestHost) -> None:
    version = json.loads(kube.exec("k3s kubectl version -o json").stdout)
    assert version["serverVersion"]["gitVersion"] == KUBE_VERSION
    assert version["clientVersion"]["gitVersion"] == KUBE_VERSION
    # root-only, as k3s writes it by default
    assert kube.exec(f"stat -c '%a %U' {KUBECONFIG}").stdout.split() == ["600", "root"]
    namespaces = json.loads(kube.exec("k3s kubectl get namespaces -o json").stdout)["items"]
    assert "flux-system" in {n["metadata"]["name"] for n in namespaces}
    # written objects survive an API server restart: the datastore is kine's SQLite file
    kube.exec("k3s kubectl -n default create configmap regtest-kine-probe --from-literal=a=b")
    kube.exec("systemctl restart kube-apiserver && until k3s kubectl get --raw /readyz >/dev/null 2>&1; do sleep 1; done")
    try:
        probe = json.loads(kube.exec("k3s kubectl -n default get configmap regtest-kine-probe -o json").stdout)
        assert probe["data"] == {"a": "b"}
        assert kube.exec("test -s /var/lib/rancher/k3s/server/db/state.db && echo yes").stdout.strip() == "yes"
    finally:
        kube.exec("k3s kubectl -n default delete configmap regtest-kine-probe --ignore-not-found")


def test_flux_crds_are_served_and_both_controllers_run(kube: TestHost) -> None:
    resources = kube.exec("k3s kubectl api-resources -o name --api-group image.toolkit.fluxcd.io").stdout.split()
    assert "imagerepositories.image.toolkit.fluxcd.io" in resources
    receivers = kube.exec("k3s kubectl api-resources -o name --api-group notification.toolkit.fluxcd.io").stdout.split()
    assert "receivers.notification.toolkit.fluxcd.io" in receivers
    crd = json.loads(kube.exec("k3s kubectl get crd imagerepositories.image.toolkit.fluxcd.io -o json").stdout)
    served = [v["name"] for v in crd["spec"]["versions"] if v["served"]]
    assert served == ["v1"]  # image-reflector-controller v1.2.0 serves only v1
    states = kube.exec(f"systemctl is-active {' '.join(CONTROLLERS)}", check=False).stdout.split()
    assert states == ["active"] * len(CONTROLLERS)
    # the controllers talk to the API: each has taken up its watch (no list/watch errors for its kinds)
    for unit, health in zip(CONTROLLERS, (19441, 19442), strict=True):
        assert kube.exec(f"curl -fsS http://127.0.0.1:{health}/readyz", check=False).returncode == 0, unit


def test_the_published_api_port_answers_the_programs_cluster_check_from_this_machine(kube: TestHost) -> None:
    assert kube.api_port
    assert check_cluster(kube.kubeconfig()) == KUBE_VERSION
    closed = kube.kubeconfig().replace(f":{kube.api_port}", ":1")
    with pytest.raises(ConfigError, match=r"registry:kubeconfig = <secret> is invalid; .*https://127\.0\.0\.1:1 cannot be reached"):
        check_cluster(closed, timeout=5)
    # a kubeconfig whose CA is not the server's: TLS refuses it, and the message says so
    foreign_ca = kube.pebble_listener_ca().encode()
    lines = [
        f"    certificate-authority-data: {base64.b64encode(foreign_ca).decode()}"
        if line.strip().startswith("certificate-authority-data:") else line
        for line in kube.kubeconfig().splitlines()
    ]
    with pytest.raises(ConfigError, match=r"registry:kubeconfig .*CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        check_cluster("\n".join(lines), timeout=5)


def test_ensuring_the_extras_again_restarts_nothing(kube: TestHost) -> None:
    units = "kine kube-apiserver image-reflector-controller notification-controller"
    started = f"systemctl show -p ActiveEnterTimestampMonotonic --value {units}"
    before = kube.exec(started).stdout.split()
    ensure_extras(kube, flux=True)
    assert kube.exec(started).stdout.split() == before
