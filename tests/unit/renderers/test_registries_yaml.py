"""renderers/registries_yaml.py: the entries the program owns in k3s's registries.yaml."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from renderers.registries_yaml import render_registries_yaml
from tests.unit.support import DOMAIN, PULL_PASSWORD, PULL_USER


@pytest.mark.parametrize("ca_file", [None, "/etc/rancher/k3s/registry-ca.pem"])
def test_registries_yaml_trusts_one_registry_with_one_credential(ca_file: str | None) -> None:
    text = render_registries_yaml(DOMAIN, PULL_USER, PULL_PASSWORD, ca_file)
    assert text.startswith("# Managed by the registry Pulumi program.\n")
    expected: dict[str, Any] = {"auth": {"username": PULL_USER, "password": PULL_PASSWORD}}
    if ca_file:
        expected["tls"] = {"ca_file": ca_file}
    assert yaml.safe_load(text) == {"configs": {DOMAIN: expected}}
    assert "mirrors" not in text


@pytest.mark.parametrize("tricky", ["yes", "0123", "1e3", "a: b", "#hash", "'q\"", "null", "~", "- x", "*anchor"])
def test_registries_yaml_password_survives_yaml_quoting(tricky: str) -> None:
    doc = yaml.safe_load(render_registries_yaml(DOMAIN, PULL_USER, tricky))
    assert doc["configs"][DOMAIN]["auth"]["password"] == tricky
