"""The resource graph under Pulumi mocks: components and their children, dependencies, and where secrets go."""

from __future__ import annotations

import base64
import json
import shlex

import bcrypt
import pytest
import yaml

from components.host import sha256
from renderers.caddyfile import SiteSpec, render_caddyfile
from renderers.dockerconfigjson import basic_auth_value
from renderers.registries_yaml import render_registries_owned
from renderers.registry_env import render_registry_env
from tests.harness import ProgramRun, is_secret, reveal
from tests.unit.support import (
    DOMAIN,
    HOST,
    KUBECONFIG,
    PRIVATE_KEY,
    TYPICAL,
    Programs,
    exposed_strings,
    generated,
    password,
)

IMAGE_REPOSITORY = "kubernetes:image.toolkit.fluxcd.io/{}:ImageRepository"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


@pytest.fixture(scope="module")
def typical(programs: Programs) -> ProgramRun:
    return programs.ok(TYPICAL)


@pytest.fixture(scope="module")
def as_root(programs: Programs) -> ProgramRun:
    """Root login with a private key, a pinned host key, a kubeconfig, Flux v1beta2 and a registry CA file."""
    return programs.ok(
        {
            **TYPICAL,
            "sshUser": "root",
            "sshPrivateKey": PRIVATE_KEY,
            "sshHostKey": HOST_KEY,
            "kubeconfig": KUBECONFIG,
            "fluxApiVersion": "image.toolkit.fluxcd.io/v1beta2",
            "registryCaFile": "/etc/rancher/k3s/registry-ca.pem",
            "k3sService": "k3s-agent",
        }
    )


@pytest.fixture(scope="module")
def bare(programs: Programs) -> ProgramRun:
    """k3s trust and Flux both switched off."""
    return programs.ok({**TYPICAL, "k3sTrust": "false", "flux": "false"})


STACK_URN = "urn:pulumi:test::registry::pulumi:pulumi:Stack::registry-test"


# --- components and children -------------------------------------------------------------------------

COMPONENTS = {
    "host": ("registry:index:Host", ["host-preflight", "host-data-dir"]),
    "credentials": (
        "registry:index:Credentials",
        ["credentials-push", "credentials-pull", "credentials-http-secret", "credentials-generations"],
    ),
    "registry": ("registry:index:RegistryContainer", ["registry-container"]),
    "caddy-site": ("registry:index:CaddySite", ["caddy-site-handover", "caddy-site-file"]),
    "k3s-trust": ("registry:index:K3sTrust", ["k3s-trust-file", "k3s-trust-restart"]),
    "flux": ("registry:index:FluxSecret", ["flux-cluster", "flux-secret", "flux-ruby-demo-app", "flux-team-api"]),
    "verify": ("registry:index:Verify", ["verify-check"]),
}


@pytest.mark.parametrize(("name", "typ", "children"), [(n, t, c) for n, (t, c) in COMPONENTS.items()], ids=COMPONENTS)
def test_component_exists_with_its_children_parented_to_it(
    typical: ProgramRun, name: str, typ: str, children: list[str]
) -> None:
    component = typical.named(name)
    assert component.type == typ and not component.custom
    assert component.parent == STACK_URN
    assert sorted(r.name for r in typical.registrations if r.parent == component.urn) == sorted(children)


def test_every_resource_belongs_to_a_component(typical: ProgramRun) -> None:
    components = {r.urn for r in typical.registrations if not r.custom}
    assert {typical.named(name).urn for name in COMPONENTS} <= components
    for r in typical.registrations:
        if r.custom:
            assert r.parent in components, r.name
        else:
            assert r.type.startswith("registry:index:") and r.parent == STACK_URN, r.name
    assert len(typical.by_type("registry:index:Host")) == 1


# --- dependencies ------------------------------------------------------------------------------------

DEPENDS_ON = {
    "host-data-dir": ["host-preflight"],
    "registry-container": ["host-data-dir", "credentials-http-secret", "caddy-site-handover"],
    "caddy-site-handover": ["credentials-push", "credentials-pull", "credentials-generations", "host-data-dir"],
    # The rotation handover: clients switch after the site accepts both, the site drops the old after them.
    "caddy-site-file": [
        "credentials-push", "credentials-pull", "host-data-dir",
        "caddy-site-handover", "k3s-trust-file", "k3s-trust-restart", "flux-secret",
    ],
    "k3s-trust-file": ["host-data-dir", "credentials-pull", "caddy-site-handover"],
    "k3s-trust-restart": ["k3s-trust-file", "host-data-dir", "caddy-site-handover"],
    "flux-secret": ["credentials-pull", "caddy-site-handover"],
    "flux-ruby-demo-app": ["flux-secret"],
    "flux-team-api": ["flux-secret"],
    "verify-check": ["caddy-site-file", "registry-container", "k3s-trust-restart", "credentials-push", "credentials-pull"],
}


