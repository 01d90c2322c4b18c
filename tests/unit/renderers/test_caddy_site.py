"""renderers/caddy_site.py: the site steps (takeover install, handover stdin, grace-period scripts)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from renderers import shipped
from renderers.caddy_site import (
    _with_stdin_part,
    caddy_site_install,
    caddy_site_settle,
    handover_stdin,
)
from tests.unit.support import DOMAIN, shellcheck


def test_grace_period_scripts_pass_shellcheck(tmp_path: Path) -> None:
    """The site step during a grace period (only sent after a rotation) and the expiry script it installs."""
    settle = caddy_site_settle(
        "/etc/caddy/Caddyfile", "/etc/caddy/sites/registry+1.caddy", "registry.example.test", "127.0.0.1:5000", 1_900_000_000
    )
    expire = settle.split("<<'REGISTRY_EXPIRE'\n", 1)[1].split("\nREGISTRY_EXPIRE\n", 1)[0]
    assert "grace period over" in expire
    shellcheck(tmp_path, {"settle-grace": settle, "expire": expire})


@pytest.mark.parametrize("part", [0, 1])
def test_the_handover_step_runs_its_script_on_one_part_of_its_stdin(part: int) -> None:


    stdin = handover_stdin("site A\nwith both\n", "site B\nsettled\n")
    out = subprocess.run(
        ["sh", "-c", _with_stdin_part(part, "cat\n")], input=stdin, capture_output=True, text=True, check=True
    ).stdout
    assert out == ("site A\nwith both\n" if part == 0 else "site B\nsettled\n")


def test_install_script_carries_the_takeover_tool_and_keeps_a_dated_backup() -> None:
    script = caddy_site_install("/etc/caddy/Caddyfile", "/etc/caddy/registry.caddy", DOMAIN, "127.0.0.1:5000")
    assert (shipped.text(shipped.CADDY_TAKEOVER).rstrip() + "\nEND_OF_CADDY_TAKEOVER") in script
    assert 'backup="$main.$(date -u +%Y%m%d-%H%M%S).bak"' in script
    assert script.count("caddy validate --adapter") == 1 and script.count("systemctl reload caddy") == 1
