"""components/verify.py under Pulumi's mocks: when the deploy check runs, what it waits for, its secret stdin."""

from __future__ import annotations

import hashlib

from renderers.verify_script import VerifySpec, render_verify_script, verify_stdin
from tests.harness import ProgramRun, is_secret
from tests.unit.support import ACCESS, DOMAIN, S3, SECRET, TYPICAL, Programs, exposed_strings, password, sudo_script


def test_verify_runs_after_the_site_and_the_k3s_restart(typical: ProgramRun) -> None:
    check = typical.named("verify-check")
    assert typical.named("caddy-site-file").urn in check.dependencies
    assert typical.named("k3s-trust-restart").urn in check.dependencies
    assert check.parent == typical.named("verify").urn
    assert typical.named("verify").type == "registry:index:Verify"


def test_verify_reruns_for_site_trust_and_registry_changes(typical: ProgramRun) -> None:
    check = typical.named("verify-check")
    site_sha = typical.named("caddy-site-file").value("stdin")
    trust_sha = typical.named("k3s-trust-file").value("stdin")
    assert check.value("triggers") == [
        hashlib.sha256(site_sha.encode()).hexdigest(),
        hashlib.sha256(trust_sha.encode()).hexdigest(),
        "registry:2.8.3",
        5000,
        1,  # replicas: a change of replicas leaves the site alone, the check runs for it all the same
    ]


def test_verify_reruns_when_the_data_moves_and_existing_stacks_keep_their_triggers(
    typical: ProgramRun, programs: Programs
) -> None:
    assert len(typical.named("verify-check").value("triggers")) == 5  # the default storage adds none
    moved = programs.ok({**TYPICAL, "dataDir": "/srv/registry-data"}).named("verify-check").value("triggers")
    assert moved[5] == "filesystem /srv/registry-data"
    s3 = programs.ok({**TYPICAL, **S3, "retention": "false"}).named("verify-check").value("triggers")
    assert s3[5] == "S3 bucket registry-data at https://s3.example.com:9000 (region us-east-1) /srv/data/registry"
    assert SECRET not in str(s3) and ACCESS not in str(s3)


def test_verify_credentials_travel_on_secret_stdin_only(typical: ProgramRun) -> None:
    check = typical.named("verify-check")
    push, pull = password(typical, "credentials-push"), password(typical, "credentials-pull")
    assert is_secret(check.inputs["stdin"])
    assert check.value("stdin") == verify_stdin("robot_user", push, "k3s_pull", pull)
    assert check.value("logging") == "none"
    assert {"stdout", "stderr"} <= set(check.additional_secret_outputs)
    for path, text in exposed_strings(check.inputs):
        assert push not in text and pull not in text, path


def test_verify_script_is_rendered_for_this_stack(typical: ProgramRun) -> None:
    expected = render_verify_script(VerifySpec(domain=DOMAIN, k3s=True, allowlist=True))
    assert sudo_script(typical.named("verify-check")) == expected


def test_verify_false_registers_no_check(programs: Programs) -> None:
    run = programs.ok({**TYPICAL, "verify": "false"})
    assert not [r for r in run.registrations if r.name.startswith("verify")]
    assert run.named("maintenance-install")


def test_verify_without_k3s_does_not_wait_for_k3s_or_pull_through_it(programs: Programs) -> None:
    run = programs.ok({**TYPICAL, "k3sTrust": "false", "flux": "false"})
    check = run.named("verify-check")
    assert "K3S=no\n" in sudo_script(check)
    assert check.value("triggers")[1] == ""
    assert not [r for r in run.registrations if r.name.startswith("k3s-trust")]


def test_preview_with_unknown_passwords_still_registers_the_check(programs: Programs) -> None:
    run = programs.ok(TYPICAL, preview=True)
    assert run.named("verify-check") and run.named("maintenance-install")
