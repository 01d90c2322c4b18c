"""A k3s node other than the registry's server: its SSH connection, its preflight, its trust file and its restart."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi

from components.host import Remote
from components.k3s_trust import back_check, trust_steps
from renderers.preflight import node_preflight

TYPE = "registry:index:K3sNode"


@dataclass(frozen=True)
class K3sNodeArgs:
    node: str
    """The node's short name (in every message about it)."""
    address: str
    """DNS name or IP of the node."""
    port: int
    """SSH port."""
    user: str
    """SSH login; anything but root goes through `sudo -n`."""
    private_key: pulumi.Input[str] | None
    """Secret private key; the ssh-agent is used when None."""
    host_key: str | None
    """Pinned host public key; None records the key the node offers on the first `up` (trust on first use)."""
    service: str
    """The node's k3s unit: k3s or k3s-agent."""
    path: str
    """The node's registries.yaml."""
    registry: str
    """Registry host name as images reference it."""
    check_host_key: bool = True
    """False connects to whatever answers at `address`, unverified (disposable dev/test hosts only)."""


@dataclass(frozen=True)
class NodeTrustArgs:
    username: str
    """Pull-only principal."""
    password: pulumi.Input[str]
    """Its password (secret)."""
    ca_file: str | None
    """CA file on the node for the registry's certificate, if not publicly trusted."""
    after: Sequence[pulumi.Resource]
    """The step that makes the site accepting the pull credential live."""
    restart_after: Sequence[pulumi.Resource]
    """The previous node's `-back` step: one node restarts at a time, each once the one before pulls again."""


class K3sNode(pulumi.ComponentResource):
    """Owns, on one more node of the cluster, its registry's entries in registries.yaml (root:root 0600; every other
    entry kept) and a restart of the node's own k3s unit when the file changed, followed by `{name}-back`: the unit is
    active and its containerd pulls with the new credential.

    Built in two steps: the preflight first (everything on every machine waits for it), then `trust`, once the site
    that accepts the credential exists.
    """

    node: str
    service: str
    remote: Remote
    preflight: pulumi.Resource
    content_sha256: pulumi.Output[str]
    back: pulumi.Resource

    def __init__(self, name: str, args: K3sNodeArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE, name, None, opts)
        self._name, self._args = name, args
        self.node, self.service = args.node, args.service
        self.remote = Remote(
            address=args.address, port=args.port, user=args.user, private_key=args.private_key,
            host_key=args.host_key, parent=self, key_name=f"{name}-key", check_host_key=args.check_host_key,
        )
        self.preflight = self.remote.run(
            f"{name}-preflight",
            create=node_preflight(args.node, args.service, registries_file=args.path, domain=args.registry),
        )
        self.remote.ready = self.preflight

    def trust(self, args: NodeTrustArgs) -> None:
        """`{name}-file`, `{name}-restart` and `{name}-back`."""
        node = self._args
        done = trust_steps(
            self.remote, self._name, self, registry=node.registry, username=args.username, password=args.password,
            path=node.path, service=node.service, ca_file=args.ca_file, after=args.after,
            restart_after=args.restart_after,
        )
        self.content_sha256 = done.content_sha256
        self.back = back_check(
            self.remote, self._name, self, node=node.node, registry=node.registry, service=node.service, done=done
        )
        self.register_outputs({"content_sha256": self.content_sha256})
