"""k3s's registries.yaml trusting the registry with the pull-only credential, and the k3s restart it needs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi

from components.host import Host, public_digest
from renderers import k3s_trust as steps
from renderers.registries_yaml import render_registries_owned

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
    after: Sequence[pulumi.Resource] = ()
    """The step that makes the site accepting the pull credential live: nothing here changes before it succeeded."""


class K3sTrust(pulumi.ComponentResource):
    """Owns its registry's entries in /etc/rancher/k3s/registries.yaml (root:root 0600; every other entry is kept)
    and restarts k3s only when the file's content changed."""

    content_sha256: pulumi.Output[str]

    def __init__(self, name: str, args: K3sTrustArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE, name, None, opts)
        content = pulumi.Output.from_input(args.password).apply(
            lambda pw: render_registries_owned(args.registry, args.username, pw, args.ca_file)
        )
        # The merge happens on the host: reading the file here would put other registries' secrets in state.
        written = args.host.run(
            f"{name}-file",
            create=steps.trust_file_write(args.path),
            delete=steps.trust_file_remove(args.path, args.registry),
            stdin=content,
            parent=self,
            opts=pulumi.ResourceOptions(depends_on=list(args.after)),
        )
        # Triggered by the digest of the program's own entries (known in preview, the same on every host); the
        # script restarts k3s only if the write step left a restart pending, i.e. the merged file really changed.
        self.content_sha256 = public_digest(written.stdin)
        args.host.run(
            f"{name}-restart",
            create=steps.k3s_restart(args.service),
            triggers=[self.content_sha256, args.service],
            parent=self,
            opts=pulumi.ResourceOptions(depends_on=[written, *args.after]),
        )
        self.register_outputs({"content_sha256": self.content_sha256})
