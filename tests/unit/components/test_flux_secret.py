"""components/flux_secret.py under Pulumi's mocks: the dockerconfigjson secret, the ImageRepositories, their provider."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from tests.harness import MOCK_CLUSTER_IP, ProgramRun, is_secret
from tests.unit.support import (
    DOMAIN,
    KUBECONFIG,
    TYPICAL,
    Programs,
    password,
)

IMAGE_REPOSITORY = "kubernetes:image.toolkit.fluxcd.io/{}:ImageRepository"


def test_flux_secret_is_a_dockerconfigjson_in_flux_system(typical: ProgramRun) -> None:
    secret = typical.named("flux-secret")
    assert secret.type == "kubernetes:core/v1:Secret"
    assert secret.value("type") == "kubernetes.io/dockerconfigjson"
    assert secret.value("metadata") == {"name": "registry-credentials", "namespace": "flux-system"}
    assert list(secret.value("stringData")) == [".dockerconfigjson"]


def test_flux_dockerconfigjson_authenticates_the_pull_user(typical: ProgramRun) -> None:
    doc = json.loads(typical.named("flux-secret").value("stringData")[".dockerconfigjson"])
    pull = password(typical, "credentials-pull")
    assert list(doc["auths"]) == [DOMAIN]
    assert doc["auths"][DOMAIN]["auth"] == base64.b64encode(f"k3s_pull:{pull}".encode()).decode()


@pytest.mark.parametrize(("fixture", "version"), [("typical", "v1"), ("as_root", "v1beta2")])
def test_one_image_repository_per_image_using_the_secret(
    request: pytest.FixtureRequest, fixture: str, version: str
) -> None:
    run: ProgramRun = request.getfixturevalue(fixture)
    repos = {r.name: r for r in run.registrations if r.type.endswith(":ImageRepository")}
    assert sorted(repos) == ["flux-ruby-demo-app", "flux-team-api"]
    for name, image in (("ruby-demo-app", "ruby-demo-app"), ("team-api", "team/api")):
        repo = repos[f"flux-{name}"]
        assert repo.type == IMAGE_REPOSITORY.format(version)
        assert repo.value("apiVersion") == f"image.toolkit.fluxcd.io/{version}"
        assert repo.value("kind") == "ImageRepository"
        assert repo.value("metadata") == {"name": name, "namespace": "flux-system"}
        assert repo.value("spec") == {
            "image": f"{DOMAIN}/{image}",
            "interval": "5m",
            "secretRef": {"name": "registry-credentials"},
        }


CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIBunit-test-only\n-----END CERTIFICATE-----\n"


def test_flux_ca_cert_becomes_a_ca_secret_every_image_repository_names(programs: Programs, typical: ProgramRun) -> None:
    run = programs.ok({**TYPICAL, "fluxCaCert": CA_PEM})
    ca = run.named("flux-ca")
    assert ca.type == "kubernetes:core/v1:Secret"
    assert ca.value("metadata") == {"name": "registry-credentials-ca", "namespace": "flux-system"}
    assert ca.value("stringData") == {"ca.crt": CA_PEM}
    repos = [r for r in run.registrations if r.type.endswith(":ImageRepository")]
    assert len(repos) == 2
    assert all(r.value("spec")["certSecretRef"] == {"name": "registry-credentials-ca"} for r in repos)
    assert not [r for r in typical.registrations if r.name == "flux-ca"]


def test_cluster_resources_use_the_component_provider(typical: ProgramRun) -> None:
    provider = typical.named("flux-cluster")
    assert provider.type == "pulumi:providers:kubernetes"
    assert provider.value("enableSecretMutable") in (True, "true")
    cluster = [r for r in typical.registrations if r.type.startswith("kubernetes:")]
    # the pull secret, two ImageRepositories, the Receiver and its token secret
    assert len(cluster) == 5
    assert all(r.provider == f"{provider.urn}::flux-cluster-id" for r in cluster)


def test_disabling_flux_removes_every_kubernetes_resource(bare: ProgramRun) -> None:
    assert not bare.by_type("registry:index:FluxSecret")
    assert not [r for r in bare.registrations if "kubernetes" in r.type]
    assert {r.name for r in bare.registrations} >= {
        "host", "credentials", "registry", "caddy-site",
        "host-preflight", "host-data-dir", "credentials-push", "credentials-pull", "credentials-http-secret",
        "registry-container", "caddy-site-file",
    }


def test_kubeconfig_is_handed_to_the_provider_as_a_secret(as_root: ProgramRun, typical: ProgramRun) -> None:
    provider = as_root.named("flux-cluster")
    assert is_secret(provider.inputs["kubeconfig"])
    assert provider.value("kubeconfig") == KUBECONFIG
    assert typical.named("flux-cluster").value("kubeconfig") is None


def test_flux_secret_string_data_is_secret(typical: ProgramRun) -> None:
    assert is_secret(typical.named("flux-secret").inputs["stringData"])


def test_the_receiver_scans_every_image_repository_and_its_path_is_derived_from_the_secret_token(
    typical: ProgramRun,
) -> None:
    receiver = typical.named("flux-receiver")
    assert receiver.value("apiVersion") == "notification.toolkit.fluxcd.io/v1"
    assert receiver.value("metadata") == {"name": "registry-credentials-push", "namespace": "flux-system"}
    spec = receiver.value("spec")
    assert spec["type"] == "generic"
    assert spec["secretRef"] == {"name": "registry-credentials-push-token"}
    assert [r["name"] for r in spec["resources"]] == ["ruby-demo-app", "team-api"]
    assert {r["kind"] for r in spec["resources"]} == {"ImageRepository"}
    token_secret = typical.named("flux-receiver-secret")
    assert is_secret(token_secret.inputs["stringData"])
    token = password(typical, "flux-receiver-token")
    assert token_secret.value("stringData") == {"token": token}
    # The host gets the path Flux serves: /hook/ + sha256(token + name + namespace), only on stdin.
    files = typical.named("flux-hook-files")
    expected = "/hook/" + hashlib.sha256(f"{token}registry-credentials-push{'flux-system'}".encode()).hexdigest()
    assert files.value("stdin") == f"{expected}\n{MOCK_CLUSTER_IP}:80\n"
    assert is_secret(files.inputs["stdin"])
    assert token not in files.value("create") and expected not in files.value("create")


def test_no_receiver_without_the_hook_and_an_address_given_is_used_as_is(programs: Programs) -> None:
    off = programs.ok({**TYPICAL, "fluxReceiver": "false"})
    assert not [r for r in off.registrations if "receiver" in r.name or r.name.startswith("flux-hook")]
    assert "REGISTRY_NOTIFICATIONS" not in off.named("registry-container").value("stdin")
    assert "127.0.0.1:9393" not in off.named("caddy-site-file").value("stdin")
    given = programs.ok({**TYPICAL, "fluxReceiverAddress": "127.0.0.1:9292"})
    assert given.named("flux-hook-files").value("stdin").endswith("\n127.0.0.1:9292\n")
