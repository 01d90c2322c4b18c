"""k3s's registries.yaml trusting the registry with the pull-only credential, and the k3s restart it needs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command

from components.host import Host, Remote, public_digest
from providers.host_state import HostState
from renderers import k3s_trust as steps
from renderers.registries_yaml import registries_entries, render_registries_owned

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
    rolling: bool = False
    """Other nodes restart after this one: add `{name}-back`, which waits until k3s is back and pulling."""


@dataclass(frozen=True)
class TrustSteps:
    """The steps that switch one node: its file, its restart and (rolling) the check that it is back and pulling."""

    file: command.remote.Command
    restart: command.remote.Command
    content_sha256: pulumi.Output[str]


def trust_steps(
    remote: Remote,
    name: str,
    parent: pulumi.Resource,
    *,
    registry: str,
    username: str,
    password: pulumi.Input[str],
    path: str,
    service: str,
    ca_file: str | None,
    after: Sequence[pulumi.Resource],
    restart_after: Sequence[pulumi.Resource] = (),
    repairs: pulumi.Input[int] | None = None,
) -> TrustSteps:
    """`{name}-file` and `{name}-restart` (after `restart_after`: the previous node is back) on one node; both run
    again when `repairs` (the node's observer's count of drifted refreshes) rises."""
    content = pulumi.Output.from_input(password).apply(
        lambda pw: render_registries_owned(registry, username, pw, ca_file)
    )
    # The merge happens on the host: reading the file here would put other registries' secrets in state.
    written = remote.run(
        f"{name}-file",
        create=steps.trust_file_write(path),
        delete=steps.trust_file_remove(path, registry),
        stdin=content,
        repairs=repairs,
        parent=parent,
        opts=pulumi.ResourceOptions(depends_on=list(after)),
    )
    # Triggered by the digest of the program's own entries (known in preview, the same on every host); the
    # script restarts k3s only if the write step left a restart pending, i.e. the merged file really changed.
    content_sha256 = public_digest(written.stdin)
    restart = remote.run(
        f"{name}-restart",
        create=steps.k3s_restart(service),
        triggers=[content_sha256, service],
        # A repaired file leaves a restart pending; this step runs again to do it.
        repairs=repairs,
        parent=parent,
        opts=pulumi.ResourceOptions(depends_on=[written, *after, *restart_after]),
    )
    return TrustSteps(written, restart, content_sha256)


def back_check(
    remote: Remote, name: str, parent: pulumi.Resource, *, node: str, registry: str, service: str, done: TrustSteps
) -> command.remote.Command:
    """`{name}-back`: after the node's restart, wait until its k3s unit is active and its containerd reaches the
    registry with the trust file's credential (the next node restarts only then)."""
    return remote.run(
        f"{name}-back",
        create=steps.node_pull(node, service, registry, accept_missing=True),
        triggers=[done.content_sha256, service],
        parent=parent,
        opts=pulumi.ResourceOptions(depends_on=[done.restart]),
    )


class K3sTrust(pulumi.ComponentResource):
    """Owns its registry's entries in /etc/rancher/k3s/registries.yaml (root:root 0600; every other entry is kept)
    on the registry's own server and restarts k3s only when the file's content changed."""

    content_sha256: pulumi.Output[str]
    back: pulumi.Resource | None
    """The step after which this node is back and pulling (rolling), else None."""
    state: HostState
    """Reads the file's mode and owner and the program's entry (its digest) back on refresh."""

    def __init__(self, name: str, args: K3sTrustArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE, name, None, opts)
        remote = args.host.remote
        # What refresh reads back: the program's entry (a digest: it holds the password) and the file's mode and owner.
        # Every other entry is someone else's: changing it is no drift.
        entry = pulumi.Output.from_input(args.password).apply(
            lambda pw: json.dumps(
                registries_entries(args.registry, args.username, pw, args.ca_file)["configs"][args.registry], sort_keys=True
            )
        )
        self.state = args.host.observe(f"{name}-state", {
            "files": {args.path: {"mode": "0600", "owner": "root"}},
            "registries": {"path": args.path, "entry": args.registry, "sha256": public_digest(entry)},
        }, parent=self)
        done = trust_steps(
            remote, name, self, registry=args.registry, username=args.username, password=args.password,
            path=args.path, service=args.service, ca_file=args.ca_file, after=args.after, repairs=self.state.repairs,
        )
        self.content_sha256 = done.content_sha256
        self.back = (
            back_check(remote, name, self, node="server", registry=args.registry, service=args.service, done=done)
            if args.rolling else None
        )
        self.register_outputs({"content_sha256": self.content_sha256})
