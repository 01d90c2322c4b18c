"""The server: its SSH connection (to a verified host key), a preflight check, and the registry's data directory."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi.dynamic
import pulumi_command as command

from providers.host_state import HostState
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
    """Pinned host public key; None records the key the host offers on the first `up` (trust on first use)."""
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
    check_host_key: bool = True
    """False connects to whatever answers at `address`, unverified (disposable dev/test hosts only)."""
    backup_dir: str | None = None
    """Where backup archives go: preflight warns when it shares the data directory's filesystem."""


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
        key_name: str,
        check_host_key: bool = True,
    ) -> None:
        self.parent = parent
        self.ready: pulumi.Resource | None = None
        self.privileged_prefix = "" if user == "root" else "sudo -n "
        dial_key: pulumi.Input[str] | None = host_key
        if host_key is None and check_host_key:
            recorded = HostKey(key_name, address, port, pulumi.ResourceOptions(parent=parent))
            dial_key = recorded.key
            if pulumi.runtime.is_dry_run():
                recorded.fingerprint.apply(lambda fp: _show_key(parent, address, port, fp))
        self.dial_key = dial_key
        """The host key every connection checks (pinned, or recorded on first use); None when checks are off."""
        # Every command dials with this key (pulumi-command's fixed-key check): no secret goes to another host.
        self.connection = command.remote.ConnectionArgs(
            host=address,
            port=port,
            user=user,
            private_key=pulumi.Output.secret(private_key) if private_key is not None else None,
            host_key=dial_key,
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
        repairs: pulumi.Input[int] | None = None,
        parent: pulumi.Resource | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> command.remote.Command:
        """A root command on this machine. With stdin (always a secret) it logs nothing and its output is secret.

        `repairs` (an observer's count of drifted refreshes) heads the create and update scripts once it is above 0, so
        the command runs again (in the program's order) when its observer found drift; 0 leaves the scripts as they
        were before observers existed."""

        def root(script: pulumi.Input[str] | None, repairs: pulumi.Input[int] | None = None) -> pulumi.Input[str] | None:
            if script is None:
                return None
            return pulumi.Output.all(script, repairs).apply(
                lambda v: as_root(with_repairs(v[0], v[1]), self.privileged_prefix)
            )

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
            create=root(create, repairs),
            update=root(update, repairs),
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
    address: dict[str, Any]
    """Where the observers' probes log in (the key comes from the stack config, never from their state)."""
    privileged_prefix: str
    data_dir: pulumi.Output[str]
    preflight: pulumi.Output[str]

    def __init__(self, name: str, args: HostArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE, name, None, opts)
        self.remote = Remote(
            address=args.address, port=args.port, user=args.user, private_key=args.private_key,
            host_key=args.host_key, parent=self, key_name=f"{name}-key", check_host_key=args.check_host_key,
        )
        self.privileged_prefix = self.remote.privileged_prefix
        self.connection = self.remote.connection
        # The observers' probes check the same host key as every command (pinned or recorded on first use).
        self.address = {
            "address": args.address, "port": args.port, "user": args.user, "host_key": self.remote.dial_key or "",
        }
        check = self.run(
            f"{name}-preflight",
            create=preflight(
                args.require_k3s, args.k3s_service, registry_port=args.registry_port, container=args.container,
                data_dir=args.data_dir, domain=args.domain, caddyfile=args.caddyfile,
                registries_file=args.registries_file if args.require_k3s else None, replicas=args.replicas,
                backup_dir=args.backup_dir,
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
        repairs: pulumi.Input[int] | None = None,
        parent: pulumi.Resource | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> command.remote.Command:
        """A root command on this host. With stdin (always a secret) it logs nothing and its output is secret;
        `repairs` as in `Remote.run`."""
        return self.remote.run(
            name, create=create, update=update, delete=delete, stdin=stdin, triggers=triggers, repairs=repairs,
            parent=parent, opts=opts,
        )

    def observe(self, name: str, expect: pulumi.Input[dict[str, Any]], parent: pulumi.Resource) -> HostState:
        """An observer of what `parent` owns on this host: `pulumi refresh` reads it back (one SSH session) and records
        what differs from `expect` as drift; feed its `repairs` to the commands that would put it back."""
        return HostState(name, self.address, expect, pulumi.ResourceOptions(parent=parent))


def with_repairs(script: str, repairs: int | None) -> str:
    """`script`, headed by `# drift repair N` when an observer found drift N times: a changed script runs again."""
    return f"# drift repair {int(repairs)}\n{script}" if repairs else script


def public_digest(text: pulumi.Input[str | None]) -> pulumi.Output[str]:
    """sha256 of a (secret) text, as a plain value for `triggers`.

    A digest of text holding a generated password (or of bcrypt hashes) reveals neither. A secret inside `triggers`
    breaks the command provider whenever it is unknown, which is every preview of a new stack: the SDK sends
    secret(unknown) and the provider fails with `triggers[0]: malformed secret: missing value`."""
    return pulumi.Output.unsecret(pulumi.Output.from_input(text).apply(lambda t: sha256(t or "")))


def sha256(text: str) -> str:
    """Hex digest of a rendered file, used to trigger dependent steps only when content changes."""
    return hashlib.sha256(text.encode()).hexdigest()


def _show_key(resource: pulumi.Resource, address: str, port: int, fp: str | None) -> None:
    if fp:
        pulumi.log.info(
            f"SSH host key of {address}:{port}: {fp} (trust on first use: recorded by the first update; a different "
            "key later stops the update)", resource=resource,
        )


# --- the host key, trusted on first use --------------------------------------------------------------------------

KEY_PREFERENCE = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")


def fingerprint(key: str) -> str:
    """OpenSSH's SHA256 fingerprint of a public key line (`ssh-ed25519 AAAA...`)."""
    blob = base64.b64decode(key.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def offered_keys(keyscan_output: str) -> list[str]:
    """The `TYPE BASE64` key lines of `ssh-keyscan` output, most preferred type first."""
    keys = {" ".join(line.split()[1:3]) for line in keyscan_output.splitlines()
            if not line.startswith("#") and len(line.split()) >= 3 and line.split()[1] in KEY_PREFERENCE}
    return sorted(keys, key=lambda k: KEY_PREFERENCE.index(k.split()[0]))


def scan(address: str, port: int) -> list[str]:
    """The host keys the server at address:port offers (no login: ssh-keyscan only reads the key exchange)."""
    keyscan = shutil.which("ssh-keyscan")
    if keyscan is None:
        raise HostKeyError(f"ssh-keyscan is not installed here (package openssh-client): the SSH host key of {address}:{port} "
                           "cannot be read; install it, or pin the key with `pulumi config set sshHostKey 'ssh-ed25519 AAAA...'`")
    proc = subprocess.run([keyscan, "-T", "10", "-p", str(port), "-t", "ed25519,ecdsa,rsa", address],  # noqa: S603 (argv, no shell)
                          capture_output=True, text=True, timeout=60, check=False)
    keys = offered_keys(proc.stdout)
    if not keys:
        raise HostKeyError(f"could not read the SSH host key of {address}:{port} ({proc.stderr.strip()[-300:] or 'no answer'}); "
                           "make the host reachable, or pin its key with `pulumi config set sshHostKey 'ssh-ed25519 AAAA...'`")
    return keys


class HostKeyError(Exception):
    """The host key cannot be read or is not the recorded one."""


def verified_key(recorded: str | None, offered: Sequence[str], where: str) -> str:
    """The key to dial with: the recorded one if the host still offers it, the preferred offered one on first use."""
    if not recorded:
        return offered[0]
    if " ".join(recorded.split()[:2]) in offered:
        return recorded
    raise HostKeyError(
        f"the SSH host key of {where} changed: recorded {fingerprint(recorded)} ({recorded.split()[0]}), offered now "
        f"{', '.join(f'{fingerprint(k)} ({k.split()[0]})' for k in offered)}. Stopped before any command ran and before "
        "any secret was sent: this may not be your server. If the server was rebuilt, check its new key out of band "
        "(`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on its console) and pin it: "
        "`pulumi config set sshHostKey 'ssh-ed25519 AAAA...'`"
    )


class _HostKeyProvider(pulumi.dynamic.ResourceProvider):
    """Reads the host key at every check (previews too) and refuses a key other than the recorded one."""

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.CheckResult:
        where = f"{news['address']}:{int(news['port'])}"
        try:
            key = verified_key((olds or {}).get("key"), scan(str(news["address"]), int(news["port"])), where)
        except HostKeyError as exc:
            return pulumi.dynamic.CheckResult(news, [pulumi.dynamic.CheckFailure("key", str(exc))])
        return pulumi.dynamic.CheckResult({**news, "key": key, "fingerprint": fingerprint(key)}, [])

    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        return pulumi.dynamic.CreateResult(f"{props['address']}:{int(props['port'])}", props)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.DiffResult:
        changed = any(olds.get(k) != news.get(k) for k in ("address", "port", "key"))
        return pulumi.dynamic.DiffResult(changes=changed, replaces=[], delete_before_replace=False)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.UpdateResult:
        return pulumi.dynamic.UpdateResult(news)


class HostKey(pulumi.dynamic.Resource):
    """The server's SSH host key as first seen, kept in state; a later `up` against another key stops at its check."""

    key: pulumi.Output[str]
    fingerprint: pulumi.Output[str]

    def __init__(self, name: str, address: str, port: int, opts: pulumi.ResourceOptions) -> None:
        super().__init__(
            _HostKeyProvider(), name, {"address": address, "port": port, "key": None, "fingerprint": None}, opts
        )
