"""components/host.py under Pulumi's mocks: the SSH connection, preflight first, sudo unless root, the takeover notice."""

from __future__ import annotations

import shlex

import pytest

from components.host import sha256
from renderers.preflight import takeover_notice
from tests.harness import ProgramRun, is_secret
from tests.unit.support import (
    DOMAIN,
    HOST,
    HOST_KEY,
    PRIVATE_KEY,
    TYPICAL,
    Programs,
)


def test_preflight_depends_on_nothing_but_the_host_key(typical: ProgramRun) -> None:
    assert typical.named("host-preflight").dependencies == [typical.named("host-key").urn]


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


def test_without_a_pinned_key_every_command_dials_with_the_recorded_host_key(typical: ProgramRun) -> None:
    key = typical.named("host-key")
    assert key.type == "pulumi-python:dynamic:Resource" and key.parent == typical.named("host").urn
    assert (key.value("address"), key.value("port")) == (HOST, 22)
    for c in typical.commands:
        assert key.urn in c.dependencies, c.name  # the connection's hostKey is the recorded key


def test_a_pinned_key_or_the_explicit_opt_out_records_nothing(as_root: ProgramRun, programs: Programs) -> None:
    assert "host-key" not in {r.name for r in as_root.registrations}
    opted_out = programs.ok({**TYPICAL, "sshHostKeyCheck": "false"})
    assert "host-key" not in {r.name for r in opted_out.registrations}
    assert all("hostKey" not in c.value("connection") for c in opted_out.commands)


def test_sha256_is_the_hex_digest_of_the_text() -> None:
    assert sha256("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert sha256("a") != sha256("b")


def test_the_notice_is_in_every_preview_and_not_in_an_update(programs: Programs) -> None:
    notice = takeover_notice("registry", DOMAIN, "/etc/caddy/Caddyfile", "/etc/rancher/k3s/registries.yaml")
    assert f"info: {notice}" in programs.ok(TYPICAL, preview=True).logs
    assert not [line for line in programs.ok(TYPICAL).logs if "takes over" in line]