@pytest.mark.parametrize(("name", "needs"), DEPENDS_ON.items(), ids=DEPENDS_ON)
def test_resource_waits_for_what_it_needs(typical: ProgramRun, name: str, needs: list[str]) -> None:
    deps = set(typical.named(name).dependencies)
    missing = [n for n in needs if typical.named(n).urn not in deps]
    assert not missing, f"{name} does not depend on {missing}"


def _waits_for(run: ProgramRun, name: str) -> set[str]:
    """Every resource `name` waits for, directly or through others (components stand for their children)."""
    by_urn = {r.urn: r for r in run.registrations}
    children: dict[str, list[str]] = {}
    for r in run.registrations:
        children.setdefault(r.parent, []).append(r.urn)
    seen: set[str] = set()
    todo = list(run.named(name).dependencies)
    while todo:
        urn = todo.pop()
        if urn in seen or urn not in by_urn:
            continue
        seen.add(urn)
        todo += by_urn[urn].dependencies + children.get(urn, [])
    return {by_urn[u].name for u in seen}


@pytest.mark.parametrize("name", ["registry-container", "k3s-trust-file", "k3s-trust-restart", "flux-secret"])
def test_what_uses_the_site_credentials_or_needs_its_retries_waits_for_the_live_site(
    typical: ProgramRun, name: str
) -> None:
    # The handover step is what makes the site live (validated, reloaded): a failure there stops these.
    assert "caddy-site-handover" in _waits_for(typical, name)
    assert name not in _waits_for(typical, "caddy-site-handover")


def test_preflight_depends_on_nothing(typical: ProgramRun) -> None:
    assert typical.named("host-preflight").dependencies == []


def test_registry_container_is_removed_before_its_replacement_starts(typical: ProgramRun) -> None:
    container = typical.named("registry-container")
    assert container.delete_before_replace
    assert container.value("triggers") == ["registry:2.8.3", 5000]
    create = container.value("create")
    assert "registry:2.8.3" in create and "--network host" in create and "REGISTRY_HTTP_ADDR=127.0.0.1:5000" in create
    assert "-v /srv/data/registry:/var/lib/registry" in create


def test_k3s_restart_is_triggered_by_the_trust_file_digest(typical: ProgramRun) -> None:
    content = typical.named("k3s-trust-file").value("stdin")
    restart = typical.named("k3s-trust-restart")
    assert restart.value("triggers") == [sha256(content), "k3s"]
    create = restart.value("create")
    # Restarts only when the host's merge changed the file (the write step leaves the flag).
    assert "systemctl try-restart k3s.service" in create and "/run/registry/k3s-restart-pending" in create
    assert "/run/registry/k3s-restart-pending" in typical.named("k3s-trust-file").value("create")


# --- what lands on the host and in the cluster ---------------------------------------------------------


def test_caddy_site_file_is_the_rendered_site(typical: ProgramRun) -> None:
    push, pull = generated(typical, "credentials-push"), generated(typical, "credentials-pull")
    expected = render_caddyfile(
        SiteSpec(
            domain=DOMAIN, acme_email="ops@example.com",
            push_user="robot_user", push_hash=push["bcryptHash"], pull_user="k3s_pull", pull_hash=pull["bcryptHash"],
            allowlist=("198.51.100.0/24", "2001:db8::/32"),
        )
    )
    assert typical.named("caddy-site-file").value("stdin") == expected


def test_caddy_site_hashes_verify_against_the_generated_passwords(typical: ProgramRun) -> None:
    site = typical.named("caddy-site-file").value("stdin")
    hashes = dict(line.split() for line in site.split("basic_auth {\n")[1].split("\t\t}")[0].strip().splitlines())
    push_pw, pull_pw = password(typical, "credentials-push"), password(typical, "credentials-pull")
    assert bcrypt.checkpw(push_pw.encode(), hashes["robot_user"].encode())
    assert bcrypt.checkpw(pull_pw.encode(), hashes["k3s_pull"].encode())
    assert not bcrypt.checkpw(pull_pw.encode(), hashes["robot_user"].encode())


@pytest.mark.parametrize(("fixture", "ca_file"), [("typical", None), ("as_root", "/etc/rancher/k3s/registry-ca.pem")])
def test_k3s_trust_file_is_the_rendered_registries_yaml(
    request: pytest.FixtureRequest, fixture: str, ca_file: str | None
) -> None:
    run: ProgramRun = request.getfixturevalue(fixture)
    stdin = run.named("k3s-trust-file").value("stdin")
    assert stdin == render_registries_owned(DOMAIN, "k3s_pull", password(run, "credentials-pull"), ca_file)


