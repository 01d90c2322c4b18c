"""Taking over a hand-made setup: the host-side tools (registries.yaml merge, inline Caddy site) and the kept
push password, as plain functions, a real `caddy validate`, the scripts run with a local python3, and the graph."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import bcrypt
import pytest
import yaml

from renderers import shipped
from renderers.caddy_site import caddy_site_install
from renderers.k3s_trust import trust_file_remove, trust_file_write
from renderers.preflight import takeover_notice
from renderers.registries_yaml import registries_entries, render_registries_yaml
from tests.harness import ProgramRun
from tests.unit.support import DOMAIN, TYPICAL, Programs, password, tool

if TYPE_CHECKING:  # the shipped files, by the names pyproject.toml's mypy_path gives them
    import caddy_takeover
    import registries_merge
else:
    caddy_takeover = shipped.module(shipped.CADDY_TAKEOVER)
    registries_merge = shipped.module(shipped.REGISTRIES_MERGE)

TakeoverError = caddy_takeover.TakeoverError
take_over = caddy_takeover.take_over
MergeError = registries_merge.MergeError
merge = registries_merge.merge

OWNED = registries_entries(DOMAIN, "k3s_pull", 'p"w:1 #x', "/etc/rancher/k3s/registry-ca.pem")

HAND_MADE = f"""# set up by hand
mirrors:
  docker.io:
    endpoint: ["https://mirror.example.test"]
  {DOMAIN}:
    endpoint:
      - https://{DOMAIN}
configs:
  "other.example.test:5000":
    auth:
      username: someone   # keep me
      password: 'their secret'

  {DOMAIN}:
    auth:
      username: robot_user
      password: plaintext
    tls:
      insecure_skip_verify: true
  third.example.test:
    auth: {{username: x, password: y}}
"""


def _lines_outside_ours(text: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(f"  {DOMAIN}:", lines.index("configs:"))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("  ") and not lines[i].startswith("   "))
    return lines[:start] + lines[end:]


# --- registries.yaml --------------------------------------------------------------------------------------


def test_merge_replaces_only_the_programs_entry_and_keeps_every_other_line_byte_for_byte() -> None:
    text, how = merge(HAND_MADE, OWNED)
    assert how == "merged line by line" and text is not None
    doc = yaml.safe_load(text)
    before = yaml.safe_load(HAND_MADE)
    assert doc == {**before, "configs": {**before["configs"], **OWNED["configs"]}}
    assert _lines_outside_ours(text) == _lines_outside_ours(HAND_MADE)  # comments, quoting, blank lines, flow style


@pytest.mark.parametrize(
    ("current", "kind"),
    [
        (None, "new file"),
        ("", "new file"),
        ("mirrors:\n  docker.io:\n    endpoint: [x]\n", "merged line by line"),  # no configs yet
        ("configs: {}\n", "merged line by line"),
        ("configs:\n    a.example:\n        auth: {username: u, password: p}\n", "merged line by line"),  # 4 spaces
        ('{"configs": {"a.example": {}}}\n', "rewritten with PyYAML"),  # JSON is YAML too
        ("configs:\n  a.example: &x\n    auth: {username: u}\n  b.example: *x\n", "merged line by line"),
    ],
)
def test_merge_handles_each_shape_and_always_gives_the_expected_document(current: str | None, kind: str) -> None:
    text, how = merge(current, OWNED)
    assert text is not None and how.startswith(kind)
    before = yaml.safe_load(current or "") or {}
    assert yaml.safe_load(text) == {**before, "configs": {**(before.get("configs") or {}), **OWNED["configs"]}}


def test_merge_of_an_up_to_date_file_changes_nothing() -> None:
    text, _ = merge(HAND_MADE, OWNED)
    assert merge(text, OWNED) == (text, "already up to date")


def test_a_new_file_is_what_render_registries_yaml_gives() -> None:
    ours = render_registries_yaml(DOMAIN, "k3s_pull", 'p"w:1 #x', "/etc/rancher/k3s/registry-ca.pem")
    assert merge(None, OWNED) == (ours, "new file")


def test_remove_drops_only_the_programs_entry_and_nothing_left_means_no_file() -> None:
    merged, _ = merge(HAND_MADE, OWNED)
    text, _ = merge(merged, {"configs": {DOMAIN: {}}}, remove=True)
    assert text is not None
    before = yaml.safe_load(HAND_MADE)
    del before["configs"][DOMAIN]
    assert yaml.safe_load(text) == before
    assert merge(merge(None, OWNED)[0], {"configs": {DOMAIN: {}}}, remove=True)[0] is None


def test_without_pyyaml_a_shape_it_cannot_edit_fails_and_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registries_merge, "_yaml", lambda: None)
    assert merge(HAND_MADE, OWNED)[1] == "merged line by line"
    with pytest.raises(MergeError, match="install python3-yaml"):
        merge('{"configs": {}}\n', OWNED)


def _run_tool_script(script: str, tmp_path: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """A script the program sends, run here with sh (python3 is this interpreter); only the file paths differ."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(exist_ok=True)
    for name, body in {"python3": f'exec {sys.executable} "$@"', "chown": "exit 0"}.items():
        (fake_bin / name).write_text(f"#!/bin/sh\n{body}\n")
        (fake_bin / name).chmod(0o755)
    script = script.replace("/run/registry", f"{tmp_path}/run")
    return subprocess.run(
        ["sh", "-c", script], input=stdin, capture_output=True, text=True, check=False,
        env={"PATH": f"{fake_bin}:/usr/bin:/bin"},
    )  # fmt: skip


