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
    """The registry's loopback address."""
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


class CaddySite(pulumi.ComponentResource):
    """Owns the site file and its import line, and takes over an inline site for the same domain in the main
    Caddyfile (kept as a dated backup); validates before it replaces, reloads gracefully."""

    content_sha256: pulumi.Output[str]
    install: pulumi.Resource
    """The step that makes the site live; what depends on the site's credentials waits for it."""

    def __init__(self, name: str, args: CaddySiteArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE, name, None, opts)
        site = pulumi.Output.all(args.upstream, args.push_hash, args.pull_hash).apply(
            lambda v: render.render_caddyfile(
                render.SiteSpec(
                    domain=args.domain,
                    acme_email=args.acme_email,
                    upstream=v[0],
                    push_user=args.push_user,
                    push_hash=v[1],
                    pull_user=args.pull_user,
                    pull_hash=v[2],
                    allowlist=tuple(args.allowlist),
                    acme_ca_url=args.acme_ca_url,
                    acme_ca_root=args.acme_ca_root,
                )
            )
        )
        install = args.host.run(
            f"{name}-file",
            create=scripts.caddy_site_install(args.caddyfile, args.site_file, args.domain),
            delete=scripts.caddy_site_remove(args.caddyfile, args.site_file),
            stdin=pulumi.Output.secret(site),
            parent=self,
        )
        self.install = install
        self.content_sha256 = install.stdin.apply(lambda s: render.sha256(s or ""))
        self.register_outputs({"content_sha256": self.content_sha256})
