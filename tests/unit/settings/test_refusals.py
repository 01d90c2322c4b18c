"""Refusals that need more than the values: a secret stored in plaintext, Flux pointed at an ambient cluster. Each
names the setting and the exact command that fixes it, and shows no secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from settings.refusals import SECRET_INPUTS, ambient_context, flux_cluster, plaintext_secrets, refusals
from tests.harness import run_program
from tests.unit.support import KUBECONFIG, PRIVATE_KEY, TYPICAL

VALUES = {
    "sshPrivateKey": PRIVATE_KEY,
    "kubeconfig": KUBECONFIG,
    "existingPushPassword": "hunter2-ci-password",
    "s3AccessKey": "hunter2-access",
    "s3SecretKey": "hunter2-secret",
}
FIXES = {
    "sshPrivateKey": "`pulumi config set --secret sshPrivateKey --stack prod < ~/.ssh/registry_deploy`",
    "kubeconfig": "`pulumi config set --secret kubeconfig --stack prod < ~/.kube/k3s.yaml`",
    "existingPushPassword": "`pulumi config set --secret existingPushPassword --stack prod`",
    "s3AccessKey": "`pulumi config set --secret s3AccessKey --stack prod`",
    "s3SecretKey": "`pulumi config set --secret s3SecretKey --stack prod`",
}


def test_every_secret_setting_has_a_fix() -> None:
    assert set(SECRET_INPUTS) == set(VALUES) == set(FIXES)


@pytest.mark.parametrize("key", sorted(VALUES))
def test_secret_setting_in_plaintext_is_refused_naming_key_and_command(key: str) -> None:
    [message] = plaintext_secrets({key: VALUES[key]}, frozenset(), "registry", "prod")
    assert message.startswith(f"registry:{key} is stored in plaintext in Pulumi.prod.yaml; accepted: a secret. Fix: ")
    assert FIXES[key] in message
    assert "hunter2" not in message and "PRIVATE KEY" not in message and "apiVersion" not in message


@pytest.mark.parametrize("key", sorted(VALUES))
def test_secret_setting_stored_as_secret_or_empty_is_accepted(key: str) -> None:
    assert plaintext_secrets({key: VALUES[key]}, frozenset({key}), "registry", "prod") == []
    assert plaintext_secrets({key: ""}, frozenset(), "registry", "prod") == []


def test_flux_without_a_named_cluster_is_refused_naming_the_ambient_context() -> None:
    [message] = flux_cluster({}, "registry", "prod", lambda: "admin@production")
    assert "registry:kubeconfig is not set while flux = true, and neither is kubeContext" in message
    assert "the ambient kubeconfig's current context 'admin@production' would be used" in message
    assert "`pulumi config set --secret kubeconfig --stack prod < ~/.kube/k3s.yaml`" in message
    assert "`pulumi config set kubeContext admin@production --stack prod`" in message


def test_flux_without_any_cluster_is_refused() -> None:
    [message] = flux_cluster({"flux": "true"}, "registry", "dev", lambda: None)
    assert "(no cluster is named)" in message and "`pulumi config set kubeContext CONTEXT --stack dev`" in message


@pytest.mark.parametrize("raw", [{"flux": "false"}, {"kubeconfig": KUBECONFIG}, {"kubeContext": "k3s"}])
def test_flux_off_or_with_a_named_cluster_is_accepted(raw: dict[str, str]) -> None:
    def ambient() -> str:
        raise AssertionError("the ambient kubeconfig is not read when the cluster is named")

    assert flux_cluster(raw, "registry", "prod", ambient) == []


def test_ambient_context_is_the_first_current_context_of_kubeconfig_files(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_text("apiVersion: v1\nkind: Config\n")
    second.write_text("apiVersion: v1\ncurrent-context: prod-admin\n")
    assert ambient_context({"KUBECONFIG": f"{tmp_path / 'missing'}:{first}:{second}"}) == "prod-admin"
    assert ambient_context({"KUBECONFIG": str(first)}) is None


def test_all_refusals_are_reported_together() -> None:
    found = refusals({"sshPrivateKey": PRIVATE_KEY, "s3SecretKey": "x"}, frozenset(), "registry", "prod", lambda: "c")
    assert [line.split(" ", 1)[0] for line in found] == ["registry:sshPrivateKey", "registry:s3SecretKey", "registry:kubeconfig"]


def test_program_with_a_plaintext_key_fails_before_registering_anything() -> None:
    run = run_program({**TYPICAL, "sshPrivateKey": PRIVATE_KEY}, secret_keys=(), stack="prod")
    assert run.error is not None and run.error.startswith("RunError: invalid stack configuration:")
    assert "registry:sshPrivateKey is stored in plaintext in Pulumi.prod.yaml" in run.error
    assert "PRIVATE KEY" not in run.error
    assert run.registrations == []


def test_program_with_flux_on_and_the_ambient_context_fails_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text("apiVersion: v1\ncurrent-context: someone-elses-cluster\n")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    run = run_program({k: v for k, v in TYPICAL.items() if k != "kubeContext"})
    assert run.error is not None
    assert "current context 'someone-elses-cluster' would be used" in run.error
    assert run.registrations == []