def test_trust_file_script_merges_writes_0600_and_leaves_a_restart_pending_only_on_change(tmp_path: Path) -> None:
    path = tmp_path / "registries.yaml"
    path.write_text(HAND_MADE)
    path.chmod(0o644)
    owned = registries_merge.json.dumps(OWNED)
    first = _run_tool_script(trust_file_write(str(path)), tmp_path, owned)
    assert first.returncode == 0, first.stderr
    assert "registries.yaml written" in first.stdout
    assert path.stat().st_mode & 0o777 == 0o600
    assert yaml.safe_load(path.read_text())["configs"][DOMAIN] == OWNED["configs"][DOMAIN]
    pending = tmp_path / "run" / "k3s-restart-pending"
    assert pending.exists()
    pending.unlink()
    again = _run_tool_script(trust_file_write(str(path)), tmp_path, owned)
    assert "registries.yaml unchanged" in again.stdout and not pending.exists()
    removed = _run_tool_script(trust_file_remove(str(path), DOMAIN), tmp_path)
    assert removed.returncode == 0, removed.stderr
    assert DOMAIN not in yaml.safe_load(path.read_text())["configs"]
    assert list(tmp_path.glob("registries.yaml.*")) == []  # no temporary file left


# --- the inline Caddy site --------------------------------------------------------------------------------

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


def test_install_script_carries_the_takeover_tool_and_keeps_a_dated_backup() -> None:
    script = caddy_site_install("/etc/caddy/Caddyfile", "/etc/caddy/registry.caddy", DOMAIN, "127.0.0.1:5000")
    assert (shipped.text(shipped.CADDY_TAKEOVER).rstrip() + "\nEND_OF_CADDY_TAKEOVER") in script
    assert 'backup="$main.$(date -u +%Y%m%d-%H%M%S).bak"' in script
    assert script.count("caddy validate --adapter") == 1 and script.count("systemctl reload caddy") == 1


# --- the kept push password -------------------------------------------------------------------------------

KEPT = "ci-has-used-this-one-for-years"


@pytest.fixture(scope="module")
def kept(programs: Programs) -> ProgramRun:
    return programs.ok({**TYPICAL, "existingPushPassword": KEPT})


