"""The server: its SSH connection, a preflight check, and the registry's data directory (never removed)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_command as command

from renderers.data_dir import data_dir
from renderers.preflight import preflight, takeover_notice
from renderers.shell import as_root

TYPE = "registry:index:Host"


@dataclass(frozen=True)
class HostArgs:
    address: str
    """DNS name or IP of the server."""
    port: int
    """SSH port."""
    user: str
    """SSH login; anything but root goes through `sudo -n`."""
    private_key: pulumi.Input[str] | None
    """Secret private key; the ssh-agent is used when None."""
    host_key: str | None
    """Pinned host public key, or None to skip the check."""
    data_dir: str
    """Registry data directory to create."""
    require_k3s: bool
    """Whether preflight insists on the k3s unit."""
    k3s_service: str
    """k3s unit name checked by preflight."""
    registry_port: int
    """The registry's port on 127.0.0.1: preflight insists it is free or held by the registry container."""
    container: str
    """Name of the registry container (preflight reports one made by hand and warns about every other publishing a port)."""
    domain: str
    """The registry's domain (preflight reports an inline Caddy site for it)."""
    caddyfile: str
    """The main Caddyfile."""
    registries_file: str
    """k3s's registries.yaml (preflight reports an existing one when k3s trust is on)."""
    replicas: int = 1
    """Registry replicas: preflight checks each one's port."""
    after: Sequence[pulumi.Resource] = ()
    """Checks that must pass before anything here runs (every other node's preflight: no change anywhere before)."""


class Remote:
    """One machine reached over SSH: its connection, and root commands on it that wait for its `ready` step."""

    def __init__(
        self,
        *,
        address: str,
        port: int,
        user: str,
        private_key: pulumi.Input[str] | None,
        host_key: str | None,
        parent: pulumi.Resource,
    ) -> None:
        self.parent = parent
        self.ready: pulumi.Resource | None = None
        self.privileged_prefix = "" if user == "root" else "sudo -n "
        self.connection = command.remote.ConnectionArgs(
            host=address,
            port=port,
            user=user,
            private_key=pulumi.Output.secret(private_key) if private_key is not None else None,
            host_key=host_key,
            dial_error_limit=3,
        )

    def run(
        self,
        name: str,
        *,
        create: pulumi.Input[str],
        update: pulumi.Input[str] | None = None,
        delete: pulumi.Input[str] | None = None,
        stdin: pulumi.Input[str] | None = None,
        triggers: pulumi.Input[list[Any]] | None = None,
        parent: pulumi.Resource | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> command.remote.Command:
        """A root command on this machine. With stdin (always a secret) it logs nothing and its output is secret."""

        def root(script: pulumi.Input[str] | None) -> pulumi.Input[str] | None:
            if script is None:
                return None
            return pulumi.Output.from_input(script).apply(lambda s: as_root(s, self.privileged_prefix))

        secret = stdin is not None
        secret_stdin = pulumi.Output.secret(stdin) if stdin is not None else None
        options = pulumi.ResourceOptions(
            parent=parent or self.parent,
            additional_secret_outputs=["stdout", "stderr", "stdin"] if secret else None,
            depends_on=[self.ready] if self.ready is not None else None,
        )
        return command.remote.Command(
            name,
            connection=self.connection,
            create=root(create),
            update=root(update),
            delete=root(delete),
            stdin=secret_stdin,
            triggers=triggers,
            logging=command.remote.Logging.NONE if secret else command.remote.Logging.STDOUT_AND_STDERR,
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions.merge(options, opts),
        )


class Host(pulumi.ComponentResource):
    """Owns the SSH connection, the preflight check and the data directory on the server."""

    connection: command.remote.ConnectionArgs
    privileged_prefix: str
    data_dir: pulumi.Output[str]
    preflight: pulumi.Output[str]

    def __init__(self, name: str, args: HostArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE, name, None, opts)
        self.remote = Remote(
            address=args.address, port=args.port, user=args.user, private_key=args.private_key,
            host_key=args.host_key, parent=self,
        )
        self.privileged_prefix = self.remote.privileged_prefix
        self.connection = self.remote.connection
        check = self.run(
            f"{name}-preflight",
            create=preflight(
                args.require_k3s, args.k3s_service, registry_port=args.registry_port, container=args.container,
                data_dir=args.data_dir, domain=args.domain, caddyfile=args.caddyfile,
                registries_file=args.registries_file if args.require_k3s else None, replicas=args.replicas,
            ),
            opts=pulumi.ResourceOptions(depends_on=list(args.after)) if args.after else None,
        )
        directory = self.run(
            f"{name}-data-dir",
            create=data_dir(args.data_dir),
            opts=pulumi.ResourceOptions(depends_on=[check]),
        )
        if pulumi.runtime.is_dry_run():
            notice = takeover_notice(
                args.container, args.domain, args.caddyfile, args.registries_file if args.require_k3s else None
            )
            pulumi.log.info(notice, resource=self)
        # Every later command on this host waits for the preflight check and the data directory.
        self.remote.ready = directory
        # Outputs derived from the commands carry them as dependencies to every consumer.
        self.preflight = check.stdout
        self.data_dir = directory.stdout.apply(lambda _: args.data_dir)
        self.register_outputs({"data_dir": self.data_dir, "preflight": self.preflight})

    def run(
        self,
        name: str,
        *,
        create: pulumi.Input[str],
        update: pulumi.Input[str] | None = None,
        delete: pulumi.Input[str] | None = None,
        stdin: pulumi.Input[str] | None = None,
        triggers: pulumi.Input[list[Any]] | None = None,
        parent: pulumi.Resource | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> command.remote.Command:
        """A root command on this host. With stdin (always a secret) it logs nothing and its output is secret."""
        return self.remote.run(
            name, create=create, update=update, delete=delete, stdin=stdin, triggers=triggers, parent=parent, opts=opts
        )


def public_digest(text: pulumi.Input[str | None]) -> pulumi.Output[str]:
    """sha256 of a (secret) text, as a plain value for `triggers`.

    A digest of text holding a generated password (or of bcrypt hashes) reveals neither. A secret inside `triggers`
    breaks the command provider whenever it is unknown, which is every preview of a new stack: the SDK sends
    secret(unknown) and the provider fails with `triggers[0]: malformed secret: missing value`."""
    return pulumi.Output.unsecret(pulumi.Output.from_input(text).apply(lambda t: sha256(t or "")))


def sha256(text: str) -> str:
    """Hex digest of a rendered file, used to trigger dependent steps only when content changes."""
    return hashlib.sha256(text.encode()).hexdigest()
