"""What a second run changes: nothing with the same config, exactly the credential consumers after a rotation."""

from __future__ import annotations

import pytest

from tests.harness import ProgramRun, contains_unknown, is_secret
from tests.unit.support import TYPICAL, Programs, password


@pytest.fixture(scope="module")
def first(programs: Programs) -> ProgramRun:
    return programs.ok(TYPICAL)


@pytest.fixture(scope="module")
def second(programs: Programs, first: ProgramRun) -> ProgramRun:
    return programs.ok(TYPICAL, state=first.state)


@pytest.fixture(scope="module")
def rotated(programs: Programs, first: ProgramRun) -> ProgramRun:
    return programs.ok({**TYPICAL, "credentialRotation": "2"}, state=first.state)


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
        "k3s-trust-file": ["stdin"],
        "k3s-trust-restart": ["triggers"],
        "caddy-site-handover": ["stdin", "triggers"],
        "caddy-site-file": ["stdin"],
        "flux-secret": ["stringData"],
        "verify-check": ["stdin", "triggers"],
    }


def test_rotation_generates_new_push_and_pull_passwords_only(first: ProgramRun, rotated: ProgramRun) -> None:
    for name in ("credentials-push", "credentials-pull"):
        assert password(first, name) != password(rotated, name)
    assert password(first, "credentials-http-secret") == password(rotated, "credentials-http-secret")
    assert rotated.exports["pullPassword"] == password(rotated, "credentials-pull")
    assert rotated.exports["pushPassword"] == password(rotated, "credentials-push")


def test_rotated_values_stay_secret(rotated: ProgramRun) -> None:
    for name in ("k3s-trust-file", "caddy-site-file", "verify-check"):
        assert is_secret(rotated.named(name).inputs["stdin"])
    assert is_secret(rotated.named("flux-secret").inputs["stringData"])
    assert {"pushPassword", "pullPassword", "dockerConfigJson"} <= set(rotated.secret_exports)


@pytest.fixture(scope="module")
def preview(programs: Programs) -> ProgramRun:
    return programs.ok(TYPICAL, preview=True)


def test_first_preview_succeeds_with_unknown_generated_values(preview: ProgramRun, first: ProgramRun) -> None:
    assert sorted(r.urn for r in preview.registrations) == sorted(r.urn for r in first.registrations)
    unknown = {r.name for r in preview.registrations if contains_unknown(r.inputs)}
    assert {"caddy-site-file", "k3s-trust-file", "flux-secret"} <= unknown
    assert contains_unknown(preview.exports["pushPassword"])


def test_first_preview_shows_the_host_scripts(preview: ProgramRun, first: ProgramRun) -> None:
    for name in ("host-preflight", "host-data-dir"):
        assert not contains_unknown(preview.named(name).inputs)
        assert preview.named(name).inputs == first.named(name).inputs
