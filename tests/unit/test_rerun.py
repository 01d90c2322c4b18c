"""What a second run changes under Pulumi's mocks (not the engine): nothing with the same config, exactly the
credential consumers after a rotation."""

from __future__ import annotations

import pytest

from renderers.caddy_site import GRACE_SEPARATOR, HANDOVER_SEPARATOR
from tests.harness import ProgramRun, contains_unknown, is_secret, reveal
from tests.unit.support import TYPICAL, Programs, generated, password

DYNAMIC = "pulumi-python:dynamic:Resource"


@pytest.fixture(scope="module")
def first(programs: Programs) -> ProgramRun:
    return programs.ok(TYPICAL)


@pytest.fixture(scope="module")
def second(programs: Programs, first: ProgramRun) -> ProgramRun:
    return programs.ok(TYPICAL, state=first.state)


@pytest.fixture(scope="module")
def rotated(programs: Programs, first: ProgramRun) -> ProgramRun:
    return programs.ok({**TYPICAL, "credentialRotation": "2"}, state=first.state)


@pytest.fixture(scope="module")
def scaled(programs: Programs, first: ProgramRun) -> ProgramRun:
    return programs.ok({**TYPICAL, "registryReplicas": "2"}, state=first.state)


def _changed(before: ProgramRun, after: ProgramRun) -> dict[str, list[str]]:
    """Resource name -> the input keys whose value (secret wrapper included) differs."""
    old = {r.urn: r for r in before.registrations}
    assert sorted(old) == sorted(r.urn for r in after.registrations)
    changed = {}
    for r in after.registrations:
        keys = sorted(k for k in set(r.inputs) | set(old[r.urn].inputs) if r.inputs.get(k) != old[r.urn].inputs.get(k))
        if keys:
            changed[r.name] = keys
    return changed


def test_second_run_with_same_config_changes_no_input(first: ProgramRun, second: ProgramRun) -> None:
    assert _changed(first, second) == {}


def test_second_run_keeps_dependencies_and_options(first: ProgramRun, second: ProgramRun) -> None:
    def shape(run: ProgramRun) -> dict[str, tuple[object, ...]]:
        return {
            r.urn: (r.parent, sorted(r.dependencies), r.delete_before_replace, sorted(r.additional_secret_outputs))
            for r in run.registrations
        }

    assert shape(first) == shape(second)


def test_second_run_keeps_passwords_and_exports(first: ProgramRun, second: ProgramRun) -> None:
    for name in ("credentials-push", "credentials-pull", "credentials-http-secret"):
        assert password(first, name) == password(second, name)
    assert first.exports == second.exports


def test_rotation_changes_exactly_the_credential_consumers(first: ProgramRun, rotated: ProgramRun) -> None:
    assert _changed(first, rotated) == {
        "credentials-push": ["keepers"],
        "credentials-pull": ["keepers"],
        "credentials-generations": ["current"],
        # push-to-deploy: a new Receiver token, so a new webhook path in the relay's file
        "flux-receiver-token": ["keepers"],
        "flux-receiver-secret": ["stringData"],
        "flux-hook-files": ["stdin"],
        "k3s-trust-file": ["stdin"],
        "k3s-trust-restart": ["triggers"],
        # The observers expect the new entry and site (digests); they run nothing on the host.
        "k3s-trust-state": ["expect"],
        "caddy-site-state": ["expect"],
        "caddy-site-handover": ["stdin", "triggers"],
        "caddy-site-file": ["stdin"],
        "flux-secret": ["stringData"],
        "verify-check": ["stdin", "triggers"],
    }


def test_a_change_of_replicas_leaves_the_caddy_site_alone(first: ProgramRun, scaled: ProgramRun) -> None:
    # The site reads the replicas from its upstream slots, so 1 -> 2 (and back) is no Caddy reload: a reload drops
    # a request that arrives on a connection the outgoing configuration had just accepted.
    assert _changed(first, scaled) == {
        "host-preflight": ["create"],
        "registry-container": ["create", "delete", "triggers", "update"],
        "maintenance-install": ["create"],
        "verify-check": ["triggers"],
        # The observers expect the second replica and the new maintenance script.
        "registry-state": ["expect"],
        "maintenance-state": ["expect"],
    }


def test_rotation_generates_new_push_and_pull_passwords_only(first: ProgramRun, rotated: ProgramRun) -> None:
    for name in ("credentials-push", "credentials-pull"):
        assert password(first, name) != password(rotated, name)
    assert password(first, "credentials-http-secret") == password(rotated, "credentials-http-secret")
    assert rotated.exports["pullPassword"] == password(rotated, "credentials-pull")
    assert rotated.exports["pushPassword"] == password(rotated, "credentials-push")


def test_rotated_values_stay_secret(rotated: ProgramRun) -> None:
    for name in ("k3s-trust-file", "caddy-site-file", "caddy-site-handover", "verify-check"):
        assert is_secret(rotated.named(name).inputs["stdin"])
    assert is_secret(rotated.named("flux-secret").inputs["stringData"])
    assert {"pushPassword", "pullPassword", "dockerConfigJson"} <= set(rotated.secret_exports)


