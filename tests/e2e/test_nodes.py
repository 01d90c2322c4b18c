"""Every node of the cluster trusts the registry: the registry's server (k3s server stand-in) and an agent host
(k3s-agent stand-in) on one Docker network, driven by the real Pulumi engine.

Pull loops run through each node's containerd (`k3s crictl pull`, the credential its k3s loaded from its own
registries.yaml) while an `up` changes the trust file and while a rotation hands over: no pull fails and none gets a
401, and the nodes' restarts (systemd's journal on each host) never overlap. A pull that overlaps its own node's
restart meets that node's k3s stopped (as a pod's pull would; kubelet restarts with it): those are counted apart.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.e2e.clients import REGISTRY_CA_FILE, Clients, stack_config
from tests.e2e.cluster import Cluster, start_cluster
from tests.e2e.engine import Engine, Run
from tests.e2e.stacks import EngineStack
from tests.e2e.testhost import TestHost

pytestmark = pytest.mark.e2e

REGISTRIES_YAML = "/etc/rancher/k3s/registries.yaml"
SECOND_CA_FILE = "/etc/rancher/k3s/registry-ca-2.pem"
IMAGE = "e2e/nodes:1"
UNAUTHORIZED = re.compile(r"\b401\b|unauthorized", re.IGNORECASE)
AGENT_STEPS = {"k3s-agent-1", "k3s-agent-1-preflight", "k3s-agent-1-file", "k3s-agent-1-restart", "k3s-agent-1-back",
               "verify-agent-1-pull"}  # fmt: skip


@dataclass
class Node:
    name: str
    clients: Clients
    unit: str


@dataclass
class Pulls:
    """A thread pulling IMAGE through one node's containerd, fresh each time, until stopped."""

    node: Node
    attempts: list[tuple[float, float, bool, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> Pulls:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stop.is_set():
            t0 = time.time()
            proc = self.node.clients.k3s_pull(IMAGE, check=False)
            self.attempts.append((t0, time.time(), proc.returncode == 0, (proc.stdout + proc.stderr)[-600:]))
            self.stop.wait(0.3)

    def halt(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=120)


@dataclass
class Stack(EngineStack):
    cluster: Cluster | None = None

    def nodes(self) -> list[Node]:
        assert self.cluster is not None
        return [Node("server", self.clients, "k3s"), Node("agent-1", Clients(self.cluster.agent), "k3s-agent")]


@pytest.fixture(scope="module")
def stack(testhost: TestHost, engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    server = Clients(testhost)
    server.forget_certificates()
    server.trust_pebble()
    cluster = start_cluster(testhost, f"{testhost.name}-agent")
    cluster.trust_server_ca()
    config = stack_config(testhost, flux="false")
    s: Stack = Stack.open(engine, "nodes", testhost, tmp_path_factory.mktemp("nodes-project"), config, cluster=cluster)
    try:
        s.configure(nodes=[cluster.node()])
        yield s
    finally:
        try:
            s.cleanup()
        finally:
            cluster.remove()


def restarts(node: Node, since: float) -> list[tuple[float, float]]:
    """(stopping, started) wall-clock times of each restart of the node's k3s unit since `since` (its journal)."""
    lines = node.clients.sh(
        f"journalctl -u {node.unit}.service -o json --no-pager --since @{int(since)}", check=False
    ).stdout.splitlines()
    found: list[tuple[float, float]] = []
    stopping: float | None = None
    for line in lines:
        entry = json.loads(line)
        message, at = str(entry.get("MESSAGE", "")), int(entry["__REALTIME_TIMESTAMP"]) / 1e6
        if message.startswith("Stopping ") and at >= since:
            stopping = at
        elif message.startswith("Started ") and stopping is not None:
            found.append((stopping, at))
            stopping = None
    return found


def loaded_matches_file(node: Node) -> bool:
    """The node's k3s last started with what its registries.yaml holds now."""
    starts = node.clients.starts()
    return bool(starts) and starts[-1][1] == node.clients.sha256(REGISTRIES_YAML)


def run_with_pulls(stack: Stack, **changes: Any) -> tuple[Run, dict[str, Pulls], dict[str, list[tuple[float, float]]]]:
    """`pulumi up` with CHANGES while every node pulls in a loop (from before the up to after it)."""
    nodes = stack.nodes()
    loops = {n.name: Pulls(n).start() for n in nodes}
    began = time.time()
    try:
        time.sleep(3)
        result = stack.apply(**changes)
        time.sleep(3)
    finally:
        for loop in loops.values():
            loop.halt()
    return result, loops, {n.name: restarts(n, began) for n in nodes}


def assert_no_failed_pull(loops: dict[str, Pulls], windows: dict[str, list[tuple[float, float]]]) -> None:
    for name, loop in loops.items():
        assert loop.attempts, name
        unauthorized = [a for a in loop.attempts if not a[2] and UNAUTHORIZED.search(a[3])]
        assert not unauthorized, f"{name}: 401: {unauthorized[0][3]}"
        own = [(s - 0.5, e + 0.5) for s, e in windows[name]]
        # Only "k3s is not running", inside the node's own restart, is the node being down: anything else failed.
        at_restart = [a for a in loop.attempts if not a[2] and "is not running" in a[3]
                      and any(a[0] < e and a[1] > s for s, e in own)]  # fmt: skip
        failed = [a for a in loop.attempts if not a[2] and a not in at_restart]
        print(f"\n{name}: {len(loop.attempts)} pulls, {len(failed)} failed, {len(at_restart)} at its own restart")
        assert not failed, f"{name}: failed pull: {failed[0][3]}"
        # Meanwhile the cluster still pulled: another node's pull succeeded within 2 s of it.
        others = [a for other, lp in loops.items() if other != name for a in lp.attempts if a[2]]
        for attempt in at_restart:
            assert any(o[1] > attempt[0] - 2 and o[0] < attempt[1] + 2 for o in others), (name, attempt)


def assert_rolled(windows: dict[str, list[tuple[float, float]]]) -> None:
    """One restart per node, the agent's only after the server's k3s was started again."""
    assert len(windows["server"]) == 1 and len(windows["agent-1"]) == 1, windows
    assert windows["server"][0][1] < windows["agent-1"][0][0], windows


def test_fresh_up_pulls_through_each_nodes_own_trust_file(stack: Stack) -> None:
    result = stack.apply()
    assert result.ok, result.error
    for name in ("k3s-trust-back", "k3s-agent-1-preflight", "k3s-agent-1-file", "k3s-agent-1-back",
                 "verify-check", "verify-agent-1-pull"):  # fmt: skip
        assert [e.ok for e in result.ran(name)] == [True], name
    c = stack.clients
    c.push(c.make_image("nodes"), IMAGE, c.authfile("nodes-push", stack.exports["dockerConfigJson"]))
    for node in stack.nodes():
        mode = node.clients.sh(f"stat -c '%U:%G %a' {REGISTRIES_YAML}").stdout.strip()
        assert mode == "root:root 600", (node.name, mode)
        assert loaded_matches_file(node), node.name
        pulled = node.clients.k3s_pull(IMAGE, check=False)
        assert pulled.returncode == 0, (node.name, pulled.stdout + pulled.stderr)
    agent = stack.nodes()[1].clients
    assert "verify-probe" in agent.sh("k3s ctr images ls -q").stdout  # the deploy check's pull on the agent


def test_a_trust_file_change_rolls_across_the_nodes_without_a_failed_pull(stack: Stack) -> None:
    assert stack.cluster is not None
    for node in stack.nodes():
        node.clients.sh(f"cp {REGISTRY_CA_FILE} {SECOND_CA_FILE}")
    result, loops, windows = run_with_pulls(stack, registryCaFile=SECOND_CA_FILE)
    assert result.ok, result.error
    assert_no_failed_pull(loops, windows)
    assert_rolled(windows)
    for node in stack.nodes():
        assert loaded_matches_file(node) and SECOND_CA_FILE in node.clients.sh(f"cat {REGISTRIES_YAML}").stdout


def test_a_rotation_hands_over_on_every_node_without_a_failed_pull(stack: Stack) -> None:
    old = (stack.exports["pullUsername"], stack.exports["pullPassword"])
    result, loops, windows = run_with_pulls(stack, credentialRotation="2")
    assert result.ok, result.error
    assert_no_failed_pull(loops, windows)
    assert_rolled(windows)
    # The site refused the old password only once every node was back with the new one.
    settle = [e for e in result.ran("caddy-site-file") if e.phase != "delete"][0]
    for back in ("k3s-trust-back", "k3s-agent-1-back"):
        assert result.ran(back)[0].ended <= settle.started, back
    assert stack.clients.http("/v2/", *old).status == 401
    for node in stack.nodes():
        assert loaded_matches_file(node), node.name
        assert stack.exports["pullPassword"] in node.clients.sh(f"cat {REGISTRIES_YAML}").stdout


def test_a_node_that_does_not_come_back_stops_the_update_naming_it_and_the_server_keeps_pulling(stack: Stack) -> None:
    server, agent = stack.nodes()
    dropin = "/etc/systemd/system/k3s-agent.service.d/e2e-broken.conf"
    agent.clients.sh(
        f"mkdir -p {dropin.rsplit('/', 1)[0]} && printf '[Service]\\nExecStartPre=/bin/false\\n' > {dropin} && "
        "systemctl daemon-reload"
    )
    try:
        result = stack.apply(registryCaFile=REGISTRY_CA_FILE)
        assert not result.ok
        assert [e.name for e in result.executions if not e.ok] == ["k3s-agent-1-restart"], result.executions
        assert "k3s-agent-1-restart" in result.error and "k3s-agent.service" in result.error
        assert not result.ran("caddy-site-file") and not result.ran("verify-check")
        assert loaded_matches_file(server) and REGISTRY_CA_FILE in server.clients.sh(f"cat {REGISTRIES_YAML}").stdout
        pulled = server.clients.k3s_pull(IMAGE, check=False)
        assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    finally:
        agent.clients.sh(f"rm -f {dropin} && systemctl daemon-reload && systemctl restart k3s-agent.service")
    result = stack.apply()
    assert result.ok, result.error
    assert loaded_matches_file(agent) and agent.clients.k3s_pull(IMAGE, check=False).returncode == 0


def test_an_unreachable_node_fails_the_update_naming_it_before_any_node_changes(stack: Stack) -> None:
    assert stack.cluster is not None
    before = {n.name: (n.clients.sha256(REGISTRIES_YAML), n.clients.starts()) for n in stack.nodes()}
    # Pinned (any key): nothing answers there, so the dial itself fails, in the node's preflight.
    ghost = {"name": "ghost", "address": "127.0.0.1", "sshPort": free_port(), "hostKey": stack.cluster.agent.host_key()}
    result = stack.apply(nodes=[stack.cluster.node(), ghost], registryCaFile=SECOND_CA_FILE)
    assert not result.ok
    assert "ghost" in result.error and "k3s-ghost-preflight" in result.text
    assert [e.name for e in result.executions if not e.ok] == ["k3s-ghost-preflight"]
    assert not [e.name for e in result.executions if not e.name.endswith("-preflight")], result.executions
    assert {n.name: (n.clients.sha256(REGISTRIES_YAML), n.clients.starts()) for n in stack.nodes()} == before
    result = stack.apply(nodes=[stack.cluster.node()])
    assert result.ok, result.error


def test_adding_a_node_changes_that_node_only(stack: Stack) -> None:
    assert stack.cluster is not None
    server, agent = stack.nodes()
    result = stack.apply(nodes=[])
    assert result.ok, result.error
    assert stack.host.domain not in agent.clients.sh(f"cat {REGISTRIES_YAML} 2>/dev/null || true").stdout
    before = (server.clients.sha256(REGISTRIES_YAML), server.clients.starts(), len(agent.clients.starts()))
    result = stack.apply(nodes=[stack.cluster.node()])
    assert result.ok, result.error
    # Providers aside (the dynamic provider takes the project's config: any setting changed updates it, on no host).
    types = {name: entry["type"] for name, entry in stack.stack.resources().items()}
    changed = {n for n in result.changed() if not types.get(n, "").startswith("pulumi:providers:")}
    assert changed <= AGENT_STEPS | {"k3s-trust-back"}, result.changed()
    assert {"k3s-agent-1-file", "k3s-agent-1-restart"} <= changed
    assert (server.clients.sha256(REGISTRIES_YAML), server.clients.starts()) == before[:2]
    assert len(agent.clients.starts()) == before[2] + 1 and loaded_matches_file(agent)
    assert agent.clients.k3s_pull(IMAGE, check=False).returncode == 0


def test_destroy_removes_the_entry_from_every_node(stack: Stack) -> None:
    result = stack.destroy()
    assert result.ok, result.error
    for node in stack.nodes():
        text = node.clients.sh(f"cat {REGISTRIES_YAML} 2>/dev/null || true").stdout
        assert stack.host.domain not in text, node.name


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