def _site_hashes(run: ProgramRun) -> dict[str, str]:
    site = run.named("caddy-site-file").value("stdin")
    return dict(line.split() for line in site.split("basic_auth {\n")[1].split("\t\t}")[0].strip().splitlines())


def test_the_push_user_keeps_the_existing_password_with_a_stable_hash(kept: ProgramRun, programs: Programs) -> None:
    assert kept.exports["pushPassword"] == KEPT and "pushPassword" in kept.secret_exports
    hashes = _site_hashes(kept)
    assert bcrypt.checkpw(KEPT.encode(), hashes["robot_user"].encode())
    assert bcrypt.checkpw(password(kept, "credentials-pull").encode(), hashes["k3s_pull"].encode())
    again = programs.ok({**TYPICAL, "existingPushPassword": KEPT}, kept.state)
    assert _site_hashes(again) == hashes  # same salt from state: no site change, no reload on the next up
    # A re-run runs nothing (compared by name: registration order varies between runs).
    assert {c.name: c.inputs for c in again.commands} == {c.name: c.inputs for c in kept.commands}
    assert KEPT not in str([c.inputs.get("create") for c in kept.commands])


def test_a_rotation_replaces_the_kept_password(kept: ProgramRun, programs: Programs) -> None:
    rotated = programs.ok({**TYPICAL, "existingPushPassword": KEPT, "credentialRotation": "2"}, kept.state)
    assert rotated.exports["pushPassword"] not in (KEPT, "")
    assert rotated.exports["pushPassword"] == password(rotated, "credentials-push")
    assert bcrypt.checkpw(rotated.exports["pushPassword"].encode(), _site_hashes(rotated)["robot_user"].encode())


def test_without_the_setting_the_push_password_is_generated(programs: Programs) -> None:
    run = programs.ok(TYPICAL)
    assert run.exports["pushPassword"] == password(run, "credentials-push")
    assert not [r for r in run.registrations if r.name == "credentials-push-kept"]


def test_the_preview_notice_says_what_a_first_update_takes_over() -> None:
    notice = takeover_notice("registry", DOMAIN, "/etc/caddy/Caddyfile", "/etc/rancher/k3s/registries.yaml")
    assert "a container named registry is replaced" in notice
    assert f"an inline site for {DOMAIN} in /etc/caddy/Caddyfile is replaced" in notice
    assert "Caddyfile.YYYYMMDD-HHMMSS.bak" in notice and "other sites stay" in notice
    assert "/etc/rancher/k3s/registries.yaml is merged" in notice and "every other entry and key stays" in notice
    assert "registries.yaml" not in takeover_notice("registry", DOMAIN, "/etc/caddy/Caddyfile", None)


def test_the_notice_is_in_every_preview_and_not_in_an_update(programs: Programs) -> None:
    notice = takeover_notice("registry", DOMAIN, "/etc/caddy/Caddyfile", "/etc/rancher/k3s/registries.yaml")
    assert f"info: {notice}" in programs.ok(TYPICAL, preview=True).logs
    assert not [line for line in programs.ok(TYPICAL).logs if "takes over" in line]


def test_generations_diff_of_a_rotation_preview_with_unknown_hashes_reports_a_change() -> None:
    """`pulumi up` previews first: on a rotation the engine hands the dynamic provider an unknown for the new hashes
    (it crashed on `.get` of it, found by the real engine)."""
    from pulumi.output import Unknown

    from components.credentials import _GenerationsProvider

    provider = _GenerationsProvider()
    current = {"push": "$2a$10$a", "pull": "$2a$10$b"}
    olds = {"current": current, "previous": {}, "rotated_at": 0}
    for news in ({"current": Unknown()}, {"current": {"push": Unknown(), "pull": "$2a$10$b"}}):
        assert provider.diff("id", olds, news).changes is True
    assert provider.diff("id", olds, {"current": dict(current)}).changes is False
    assert provider.diff("id", olds, {"current": {"push": "$2a$10$c", "pull": "$2a$10$b"}}).changes is True
