"""The entries of k3s's registries.yaml the program owns, and the file as it writes a new one."""

from __future__ import annotations

import json

from renderers import shipped


def registries_entries(registry: str, username: str, password: str, ca_file: str | None = None) -> dict[str, dict]:
    """The entries of k3s's registries.yaml the program owns: its registry under `configs`, one credential.

    No mirror entry: for a registry served under its own name, `configs` alone is what k3s needs.
    """
    host_config: dict[str, object] = {"auth": {"username": username, "password": password}}
    if ca_file:
        host_config["tls"] = {"ca_file": ca_file}
    return {"configs": {registry: host_config}}


def render_registries_owned(registry: str, username: str, password: str, ca_file: str | None = None) -> str:
    """What the trust file step sends on stdin: the owned entries as JSON, merged into the host's file there."""
    return json.dumps(registries_entries(registry, username, password, ca_file), sort_keys=True) + "\n"


def render_registries_yaml(registry: str, username: str, password: str, ca_file: str | None = None) -> str:
    """registries.yaml as the program writes it where there was none (the host's merge tool renders the same)."""
    return shipped.module(shipped.REGISTRIES_MERGE).render(registries_entries(registry, username, password, ca_file))
