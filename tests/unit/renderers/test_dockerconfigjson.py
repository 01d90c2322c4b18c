"""renderers/dockerconfigjson.py: a Docker config holding one credential."""

from __future__ import annotations

import base64
import json

import pytest

from renderers.dockerconfigjson import basic_auth_value, dockerconfigjson
from tests.unit.support import DOMAIN, PULL_PASSWORD, PULL_USER


@pytest.mark.parametrize(
    ("registry", "user", "pw"),
    [(DOMAIN, PULL_USER, PULL_PASSWORD), ("registry.example.com:5443", "ci@corp", 'p:w "ü\\')],
)
def test_dockerconfigjson_holds_username_password_and_auth(registry: str, user: str, pw: str) -> None:
    doc = json.loads(dockerconfigjson(registry, user, pw))
    assert doc == {"auths": {registry: {"username": user, "password": pw, "auth": basic_auth_value(user, pw)}}}
    assert base64.b64decode(doc["auths"][registry]["auth"]).decode() == f"{user}:{pw}"
