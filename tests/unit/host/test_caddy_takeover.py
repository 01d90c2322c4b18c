"""host/steps/caddy-site/caddy_takeover.py: an inline site replaced by the import, checked by a real `caddy validate`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.unit.support import DOMAIN, caddy_takeover, tool

TakeoverError = caddy_takeover.TakeoverError


take_over = caddy_takeover.take_over


IMPORT = "import /etc/caddy/registry.caddy"


BACKUP = "/etc/caddy/Caddyfile.20260101-120000.bak"


HASH = "$2a$14$" + "a" * 53


OLD_STYLE = f"""{{
	email ops@example.com
}}

(common) {{
	log
}}

other.example.com {{
	import common
	respond "{DOMAIN} # is only a string here {{"
}}

{DOMAIN} {{
	encode gzip
	tls ops@example.com
	@v2 path_regexp ^/v2/.*
	basicauth @v2 {{
		robot_user {HASH}
	}}
	reverse_proxy localhost:5000
}}
"""


NEW_STYLE = f"""https://{DOMAIN}:443 {{
	encode
	tls ops@example.com
	basic_auth /v2/* {{
		robot_user {HASH}
	}}
	reverse_proxy localhost:5000
}}
"""


@pytest.mark.parametrize("caddyfile", [OLD_STYLE, NEW_STYLE], ids=["basicauth-path_regexp", "basic_auth"])
def test_the_inline_site_is_replaced_by_the_import_and_everything_else_stays(caddyfile: str) -> None:
    new, taken = take_over(caddyfile, DOMAIN, IMPORT, BACKUP)
    assert len(taken) == 1 and taken[0].startswith("lines ")
    assert "robot_user" not in new and "reverse_proxy" not in new
    assert new.rstrip().endswith(IMPORT) and BACKUP in new
    kept = caddyfile.split(f"{DOMAIN} {{\n\tencode")[0] if caddyfile is OLD_STYLE else ""
    assert new.startswith(kept)
    assert take_over(new, DOMAIN, IMPORT, BACKUP) == (new, [])  # a second run changes nothing


def test_a_site_shared_with_other_addresses_keeps_them() -> None:
    new, taken = take_over(f"www.example.com, {DOMAIN} {{\n\trespond hi\n}}\n", DOMAIN, IMPORT, BACKUP)
    assert "www.example.com {\n\trespond hi\n}" in new and f", {DOMAIN}" not in new
    assert "removed from the site" in taken[0]


@pytest.mark.parametrize(
    "address", [f"http://{DOMAIN}", f"{DOMAIN}:8443", f"sub.{DOMAIN}", f"{DOMAIN}/v2/*", f"({DOMAIN})"]
)
def test_other_addresses_are_not_taken_over(address: str) -> None:
    text = f"{address} {{\n\trespond hi\n}}\n"
    new, taken = take_over(text, DOMAIN, IMPORT, BACKUP)
    assert taken == [] and new.startswith(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"{DOMAIN}\nreverse_proxy localhost:5000\n", "without braces"),
        (f"a.example.com,\n{DOMAIN} {{\n}}\n", "over several lines"),
        (f"{DOMAIN} {{\n\trespond hi\n", "unbalanced braces"),
    ],
)

def test_shapes_it_cannot_edit_safely_are_refused(text: str, message: str) -> None:
    with pytest.raises(TakeoverError, match=message):
        take_over(text, DOMAIN, IMPORT, BACKUP)


def test_the_taken_over_caddyfile_validates_with_the_programs_site(tmp_path: Path) -> None:
    site = tmp_path / "registry.caddy"
    site.write_text(f"{DOMAIN} {{\n\trespond ok\n}}\n")
    main = tmp_path / "Caddyfile"
    import_line = f"import {site}"
    main.write_text(OLD_STYLE + f"\n{import_line}\n")
    invalid = subprocess.run(
        [tool("caddy"), "validate", "--adapter", "caddyfile", "--config", str(main)], capture_output=True, text=True
    )
    assert invalid.returncode != 0 and "ambiguous site definition" in invalid.stderr + invalid.stdout
    main.write_text(take_over(OLD_STYLE, DOMAIN, import_line, BACKUP)[0])
    valid = subprocess.run(
        [tool("caddy"), "validate", "--adapter", "caddyfile", "--config", str(main)], capture_output=True, text=True
    )
    assert valid.returncode == 0, valid.stderr