def test_registry_env_file_holds_the_http_secret(typical: ProgramRun) -> None:
    stdin = typical.named("registry-container").value("stdin")
    assert stdin == render_registry_env(password(typical, "credentials-http-secret"))


def test_pull_password_is_the_same_for_k3s_flux_and_the_export(typical: ProgramRun) -> None:
    trust = yaml.safe_load(typical.named("k3s-trust-file").value("stdin"))["configs"][DOMAIN]["auth"]
    flux = json.loads(typical.named("flux-secret").value("stringData")[".dockerconfigjson"])["auths"][DOMAIN]
    expected = password(typical, "credentials-pull")
    assert trust == {"username": "k3s_pull", "password": expected}
    assert (flux["username"], flux["password"]) == ("k3s_pull", expected)
    assert typical.exports["pullPassword"] == expected
    assert typical.exports["pushPassword"] == password(typical, "credentials-push") != expected


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


def test_docker_config_export_authenticates_the_push_user(typical: ProgramRun) -> None:
    doc = json.loads(typical.exports["dockerConfigJson"])
    assert doc["auths"][DOMAIN]["auth"] == basic_auth_value("robot_user", password(typical, "credentials-push"))


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


def test_cluster_resources_use_the_component_provider(typical: ProgramRun) -> None:
    provider = typical.named("flux-cluster")
    assert provider.type == "pulumi:providers:kubernetes"
    assert provider.value("enableSecretMutable") in (True, "true")
    cluster = [r for r in typical.registrations if r.type.startswith("kubernetes:")]
    assert len(cluster) == 3
    assert all(r.provider == f"{provider.urn}::flux-cluster-id" for r in cluster)


def test_disabling_k3s_trust_removes_its_resources_and_preflight_check(bare: ProgramRun, typical: ProgramRun) -> None:
    assert not bare.by_type("registry:index:K3sTrust")
    assert not [r for r in bare.registrations if r.name.startswith("k3s-trust")]
    assert "k3s.service" in typical.named("host-preflight").value("create")
    assert "k3s" not in bare.named("host-preflight").value("create")


def test_disabling_flux_removes_every_kubernetes_resource(bare: ProgramRun) -> None:
    assert not bare.by_type("registry:index:FluxSecret")
    assert not [r for r in bare.registrations if "kubernetes" in r.type]
    assert {r.name for r in bare.registrations} >= {
        "host", "credentials", "registry", "caddy-site",
        "host-preflight", "host-data-dir", "credentials-push", "credentials-pull", "credentials-http-secret",
        "registry-container", "caddy-site-file",
    }


# --- how commands reach the host ----------------------------------------------------------------------


@pytest.mark.parametrize(("fixture", "argv0"), [("typical", ["sudo", "-n", "sh", "-c"]), ("as_root", ["sh", "-c"])])
def test_commands_use_sudo_unless_logged_in_as_root(request: pytest.FixtureRequest, fixture: str, argv0: list[str]) -> None:
    run: ProgramRun = request.getfixturevalue(fixture)
    scripts = [(c.name, c.value(op)) for c in run.commands for op in ("create", "update", "delete") if c.value(op)]
    assert len(scripts) >= 9
    for name, line in scripts:
        argv = shlex.split(line)
        assert argv[:-1] == argv0, name
        assert argv[-1].startswith("set -eu\n"), name


@pytest.mark.parametrize(("fixture", "user"), [("typical", "ubuntu"), ("as_root", "root")])
def test_every_command_connects_to_the_configured_host(request: pytest.FixtureRequest, fixture: str, user: str) -> None:
    run: ProgramRun = request.getfixturevalue(fixture)
    for c in run.commands:
        conn = c.value("connection")
        assert (conn["host"], conn["port"], conn["user"]) == (HOST, 22, user), c.name


def test_connection_carries_secret_private_key_and_pinned_host_key(as_root: ProgramRun, typical: ProgramRun) -> None:
    for c in as_root.commands:
        assert is_secret(c.inputs["connection"]), c.name
        conn = c.value("connection")
        assert conn["privateKey"] == PRIVATE_KEY and conn["hostKey"] == HOST_KEY
    assert all("privateKey" not in c.value("connection") for c in typical.commands)


def test_kubeconfig_is_handed_to_the_provider_as_a_secret(as_root: ProgramRun, typical: ProgramRun) -> None:
    provider = as_root.named("flux-cluster")
    assert is_secret(provider.inputs["kubeconfig"])
    assert provider.value("kubeconfig") == KUBECONFIG
    assert typical.named("flux-cluster").value("kubeconfig") is None


# --- secrets ----------------------------------------------------------------------------------------------


