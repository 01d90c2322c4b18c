"""components/k3s_trust.py under Pulumi's mocks: the trust file is the rendered registries.yaml, the restart it triggers."""

from __future__ import annotations

import pytest

from components.host import sha256
from renderers.registries_yaml import render_registries_owned
from tests.harness import ProgramRun
from tests.unit.support import (
    DOMAIN,
    password,
)


def test_k3s_restart_is_triggered_by_the_trust_file_digest(typical: ProgramRun) -> None:
    content = typical.named("k3s-trust-file").value("stdin")
    restart = typical.named("k3s-trust-restart")
    assert restart.value("triggers") == [sha256(content), "k3s"]
    create = restart.value("create")
    # Restarts only when the host's merge changed the file (the write step leaves the flag).
    assert "systemctl try-restart k3s.service" in create and "/run/registry/k3s-restart-pending" in create
    assert "/run/registry/k3s-restart-pending" in typical.named("k3s-trust-file").value("create")


@pytest.mark.parametrize(("fixture", "ca_file"), [("typical", None), ("as_root", "/etc/rancher/k3s/registry-ca.pem")])
def test_k3s_trust_file_is_the_rendered_registries_yaml(
    request: pytest.FixtureRequest, fixture: str, ca_file: str | None
) -> None:
    run: ProgramRun = request.getfixturevalue(fixture)
    stdin = run.named("k3s-trust-file").value("stdin")
    assert stdin == render_registries_owned(DOMAIN, "k3s_pull", password(run, "credentials-pull"), ca_file)


def test_disabling_k3s_trust_removes_its_resources_and_preflight_check(bare: ProgramRun, typical: ProgramRun) -> None:
    assert not bare.by_type("registry:index:K3sTrust")
    assert not [r for r in bare.registrations if r.name.startswith("k3s-trust")]
    # The preflight's header names the k3s unit and the trust file to check only where there is a trust file.
    assert "\nK3S_SERVICE=k3s\n" in typical.named("host-preflight").value("create")
    assert "\nREGISTRIES_FILE=/etc/rancher/k3s/registries.yaml\n" in typical.named("host-preflight").value("create")
    assert "K3S_SERVICE=k3s" not in bare.named("host-preflight").value("create")
    assert "REGISTRIES_FILE=/" not in bare.named("host-preflight").value("create")
