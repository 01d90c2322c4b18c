"""The registry's Caddy site: one file the program owns, imported from the host's Caddyfile."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command

from components.host import Host, public_digest, sha256
from providers.host_state import HostState
from renderers import caddy_site as steps
from renderers.caddyfile import SiteSpec, render_caddyfile

TYPE = "registry:index:CaddySite"


@dataclass(frozen=True)
class CaddySiteArgs:
    host: Host
    """Where Caddy runs."""
    upstream: str
    """The first replica's loopback address: where upstream slots that do not exist yet point (the site reads the
    replicas' addresses from the slots, so it is the same for any number of replicas)."""
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
    hook_port: int | None = None
    """Push-to-deploy: the loopback port of the relay to Flux's Receiver (its files belong to FluxHook); None: no
    relay."""


class CaddySite(pulumi.ComponentResource):
    """Owns the site file and its import line, and takes over an inline site for the same domain in the main
    Caddyfile (kept as a dated backup); validates before it replaces, reloads gracefully.

    A rotation is a handover in two steps on the same file. `{name}-handover` runs first and only when the hashes
    change: the site accepts the new and the previous credential of each user (on a first update it is the step
    that takes the site over and makes it live). Whatever switches clients to the new passwords waits for it
    (`live`, `handover`). `{name}-file` runs once those are done (`finish`): the site without the previous hashes,
    now or, with a grace period, at its end (a host timer).
    """

    content_sha256: pulumi.Output[str]
    handover: command.remote.Command
    """The step that makes the site live; what depends on the site's credentials waits for it."""

    def __init__(self, name: str, args: CaddySiteArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE, name, None, opts)
        self._name, self._args = name, args
        previous = pulumi.Output.all(args.previous_push_hash, args.previous_pull_hash)
        handover_site = pulumi.Output.all(args.push_hash, args.pull_hash, previous).apply(
            lambda v: self._render(v[0], v[1], v[2][0] or "", v[2][1] or "")
        )
        generation = public_digest(
            pulumi.Output.all(args.push_hash, args.pull_hash, previous).apply(lambda v: "\n".join([v[0], v[1], *v[2]]))
        )
        grace = pulumi.Output.all(previous, args.rotated_at).apply(
            lambda v: args.grace_seconds > 0 and any(v[0]) and int(v[1] or 0) > 0
        )
        self._deadline = pulumi.Output.all(grace, args.rotated_at).apply(
            lambda v: int(v[1]) + args.grace_seconds if v[0] else 0
        )
        # What `{name}-file` installs: the site without the previous hashes (with a grace period, first the site
        # with both, GRACE_SEPARATOR, then the site without them).
        self._settled_site = pulumi.Output.all(args.push_hash, args.pull_hash, previous, grace).apply(
            lambda v: (
                self._render(v[0], v[1], v[2][0] or "", v[2][1] or "") + steps.GRACE_SEPARATOR + "\n" if v[3] else ""
            )
            + self._render(v[0], v[1], "", "")
        )
        # What refresh reads back: the site file (any site the steps may leave there) and the import line. Another
        # site in the main Caddyfile is not the program's: only its own line there is.
        digests = site_digests(handover_site, self._settled_site)
        self.state = args.host.observe(f"{name}-state", {
            "files": {args.site_file: {"sha256": digests, "mode": "0640", "owner": "root"}},
            "lines": {args.caddyfile: [f"import {args.site_file}"]},
        }, parent=self)
        self.handover = args.host.run(
            f"{name}-handover",
            # A rotation (new hashes: the trigger) replaces this step: the site accepting both generations.
            create=steps.caddy_site_handover(args.caddyfile, args.site_file, args.domain, args.upstream),
            # Any other change is no handover: the settled site goes live here, before any client changes, and a
            # site Caddy rejects stops the update before the trust file, k3s or the Flux secret is touched.
            update=self._deadline.apply(
                lambda d: steps.caddy_site_handover_settle(args.caddyfile, args.site_file, args.domain, args.upstream, d)
            ),
            # Drift repair: the settled site goes live again here, before any client's step (the usual order).
            repairs=self.state.repairs,
            stdin=pulumi.Output.secret(
                pulumi.Output.all(handover_site, self._settled_site).apply(lambda v: steps.handover_stdin(v[0], v[1]))
            ),
            triggers=[generation],
            parent=self,
        )
        # The site file and import line belong to `{name}-file` (it removes them); this step never deletes.
        self.content_sha256 = pulumi.Output.from_input("")

    state: HostState
    """Reads the site file and the import line back on refresh."""

    def _render(self, push_hash: str, pull_hash: str, previous_push: str, previous_pull: str) -> str:
        args = self._args
        return render_caddyfile(
            SiteSpec(
                domain=args.domain,
                acme_email=args.acme_email,
                push_user=args.push_user,
                push_hash=push_hash,
                pull_user=args.pull_user,
                pull_hash=pull_hash,
                allowlist=tuple(args.allowlist),
                acme_ca_url=args.acme_ca_url,
                acme_ca_root=args.acme_ca_root,
                previous_push_hash=previous_push,
                previous_pull_hash=previous_pull,
                hook_port=args.hook_port,
            )
        )

    def live(self, value: pulumi.Input[str]) -> pulumi.Output[str]:
        """`value` once the site accepts the current credentials: hand it to clients through this."""
        return pulumi.Output.all(self.handover.stdout, value).apply(lambda v: v[1])

    def finish(self, after: Sequence[pulumi.Resource]) -> None:
        """`{name}-file`: once every client in `after` has the new credentials, the site refuses the previous ones."""
        name, args = self._name, self._args
        deadline, site = self._deadline, self._settled_site
        install = args.host.run(
            f"{name}-file",
            create=deadline.apply(
                lambda d: steps.caddy_site_settle(args.caddyfile, args.site_file, args.domain, args.upstream, d)
            ),
            delete=steps.caddy_site_remove(args.caddyfile, args.site_file),
            stdin=pulumi.Output.secret(site),
            parent=self,
            opts=pulumi.ResourceOptions(depends_on=[self.handover, *after]),
        )
        self.content_sha256 = public_digest(install.stdin)
        self.register_outputs({"content_sha256": self.content_sha256})


def site_digests(handover: pulumi.Input[str], settled: pulumi.Input[str]) -> pulumi.Output[list[str]]:
    """sha256 of each site the steps may leave in the file: the handover site (both generations: a rotation whose
    `up` stopped after its first step; the next `up` finishes it), then the settled site, or with a grace period the
    site accepting both generations until the deadline and the one without the previous after it (last)."""
    return pulumi.Output.unsecret(pulumi.Output.all(handover, settled).apply(
        lambda v: [sha256(v[0].rstrip("\n") + "\n"), *(sha256(part) for part in v[1].split(steps.GRACE_SEPARATOR + "\n"))]
    ))
