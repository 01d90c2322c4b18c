"""The registry's Caddy site: one file the program owns, imported from the host's Caddyfile."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi

from components import render, scripts
from components.host import Host

TYPE = "registry:index:CaddySite"


@dataclass(frozen=True)
class CaddySiteArgs:
    host: Host
    """Where Caddy runs."""
    upstream: pulumi.Input[str]
    """The registry's loopback address (ties the site to the container)."""
    domain: str
    """Public name of the site."""
    acme_email: str
    """ACME account email."""
    push_user: str
    """Push principal."""
    push_hash: pulumi.Input[str]
    """bcrypt hash of the push password (secret)."""
    pull_user: str
    """Pull-only principal."""
    pull_hash: pulumi.Input[str]
    """bcrypt hash of the pull password (secret)."""
    allowlist: Sequence[str]
    """CIDRs allowed in; everyone when empty."""
    acme_ca_url: str | None
    """ACME directory, or Caddy's default."""
    acme_ca_root: str | None
    """Root of the ACME server's TLS certificate, on the host."""
    caddyfile: str
    """The host's main Caddyfile."""
    site_file: str
    """The file this component owns."""
    previous_push_hash: pulumi.Input[str] = ""
    """The push hash before the last rotation (secret, empty if none): accepted until the handover ends."""
    previous_pull_hash: pulumi.Input[str] = ""
    """The same for the pull user."""
    rotated_at: pulumi.Input[int] = 0
    """Unix time of the last rotation; the grace period counts from it."""
    grace_seconds: int = 0
    """How long the previous hashes stay accepted after the rotation; 0 ends the handover in the same `up`."""


class CaddySite(pulumi.ComponentResource):
    """Owns the site file and its import line; validates before it replaces, reloads gracefully.

    A rotation is a handover in two steps on the same file. `{name}-handover` runs first and only when the hashes
    change: the site accepts the new and the previous credential of each user. Whatever switches clients to the
    new passwords waits for it (`live`). `{name}-file` runs once those are done (`finish`): the site without the
    previous hashes, now or, with a grace period, at its end (a host timer).
    """

    content_sha256: pulumi.Output[str]

    def __init__(self, name: str, args: CaddySiteArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE, name, None, opts)
        self._name, self._args = name, args
        previous = pulumi.Output.all(args.previous_push_hash, args.previous_pull_hash)
        handover_site = pulumi.Output.all(args.upstream, args.push_hash, args.pull_hash, previous).apply(
            lambda v: self._render(v[0], v[1], v[2], v[3][0] or "", v[3][1] or "")
        )
        generation = pulumi.Output.all(args.push_hash, args.pull_hash, previous).apply(
            lambda v: render.sha256("\n".join([v[0], v[1], *v[2]]))
        )
        self.handover = args.host.run(
            f"{name}-handover",
            create=scripts.caddy_site_install(args.caddyfile, args.site_file),
            # A change that is not a rotation must not bring the previous credentials back: `{name}-file` installs it.
            update=scripts.caddy_site_handover_kept(),
            stdin=pulumi.Output.secret(handover_site),
            triggers=[pulumi.Output.secret(generation)],
            parent=self,
        )
        # The site file and import line belong to `{name}-file` (it removes them); this step never deletes.
        self.content_sha256 = pulumi.Output.from_input("")

    def _render(self, upstream: str, push_hash: str, pull_hash: str, previous_push: str, previous_pull: str) -> str:
        args = self._args
        return render.render_caddyfile(
            render.SiteSpec(
                domain=args.domain,
                acme_email=args.acme_email,
                upstream=upstream,
                push_user=args.push_user,
                push_hash=push_hash,
                pull_user=args.pull_user,
                pull_hash=pull_hash,
                allowlist=tuple(args.allowlist),
                acme_ca_url=args.acme_ca_url,
                acme_ca_root=args.acme_ca_root,
                previous_push_hash=previous_push,
                previous_pull_hash=previous_pull,
            )
        )

    def live(self, value: pulumi.Input[str]) -> pulumi.Output[str]:
        """`value` once the site accepts the current credentials: hand it to clients through this."""
        return pulumi.Output.all(self.handover.stdout, value).apply(lambda v: v[1])

    def finish(self, after: Sequence[pulumi.Resource]) -> None:
        """`{name}-file`: once every client in `after` has the new credentials, the site refuses the previous ones."""
        name, args = self._name, self._args
        previous = pulumi.Output.all(args.previous_push_hash, args.previous_pull_hash)
        grace = pulumi.Output.all(previous, args.rotated_at).apply(
            lambda v: args.grace_seconds > 0 and any(v[0]) and int(v[1] or 0) > 0
        )
        deadline = pulumi.Output.all(grace, args.rotated_at).apply(
            lambda v: int(v[1]) + args.grace_seconds if v[0] else 0
        )
        site = pulumi.Output.all(args.upstream, args.push_hash, args.pull_hash, previous, grace).apply(
            lambda v: (
                self._render(v[0], v[1], v[2], v[3][0] or "", v[3][1] or "") + scripts.GRACE_SEPARATOR + "\n"
                if v[4]
                else ""
            )
            + self._render(v[0], v[1], v[2], "", "")
        )
        install = args.host.run(
            f"{name}-file",
            create=deadline.apply(lambda d: scripts.caddy_site_settle(args.caddyfile, args.site_file, d)),
            delete=scripts.caddy_site_remove(args.caddyfile, args.site_file),
            stdin=pulumi.Output.secret(site),
            parent=self,
            opts=pulumi.ResourceOptions(depends_on=[self.handover, *after]),
        )
        self.content_sha256 = install.stdin.apply(lambda s: render.sha256(s or ""))
        self.register_outputs({"content_sha256": self.content_sha256})
