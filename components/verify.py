"""The deploy check: the live registry, through its public name, as CI, k3s and an anonymous client see it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi

from components.host import Host, Remote
from renderers.k3s_trust import node_pull
from renderers.verify_script import VerifySpec, render_verify_script, verify_stdin

TYPE = "registry:index:Verify"


@dataclass(frozen=True)
class VerifyNode:
    """A k3s node other than the server, whose containerd pulls the probe image too."""

    name: str
    """The node's short name."""
    remote: Remote
    """Its SSH connection."""
    service: str
    """Its k3s unit."""
    trigger: pulumi.Input[str]
    """Its trust file's content hash: the node's pull runs again when it changes."""
    after: pulumi.Resource
    """The node's last step (its back check)."""


@dataclass(frozen=True)
class VerifyArgs:
    host: Host
    """Where the check runs (it resolves the public name like any client)."""
    domain: str
    """Public name of the registry."""
    push_user: str
    """Push principal."""
    push_password: pulumi.Input[str]
    """Its password (secret)."""
    pull_user: str
    """Pull-only principal."""
    pull_password: pulumi.Input[str]
    """Its password (secret)."""
    ca_file: str | None
    """CA file on the host for the registry's certificate; the system trust store when None."""
    k3s: bool
    """Pull a probe image through k3s's containerd with the trust file's credential."""
    allowlist: bool
    """Whether an allowlist guards the site (for a precise hint on a 403)."""
    triggers: Sequence[pulumi.Input[object]]
    """What the check re-runs for: the site's and trust file's content hashes, the registry's settings."""
    after: Sequence[pulumi.Resource]
    """Steps that must be done first with no data to show it (the k3s restart)."""
    nodes: Sequence[VerifyNode] = ()
    """The cluster's other nodes: each pulls the probe through its own containerd once the check pushed it."""


class Verify(pulumi.ComponentResource):
    """Owns the post-deploy check; it changes nothing on the host but the tiny probe image in the registry.

    A failed check fails the update with a message naming the check and the status got and expected.
    """

    report: pulumi.Output[str]

    def __init__(self, name: str, args: VerifyArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE, name, None, opts)
        script = render_verify_script(
            VerifySpec(domain=args.domain, ca_file=args.ca_file, k3s=args.k3s, allowlist=args.allowlist)
        )
        credentials = pulumi.Output.all(args.push_password, args.pull_password).apply(
            lambda pw: verify_stdin(args.push_user, pw[0], args.pull_user, pw[1])
        )
        check = args.host.run(
            f"{name}-check",
            create=script,
            stdin=pulumi.Output.secret(credentials),
            # Re-run after every change that matters; a no-op `pulumi up` runs nothing.
            triggers=list(args.triggers),
            parent=self,
            opts=pulumi.ResourceOptions(depends_on=list(args.after)),
        )
        for node in args.nodes:
            node.remote.run(
                f"{name}-{node.name}-pull",
                create=node_pull(node.name, node.service, args.domain, accept_missing=False),
                triggers=[*args.triggers, node.trigger],
                parent=self,
                opts=pulumi.ResourceOptions(depends_on=[check, node.after]),
            )
        self.report = check.stdout
        self.register_outputs({"report": self.report})
