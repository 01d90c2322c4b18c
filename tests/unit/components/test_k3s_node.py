"""components/k3s_node.py under Pulumi's mocks: each node's steps on its own connection, the rolling order, the
handover, the deploy check's pull through each node."""

from __future__ import annotations

import shlex
from typing import Any

import pytest

from renderers.registries_yaml import render_registries_owned
from tests.harness import ProgramRun, is_secret
from tests.unit.support import DOMAIN, NODES, PRIVATE_KEY, TYPICAL, Programs, _waits_for, password, shellcheck

NODE_STEPS = ("preflight", "file", "restart", "back")


@pytest.fixture(scope="module")
def cluster(programs: Programs) -> ProgramRun:
    return programs.ok({**TYPICAL, "sshPrivateKey": PRIVATE_KEY, "nodes": NODES})


def test_without_nodes_the_program_has_no_node_steps(typical: ProgramRun) -> None:
    assert not typical.by_type("registry:index:K3sNode")
    names = {r.name for r in typical.registrations}
    assert "k3s-trust-back" not in names and not [n for n in names if n.startswith("verify-") and n != "verify-check"]


def test_each_node_has_its_steps_under_its_component(cluster: ProgramRun) -> None:
    assert [r.name for r in cluster.by_type("registry:index:K3sNode")] == ["k3s-agent-1", "k3s-server-2", "k3s-agent-3"]
    for node in NODES:
        component = cluster.named(f"k3s-{node['name']}")
        for step in NODE_STEPS:
            assert cluster.named(f"k3s-{node['name']}-{step}").parent == component.urn
        assert cluster.named(f"verify-{node['name']}-pull").parent == cluster.named("verify").urn


def test_each_node_step_connects_to_its_node_with_the_stack_key(cluster: ProgramRun) -> None:
    expected = {"agent-1": ("10.0.0.21", 22, "ubuntu"), "server-2": ("10.0.0.12", 2222, "root"),
                "agent-3": ("agent-3.example.com", 22, "ubuntu")}  # fmt: skip
    for name, where in expected.items():
        for step in [*(f"k3s-{name}-{s}" for s in NODE_STEPS), f"verify-{name}-pull"]:
            command = cluster.named(step)
            conn = command.value("connection")
            assert (conn["host"], conn["port"], conn["user"]) == where, step
            assert is_secret(command.inputs["connection"]) and conn["privateKey"] == PRIVATE_KEY, step
            argv = shlex.split(command.value("create"))
            assert argv[:2] == (["sh", "-c"] if where[2] == "root" else ["sudo", "-n"]), step


def test_each_node_gets_the_servers_entry_on_stdin_and_its_own_path_and_unit(cluster: ProgramRun) -> None:
    content = render_registries_owned(DOMAIN, "k3s_pull", password(cluster, "credentials-pull"), None)
    assert cluster.named("k3s-trust-file").value("stdin") == content
    for node, path, unit in (("agent-1", "/etc/rancher/k3s/registries.yaml", "k3s-agent"),
                             ("server-2", "/etc/rancher/k3s/registries.yaml", "k3s"),
                             ("agent-3", "/etc/k3s/registries.yaml", "k3s-agent")):  # fmt: skip
        written = cluster.named(f"k3s-{node}-file")
        assert is_secret(written.inputs["stdin"]) and written.value("stdin") == content
        assert f"f={path}" in written.value("create") and f"f={path}" in written.value("delete")
        assert f"try-restart {unit}.service" in cluster.named(f"k3s-{node}-restart").value("create")
        assert f"SERVICE={unit}" in cluster.named(f"k3s-{node}-back").value("create")
        assert f"{unit}.service" in cluster.named(f"k3s-{node}-preflight").value("create")


def test_every_node_is_reached_before_anything_changes_on_any_machine(cluster: ProgramRun) -> None:
    first = _waits_for(cluster, "host-preflight")
    assert {f"k3s-{n['name']}-preflight" for n in NODES} <= first
    for node in NODES:
        # Nothing but the node's own host key (recorded on first use when the node pins none).
        assert _waits_for(cluster, f"k3s-{node['name']}-preflight") <= {f"k3s-{node['name']}-key"}
        assert {"host-data-dir", f"k3s-{node['name']}-preflight", "caddy-site-handover"} <= _waits_for(
            cluster, f"k3s-{node['name']}-file"
        )


def test_restarts_roll_one_node_at_a_time_in_list_order(cluster: ProgramRun) -> None:
    order = ["k3s-trust", *(f"k3s-{n['name']}" for n in NODES)]
    for before, after in zip(order, order[1:], strict=False):
        waits = _waits_for(cluster, f"{after}-restart")
        assert f"{before}-back" in waits and f"{before}-restart" in waits, (before, after)
        assert f"{after}-restart" not in _waits_for(cluster, f"{before}-back")
    for name in order:
        assert f"{name}-restart" in _waits_for(cluster, f"{name}-back")
    assert not {f"{n}-restart" for n in order[1:]} & _waits_for(cluster, "k3s-trust-restart")


def test_site_refuses_the_previous_passwords_only_after_every_node_is_back(cluster: ProgramRun) -> None:
    waits = _waits_for(cluster, "caddy-site-file")
    assert {"k3s-trust-back", *(f"k3s-{n['name']}-back" for n in NODES)} <= waits


def test_deploy_check_pulls_through_each_node_after_it_pushed_the_probe(cluster: ProgramRun) -> None:
    for node in NODES:
        pull = cluster.named(f"verify-{node['name']}-pull")
        assert {"verify-check", f"k3s-{node['name']}-back"} <= _waits_for(cluster, f"verify-{node['name']}-pull")
        assert "ACCEPT_MISSING=no" in pull.value("create") and f"NODE={node['name']}" in pull.value("create")
        assert pull.value("triggers")[-1] == cluster.named(f"k3s-{node['name']}-restart").value("triggers")[0]
    assert "ACCEPT_MISSING=yes" in cluster.named("k3s-agent-1-back").value("create")


def test_node_scripts_pass_shellcheck(cluster: ProgramRun, tmp_path: Any) -> None:
    scripts = {}
    for name in ("k3s-agent-1-preflight", "k3s-agent-1-back", "verify-agent-1-pull", "k3s-trust-back"):
        argv = shlex.split(cluster.named(name).value("create"))
        scripts[name] = argv[-1]
    shellcheck(tmp_path, scripts)