def _stdin(run: ProgramRun, name: str) -> str:
    value: str = reveal(run.named(name).inputs["stdin"])
    return value


def _hash(run: ProgramRun, name: str) -> str:
    value: str = generated(run, name)["bcryptHash"]
    return value


def _handover_parts(run: ProgramRun) -> tuple[str, str]:
    """The handover step's stdin: the site for a rotation, and the settled site it installs on any other change."""
    handover, _, settled = _stdin(run, "caddy-site-handover").partition("\n" + HANDOVER_SEPARATOR + "\n")
    assert settled, "no settled site in the handover step's stdin"
    return handover + "\n", settled


def test_rotation_handover_site_accepts_both_generations(first: ProgramRun, rotated: ProgramRun) -> None:
    site = _handover_parts(rotated)[0]
    for name in ("credentials-push", "credentials-pull"):
        assert _hash(first, name) in site.split("handle_errors 401", 1)[1]
        assert _hash(rotated, name) in site.split("handle_errors 401", 1)[0]


def test_rotation_final_site_refuses_the_previous_generation(first: ProgramRun, rotated: ProgramRun) -> None:
    site = _stdin(rotated, "caddy-site-file")
    assert "handle_errors 401" not in site  # the handover's block (the push-to-deploy relay has handle_errors too)
    for name in ("credentials-push", "credentials-pull"):
        assert _hash(first, name) not in site and _hash(rotated, name) in site


def test_first_run_has_nothing_to_hand_over(first: ProgramRun) -> None:
    handover, settled = _handover_parts(first)
    assert handover == settled == _stdin(first, "caddy-site-file")


@pytest.fixture(scope="module")
def after_rotation(programs: Programs, rotated: ProgramRun) -> ProgramRun:
    """A later change that is not a rotation (the allowlist), on the rotated state."""
    return programs.ok({**TYPICAL, "credentialRotation": "2", "allowlist": ["198.51.100.0/24"]}, state=rotated.state)


def test_a_later_change_does_not_hand_over_again(rotated: ProgramRun, after_rotation: ProgramRun) -> None:
    # An update, not a replacement: it installs the settled site (no previous generation) before any client step.
    assert _changed(rotated, after_rotation)["caddy-site-handover"] == ["stdin"]
    handover = after_rotation.named("caddy-site-handover")
    assert "caddy validate" in reveal(handover.inputs["update"])
    settled = _handover_parts(after_rotation)[1]
    assert settled == _stdin(after_rotation, "caddy-site-file")
    assert "handle_errors 401" not in settled and "198.51.100.0/24" in settled


def test_a_rerun_after_the_rotation_keeps_the_previous_generation(programs: Programs, rotated: ProgramRun) -> None:
    again = programs.ok({**TYPICAL, "credentialRotation": "2"}, state=rotated.state)
    assert _changed(rotated, again) == {}


@pytest.fixture(scope="module")
def graced(programs: Programs, first: ProgramRun) -> ProgramRun:
    return programs.ok({**TYPICAL, "credentialRotation": "2", "credentialGracePeriod": "2h"}, state=first.state)


def test_grace_period_sends_both_sites_and_the_deadline(first: ProgramRun, graced: ProgramRun) -> None:
    now_site, _, later_site = _stdin(graced, "caddy-site-file").partition(GRACE_SEPARATOR + "\n")
    assert later_site and "handle_errors 401" in now_site and "handle_errors 401" not in later_site
    assert _hash(first, "credentials-push") in now_site and _hash(first, "credentials-push") not in later_site
    generations = reveal(graced.state[f"{DYNAMIC}::credentials-generations"]["outputs"])
    assert generations["rotated_at"] > 0
    deadline = generations["rotated_at"] + 2 * 3600
    assert f'-lt {deadline} ]' in reveal(graced.named("caddy-site-file").inputs["create"])


def test_grace_period_without_a_rotation_installs_one_site(programs: Programs) -> None:
    run = programs.ok({**TYPICAL, "credentialGracePeriod": "2h"})
    assert GRACE_SEPARATOR not in _stdin(run, "caddy-site-file")
    assert "systemctl restart registry-credential-expiry.timer" not in reveal(run.named("caddy-site-file").inputs["create"])


@pytest.fixture(scope="module")
def preview(programs: Programs) -> ProgramRun:
    return programs.ok(TYPICAL, preview=True)


def test_first_preview_succeeds_with_unknown_generated_values(preview: ProgramRun, first: ProgramRun) -> None:
    assert sorted(r.urn for r in preview.registrations) == sorted(r.urn for r in first.registrations)
    unknown = {r.name for r in preview.registrations if contains_unknown(r.inputs)}
    assert {"caddy-site-file", "k3s-trust-file", "flux-secret"} <= unknown
    assert contains_unknown(preview.exports["pushPassword"])


def test_first_preview_shows_the_host_scripts(preview: ProgramRun, first: ProgramRun) -> None:
    # The connection (secret, never shown) carries the host key the first update records (trust on first use).
    for name in ("host-preflight", "host-data-dir"):
        shown = {k: v for k, v in preview.named(name).inputs.items() if k != "connection"}
        assert not contains_unknown(shown)
        assert shown == {k: v for k, v in first.named(name).inputs.items() if k != "connection"}
