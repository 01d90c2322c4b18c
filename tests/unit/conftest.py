"""Shared fixtures: program runs under mocks are the slow part, so each distinct configuration runs once."""

from __future__ import annotations

import pytest

from tests.unit.support import Programs


@pytest.fixture(scope="session")
def programs() -> Programs:
    return Programs()
