"""Shared fixtures: program runs under mocks are the slow part, so each distinct configuration runs once."""

from __future__ import annotations

import pytest

from tests.harness import ProgramRun
from tests.unit.support import HOST_KEY, KEPT, KUBECONFIG, PRIVATE_KEY, TYPICAL, Programs


@pytest.fixture(scope="session")
def programs() -> Programs:
    return Programs()


@pytest.fixture(scope="module")
def typical(programs: Programs) -> ProgramRun:
    return programs.ok(TYPICAL)


@pytest.fixture(scope="module")
def as_root(programs: Programs) -> ProgramRun:
    """Root login with a private key, a pinned host key, a kubeconfig, Flux v1beta2 and a registry CA file."""
    return programs.ok(
        {
            **TYPICAL,
            "sshUser": "root",
            "sshPrivateKey": PRIVATE_KEY,
            "sshHostKey": HOST_KEY,
            "kubeconfig": KUBECONFIG,
            "fluxApiVersion": "image.toolkit.fluxcd.io/v1beta2",
            "registryCaFile": "/etc/rancher/k3s/registry-ca.pem",
            "k3sService": "k3s-agent",
        }
    )


@pytest.fixture(scope="module")
def bare(programs: Programs) -> ProgramRun:
    """k3s trust and Flux both switched off."""
    return programs.ok({**TYPICAL, "k3sTrust": "false", "flux": "false"})


@pytest.fixture(scope="module")
def kept(programs: Programs) -> ProgramRun:
    """The push user keeps the password CI already holds."""
    return programs.ok({**TYPICAL, "existingPushPassword": KEPT})
