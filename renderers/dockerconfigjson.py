"""A Docker config.json holding one credential (the Flux secret and the dockerConfigJson stack output)."""

from __future__ import annotations

import base64
import json


def basic_auth_value(username: str, password: str) -> str:
    """base64(user:password), the `auth` field every Docker-config reader understands."""
    return base64.b64encode(f"{username}:{password}".encode()).decode()


def dockerconfigjson(registry: str, username: str, password: str) -> str:
    """A Docker config.json holding one credential (username, password and auth)."""
    entry = {"username": username, "password": password, "auth": basic_auth_value(username, password)}
    return json.dumps({"auths": {registry: entry}}, indent=2, sort_keys=True) + "\n"
