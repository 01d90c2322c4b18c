"""components/caddy_site.py under Pulumi's mocks: the site file is the rendered site, its hashes match the passwords."""

from __future__ import annotations

import bcrypt

from renderers.caddyfile import SiteSpec, render_caddyfile
from tests.harness import ProgramRun
from tests.unit.support import (
    DOMAIN,
    generated,
    password,
)


def test_caddy_site_file_is_the_rendered_site(typical: ProgramRun) -> None:
    push, pull = generated(typical, "credentials-push"), generated(typical, "credentials-pull")
    expected = render_caddyfile(
        SiteSpec(
            domain=DOMAIN, acme_email="ops@example.com",
            push_user="robot_user", push_hash=push["bcryptHash"], pull_user="k3s_pull", pull_hash=pull["bcryptHash"],
            allowlist=("198.51.100.0/24", "2001:db8::/32"), hook_port=9393,
        )
    )
    assert typical.named("caddy-site-file").value("stdin") == expected


def test_caddy_site_hashes_verify_against_the_generated_passwords(typical: ProgramRun) -> None:
    site = typical.named("caddy-site-file").value("stdin")
    hashes = dict(line.split() for line in site.split("basic_auth {\n")[1].split("\t\t}")[0].strip().splitlines())
    push_pw, pull_pw = password(typical, "credentials-push"), password(typical, "credentials-pull")
    assert bcrypt.checkpw(push_pw.encode(), hashes["robot_user"].encode())
    assert bcrypt.checkpw(pull_pw.encode(), hashes["k3s_pull"].encode())
    assert not bcrypt.checkpw(pull_pw.encode(), hashes["robot_user"].encode())
