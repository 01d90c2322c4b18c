"""Fixtures shared by the end-to-end tests: one real test host per session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .engine import Engine, EngineError
from .testhost import HostCommandError, TestHost, TestHostError, ensure_docker, start_host

HOST_NAME = os.environ.get("REGTEST_HOST_NAME", "regtest-e2e")


@pytest.fixture(scope="session")
def testhost() -> Iterator[TestHost]:
    """A booted test host, shared by the whole session; removed at the end unless KEEP_TESTHOST=1."""
    try:
        ensure_docker()
        host = start_host(name=HOST_NAME)
    except (TestHostError, HostCommandError) as exc:
        pytest.fail(f"test host: {exc}", pytrace=False)
    try:
        yield host
    finally:
        if os.environ.get("KEEP_TESTHOST") == "1":
            print(f"\nKEEP_TESTHOST=1: keeping {host.name} (ssh -p {host.ssh_port} ubuntu@127.0.0.1)")
        else:
            host.remove()


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """The real Pulumi engine (scripts/toolchain.sh build, or an installed CLI) with a PULUMI_HOME and a file://
    backend of this session's."""
    try:
        return Engine(tmp_path_factory.mktemp("pulumi"))
    except EngineError as exc:
        pytest.fail(str(exc), pytrace=False)
