"""The whole program (__main__.py) under Pulumi's mocks, not the engine: every component and its children, the
dependencies between them, and where secrets go."""

from __future__ import annotations

import json

import pytest

from renderers.dockerconfigjson import basic_auth_value
from tests.harness import ProgramRun, is_secret, reveal
from tests.unit.support import (
    BASE,
    DOMAIN,
    KUBECONFIG,
    PRIVATE_KEY,
    Programs,
    _waits_for,
    exposed_strings,
    generated,
    password,
)


def test_program_with_bad_setting_fails_before_registering_anything(programs: Programs) -> None:
    run = programs.run({**BASE, "domain": "Not A Domain", "sshPrivateKey": "hunter2-not-a-key"})
    assert run.error is not None
    assert run.error.startswith("RunError: invalid stack configuration:")  # a clean message, no stack trace
    assert "registry:domain = 'Not A Domain' is invalid" in run.error
    assert "registry:sshPrivateKey = <secret> is invalid" in run.error
    assert "hunter2" not in run.error
    assert run.registrations == []


STACK_URN = "urn:pulumi:test::registry::pulumi:pulumi:Stack::registry-test"


COMPONENTS = {
    "host": ("registry:index:Host", ["host-key", "host-preflight", "host-data-dir"]),
    "credentials": (
        "registry:index:Credentials",
        ["credentials-push", "credentials-pull", "credentials-http-secret", "credentials-generations"],
    ),
    "registry": ("registry:index:RegistryContainer", ["registry-state", "registry-container"]),
    "caddy-site": ("registry:index:CaddySite", ["caddy-site-state", "caddy-site-handover", "caddy-site-file"]),
    "k3s-trust": ("registry:index:K3sTrust", ["k3s-trust-state", "k3s-trust-file", "k3s-trust-restart"]),
    "flux": (
        "registry:index:FluxSecret",
        ["flux-cluster", "flux-secret", "flux-ruby-demo-app", "flux-team-api", "flux-receiver", "flux-receiver-token",
         "flux-receiver-secret"],
    ),
    "flux-hook": ("registry:index:FluxHook", ["flux-hook-files"]),
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


DEPENDS_ON = {
    "host-preflight": ["host-key"],
    "host-data-dir": ["host-preflight", "host-key"],
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


@pytest.mark.parametrize("name", ["registry-container", "k3s-trust-file", "k3s-trust-restart", "flux-secret"])
def test_what_uses_the_site_credentials_or_needs_its_retries_waits_for_the_live_site(
    typical: ProgramRun, name: str
) -> None:
    # The handover step is what makes the site live (validated, reloaded): a failure there stops these.
    assert "caddy-site-handover" in _waits_for(typical, name)
    assert name not in _waits_for(typical, "caddy-site-handover")


def test_docker_config_export_authenticates_the_push_user(typical: ProgramRun) -> None:
    doc = json.loads(typical.exports["dockerConfigJson"])
    assert doc["auths"][DOMAIN]["auth"] == basic_auth_value("robot_user", password(typical, "credentials-push"))


def test_every_stdin_is_a_secret(typical: ProgramRun) -> None:
    with_stdin = [c for c in typical.commands if c.inputs.get("stdin") is not None]
    assert {"caddy-site-file", "k3s-trust-file", "registry-container", "verify-check"} <= {c.name for c in with_stdin}
    assert all(is_secret(c.inputs["stdin"]) for c in with_stdin)


def test_commands_that_read_secrets_log_nothing_and_hide_their_output(typical: ProgramRun) -> None:
    for c in typical.commands:
        if c.inputs.get("stdin") is not None:
            assert c.value("logging") == "none", c.name
            assert {"stdout", "stderr"} <= set(c.additional_secret_outputs), c.name


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


def test_no_operations_command_carries_a_password(typical: ProgramRun) -> None:
    secrets = [password(typical, "credentials-push"), password(typical, "credentials-pull")]
    for name in ("verify-check", "maintenance-install"):
        command = typical.named(name)
        for op in ("create", "update", "delete"):
            text = command.value(op) or ""
            assert not any(s in text for s in secrets), f"{name}.{op}"
