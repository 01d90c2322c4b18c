"""components/credentials.py under Pulumi's mocks: generated passwords and hashes, the kept push password, rotations."""

from __future__ import annotations

import json

import bcrypt
import yaml

from tests.harness import ProgramRun
from tests.unit.support import (
    DOMAIN,
    KEPT,
    TYPICAL,
    Programs,
    generated,
    password,
)


def test_pull_password_is_the_same_for_k3s_flux_and_the_export(typical: ProgramRun) -> None:
    trust = yaml.safe_load(typical.named("k3s-trust-file").value("stdin"))["configs"][DOMAIN]["auth"]
    flux = json.loads(typical.named("flux-secret").value("stringData")[".dockerconfigjson"])["auths"][DOMAIN]
    expected = password(typical, "credentials-pull")
    assert trust == {"username": "k3s_pull", "password": expected}
    assert (flux["username"], flux["password"]) == ("k3s_pull", expected)
    assert typical.exports["pullPassword"] == expected
    assert typical.exports["pushPassword"] == password(typical, "credentials-push") != expected


def test_generated_hashes_match_their_passwords(typical: ProgramRun) -> None:
    for name in ("credentials-push", "credentials-pull"):
        out = generated(typical, name)
        assert bcrypt.checkpw(out["result"].encode(), out["bcryptHash"].encode())


def test_passwords_have_the_configured_length_and_rotation_keeper(typical: ProgramRun) -> None:
    for name in ("credentials-push", "credentials-pull"):
        r = typical.named(name)
        assert r.value("length") == 32 and r.value("special") is False
        assert r.value("keepers") == {"rotation": "1"}
        assert len(password(typical, name)) == 32


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