def test_every_stdin_is_a_secret(typical: ProgramRun) -> None:
    with_stdin = [c for c in typical.commands if c.inputs.get("stdin") is not None]
    assert {"caddy-site-file", "k3s-trust-file", "registry-container", "verify-check"} <= {c.name for c in with_stdin}
    assert all(is_secret(c.inputs["stdin"]) for c in with_stdin)


def test_commands_that_read_secrets_log_nothing_and_hide_their_output(typical: ProgramRun) -> None:
    for c in typical.commands:
        if c.inputs.get("stdin") is not None:
            assert c.value("logging") == "none", c.name
            assert {"stdout", "stderr"} <= set(c.additional_secret_outputs), c.name


def test_flux_secret_string_data_is_secret(typical: ProgramRun) -> None:
    assert is_secret(typical.named("flux-secret").inputs["stringData"])


@pytest.mark.parametrize(
    ("export", "secret"),
    [("pushPassword", True), ("pullPassword", True), ("dockerConfigJson", True),
     ("pushUsername", False), ("pullUsername", False), ("registryHost", False), ("registryUrl", False),
     ("imagePrefix", False)],
)
def test_export_secretness(typical: ProgramRun, export: str, secret: bool) -> None:
    assert export in typical.exports
    assert (export in typical.secret_exports) is secret


def test_plain_exports(typical: ProgramRun) -> None:
    assert {k: typical.exports[k] for k in ("registryHost", "registryUrl", "imagePrefix", "pushUsername", "pullUsername")} == {
        "registryHost": DOMAIN,
        "registryUrl": f"https://{DOMAIN}",
        "imagePrefix": f"{DOMAIN}/",
        "pushUsername": "robot_user",
        "pullUsername": "k3s_pull",
    }


def _secret_material(run: ProgramRun) -> dict[str, str]:
    """Every value that must stay secret, by a label for the failure message."""
    material = {}
    for name in ("credentials-push", "credentials-pull", "credentials-http-secret"):
        out = generated(run, name)
        material[f"{name}.result"] = out["result"]
        material[f"{name}.bcryptHash"] = out["bcryptHash"]
    material["push basic auth"] = basic_auth_value("robot_user", material["credentials-push.result"])
    material["pull basic auth"] = basic_auth_value("k3s_pull", material["credentials-pull.result"])
    material["private key"] = PRIVATE_KEY.strip()
    material["kubeconfig"] = KUBECONFIG.strip()
    return material


def _leaks(run: ProgramRun, where: list[tuple[str, str]]) -> list[str]:
    material = _secret_material(run)
    return [f"{label} in {path}" for path, text in where for label, value in material.items() if value in text]


@pytest.mark.parametrize("fixture", ["typical", "as_root"])
def test_no_secret_appears_in_any_command_line(request: pytest.FixtureRequest, fixture: str) -> None:
    # Command strings are printed in full when a command fails, secret or not.
    run: ProgramRun = request.getfixturevalue(fixture)
    where = [
        (f"{c.name}.{key}{path}", text)
        for c in run.commands for key in ("create", "update", "delete", "environment")
        for path, text in exposed_strings(c.value(key))
    ]
    assert len(where) >= 9
    assert not _leaks(run, where)
    assert all(not c.value("environment") for c in run.commands)


@pytest.mark.parametrize("fixture", ["typical", "as_root"])
def test_no_secret_appears_outside_a_secret_wrapper(request: pytest.FixtureRequest, fixture: str) -> None:
    run: ProgramRun = request.getfixturevalue(fixture)
    where = [(f"{r.name}{path}", text) for r in run.registrations for path, text in exposed_strings(r.inputs)]
    where += [(f"export {k}", v) for k, v in run.exports.items() if k not in run.secret_exports]
    assert len(where) > 30
    assert not _leaks(run, where)


def test_secret_material_really_is_in_the_run(as_root: ProgramRun) -> None:
    # Guards the two tests above against passing because they looked for the wrong strings.
    everything = json.dumps([[reveal(r.inputs) for r in as_root.registrations], as_root.exports])
    for label, value in _secret_material(as_root).items():
        if label.endswith("http-secret.bcryptHash"):
            continue  # the http secret is used as a plain value, its hash nowhere
        assert json.dumps(value)[1:-1] in everything, label


def test_generated_hashes_match_their_passwords(typical: ProgramRun) -> None:
    for name in ("credentials-push", "credentials-pull"):
        out = generated(typical, name)
        assert bcrypt.checkpw(out["result"].encode(), out["bcryptHash"].encode())


def test_passwords_have_the_configured_length_and_rotation_keeper(typical: ProgramRun) -> None:
    for name in ("credentials-push", "credentials-pull"):
        r = typical.named(name)
        assert r.value("length") == 32 and r.value("special") is False
        assert r.value("keepers") == {"rotation": "1"}
        assert len(password(typical, name)) == 32
