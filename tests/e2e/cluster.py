"""Two test hosts on one Docker network: the registry's server (the session's test host, running the k3s server
stand-in) and an agent host running the `k3s-agent` stand-in, which resolves the registry's domain to the server."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from tests.e2e.clients import REGISTRY_CA_FILE
from tests.e2e.testhost import TestHost, docker, start_host


@dataclass
class Cluster:
    server: TestHost
    agent: TestHost
    link: Link
    """The network between them; the agent resolves the registry's domain to link.server_address."""

    def node(self, name: str = "agent-1") -> dict[str, Any]:
        """The agent as an entry of the `nodes` setting: reached like the server, on its own SSH port."""
        return {"name": name, "address": self.agent.ssh_host, "sshPort": self.agent.ssh_port,
                "hostKey": self.agent.host_key()}  # fmt: skip

    def trust_server_ca(self) -> None:
        """The agent's containerd trusts what the server's k3s trusts (registryCaFile: Pebble's current roots)."""
        self.agent.exec(
            f"install -d -m 0755 /etc/rancher/k3s && cat > {REGISTRY_CA_FILE}", input=self.server.pebble_root().encode()
        )

    def remove(self) -> None:
        self.agent.remove()
        self.link.remove(self.server)


@dataclass
class Link:
    """A Docker network between the session's test host and another one, each with a fixed address on it."""

    network: str
    server_address: str
    other_address: str

    def remove(self, server: TestHost) -> None:
        docker("network", "disconnect", "-f", self.network, server.name, check=False)
        docker("network", "rm", self.network, check=False)


def link(server: TestHost) -> Link:
    """Create `<server>-net` (10.233.X.0/24, X from its name; a stale one is replaced) with the server on it; the other
    host joins at other_address once started. Both keep their default network (the egress guard's uplink): traffic
    between them stays on this network."""
    network = f"{server.name}-net"
    octet = int(hashlib.sha256(network.encode()).hexdigest(), 16) % 250 + 1
    made = Link(network, f"10.233.{octet}.2", f"10.233.{octet}.3")
    made.remove(server)
    docker("network", "create", "--subnet", f"10.233.{octet}.0/24", network)
    docker("network", "connect", "--ip", made.server_address, network, server.name)
    return made


def start_cluster(server: TestHost, agent_name: str) -> Cluster:
    """Link the server and start the agent host on that network, logging in with the server's key, resolving the
    registry's domain to the server, its k3s unit swapped for k3s-agent."""
    docker("rm", "-f", "-v", agent_name, check=False)
    net = link(server)
    agent = start_host(
        agent_name, server.domain, key_dir=server.private_key_path.parent, domain_address=net.server_address
    )
    docker("network", "connect", "--ip", net.other_address, net.network, agent.name)
    agent.exec(
        "systemctl disable --now k3s.service && rm -f /var/lib/k3s-standin/starts.log && "
        "systemctl enable --now k3s-agent.service && systemctl is-active k3s-agent.service"
    )
    return Cluster(server, agent, net)
