"""Fixtures shared by the end-to-end tests: one real test host per session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .testhost import TestHost, TestHostError, ensure_docker, start_host

HOST_NAME = os.environ.get("REGTEST_HOST_NAME", "regtest-e2e")


def pytest_configure(config: pytest.Config) -> None:
    """Register the e2e marker (tests that need Docker and build/boot the test host)."""
    config.addinivalue_line("markers", "e2e: needs root and Docker; builds and boots the disposable test host")


@pytest.fixture(scope="session")
def testhost() -> Iterator[TestHost]:
    """A booted test host, shared by the whole session; removed at the end unless KEEP_TESTHOST=1."""
    try:
        ensure_docker()
        host = start_host(name=HOST_NAME)
    except TestHostError as exc:
        pytest.fail(f"test host: {exc}", pytrace=False)
    try:
        yield host
    finally:
        if os.environ.get("KEEP_TESTHOST") == "1":
            print(f"\nKEEP_TESTHOST=1: keeping {host.name} (ssh -p {host.ssh_port} ubuntu@127.0.0.1)")
        else:
            host.remove()
