"""k3s's registries.yaml trusting the registry with the pull-only credential, and the k3s restart it needs."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components import render, scripts
from components.host import Host

TYPE = "registry:index:K3sTrust"


@dataclass(frozen=True)
class K3sTrustArgs:
    host: Host
    """The k3s node (the registry's own host)."""
    registry: str
    """Registry host name as images reference it."""
    username: str
    """Pull-only principal."""
    password: pulumi.Input[str]
    """Its password (secret)."""
    path: str
    """registries.yaml path."""
    service: str
    """k3s unit to restart: k3s or k3s-agent."""
    ca_file: str | None
    """CA file on the host for the registry's certificate, if not publicly trusted."""


class K3sTrust(pulumi.ComponentResource):
    """Owns /etc/rancher/k3s/registries.yaml (root:root 0600) and restarts k3s only when its content changes."""

    content_sha256: pulumi.Output[str]

    def __init__(self, name: str, args: K3sTrustArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE, name, None, opts)
        content = pulumi.Output.from_input(args.password).apply(
            lambda pw: render.render_registries_yaml(args.registry, args.username, pw, args.ca_file)
        )
        written = args.host.run(
            f"{name}-file",
            create=scripts.trust_file_write(args.path),
            delete=scripts.trust_file_remove(args.path),
            stdin=content,
            parent=self,
        )
        # The digest is taken from the written command's stdin, so the restart depends on the write.
        self.content_sha256 = pulumi.Output.secret(written.stdin.apply(lambda s: render.sha256(s or "")))
        args.host.run(
            f"{name}-restart",
            create=scripts.k3s_restart(args.service),
            triggers=[self.content_sha256, args.service],
            parent=self,
            opts=pulumi.ResourceOptions(depends_on=[written]),
        )
        self.register_outputs({"content_sha256": self.content_sha256})
