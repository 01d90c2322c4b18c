"""The observers (providers/host_state.py) and their host probe (host/probe/observe.py), run locally.

The probe reads files made here; the provider's repair count is checked with a probe that returns a given
observation (no SSH: tests/e2e/test_drift.py runs the real one against the test host through the real engine).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from providers.host_state import HostStateProvider, compare, probe_spec
from renderers import shipped
from renderers.registries_yaml import registries_entries

observe = shipped.module("probe/observe.py")
REGISTRY = "registry.example.com:443"


def _entry_digest(password: str) -> str:
    entry = registries_entries(REGISTRY, "k3s_pull", password, "/etc/ca.pem")["configs"][REGISTRY]
    return hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()


def _registries(tmp_path: Path, password: str, extra: str = "") -> Path:
    merge = shipped.module(shipped.REGISTRIES_MERGE)
    path = tmp_path / "registries.yaml"
    path.write_text(merge.render(registries_entries(REGISTRY, "k3s_pull", password, "/etc/ca.pem")) + extra)
    return path


MIRRORS = 'mirrors:\n  docker.io:\n    endpoint:\n      - "https://mirror.example.com"\n'
OTHER = '  other.example.com:\n    auth:\n      username: "x"\n      password: "y"\n'


@pytest.mark.parametrize("pyyaml", [True, False], ids=["pyyaml", "stdlib-only"])
def test_the_probe_digests_the_programs_entry_as_the_program_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pyyaml: bool
) -> None:
    if not pyyaml:
        monkeypatch.setitem(__import__("sys").modules, "yaml", None)  # import yaml now fails, as on a bare host
    path = _registries(tmp_path, "0123456789", MIRRORS)
    assert observe.registries_entry(str(path), REGISTRY) == {"sha256": _entry_digest("0123456789")}
    # Another registry's entry added: the program's entry reads the same.
    text = path.read_text().replace("configs:\n", "configs:\n" + OTHER, 1)
    path.write_text(text)
    assert observe.registries_entry(str(path), REGISTRY) == {"sha256": _entry_digest("0123456789")}
    path.write_text(text.replace('"0123456789"', '"changed"'))
    assert observe.registries_entry(str(path), REGISTRY)["sha256"] not in (None, _entry_digest("0123456789"))
    assert observe.registries_entry(str(tmp_path / "missing.yaml"), REGISTRY) == {"sha256": None}


def test_the_probe_reports_digest_mode_owner_and_lines_never_content(tmp_path: Path) -> None:
    f = tmp_path / "site.caddy"
    f.write_text("secret-looking content\n")
    os.chmod(f, 0o640)
    (tmp_path / "Caddyfile").write_text("import /etc/caddy/registry.caddy\nother.example { respond hi }\n")
    seen = observe.observe({
        "files": [str(f), str(tmp_path / "gone")],
        "lines": {str(tmp_path / "Caddyfile"): ["import /etc/caddy/registry.caddy", "import /elsewhere"]},
        "containers": [], "units": [],
    })
    state = seen["files"][str(f)]
    assert state["sha256"] == hashlib.sha256(b"secret-looking content\n").hexdigest()
    assert state["mode"] == "0640" and state["owner"]
    assert seen["files"][str(tmp_path / "gone")] is None
    assert seen["lines"][str(tmp_path / "Caddyfile")] == {"import /etc/caddy/registry.caddy": True, "import /elsewhere": False}
    assert "secret-looking" not in json.dumps(seen)


EXPECT: dict[str, Any] = {
    "files": {"/etc/registry/registry.env": {"sha256": ["a" * 64], "mode": "0600", "owner": "root"}},
    "lines": {"/etc/caddy/Caddyfile": ["import /etc/caddy/registry.caddy"]},
    "registries": {"path": "/etc/rancher/k3s/registries.yaml", "entry": REGISTRY, "sha256": "b" * 64},
    "containers": {"registry": {"running": True, "image": "registry:2", "network": "host"}},
    "units": {"registry-gc.timer": {"enabled": "enabled", "active": "active"}},
}
CLEAN: dict[str, Any] = {
    "files": {"/etc/registry/registry.env": {"sha256": "a" * 64, "mode": "0600", "owner": "root", "group": "root"}},
    "lines": {"/etc/caddy/Caddyfile": {"import /etc/caddy/registry.caddy": True}},
    "registries": {"sha256": "b" * 64},
    "containers": {"registry": {"running": True, "image": "registry:2", "network": "host", "restart": "no"}},
    "units": {"registry-gc.timer": {"enabled": "enabled", "active": "active"}},
}


def _with(path: list[str], value: Any) -> dict[str, Any]:
    seen = json.loads(json.dumps(CLEAN))
    node = seen
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return seen


def test_a_clean_host_shows_no_drift() -> None:
    assert compare(EXPECT, CLEAN) == {}


@pytest.mark.parametrize(
    ("path", "value", "key", "says"),
    [
        (["files", "/etc/registry/registry.env", "mode"], "0644", "/etc/registry/registry.env", "mode 0644 (expected 0600)"),
        (["files", "/etc/registry/registry.env", "sha256"], "c" * 64, "/etc/registry/registry.env",
         f"content sha256 {'c' * 12}... (expected {'a' * 12}...)"),
        (["files", "/etc/registry/registry.env"], None, "/etc/registry/registry.env", "missing"),
        (["lines", "/etc/caddy/Caddyfile", "import /etc/caddy/registry.caddy"], False, "/etc/caddy/Caddyfile lines",
         "missing: import /etc/caddy/registry.caddy"),
        (["registries", "sha256"], "d" * 64, f"/etc/rancher/k3s/registries.yaml configs.{REGISTRY}",
         f"entry sha256 {'d' * 12}... (expected {'b' * 12}...)"),
        (["registries", "sha256"], None, f"/etc/rancher/k3s/registries.yaml configs.{REGISTRY}", "entry missing"),
        (["containers", "registry", "running"], False, "container registry", "running false (expected true)"),
        (["containers", "registry"], None, "container registry", "missing"),
        (["units", "registry-gc.timer"], {"enabled": "disabled", "active": "inactive"}, "unit registry-gc.timer",
         "inactive (expected active); disabled (expected enabled)"),
    ],
)
def test_each_difference_is_one_message_naming_it_with_digests_cut_short(
    path: list[str], value: Any, key: str, says: str
) -> None:
    drift = compare(EXPECT, _with(path, value))
    assert drift == {key: says}
    assert not any(len(word) >= 40 for message in drift.values() for word in message.split())


def test_the_probe_is_told_paths_and_names_only() -> None:
    spec = probe_spec(EXPECT)
    assert spec == {
        "files": ["/etc/registry/registry.env"],
        "lines": {"/etc/caddy/Caddyfile": ["import /etc/caddy/registry.caddy"]},
        "registries": {"path": "/etc/rancher/k3s/registries.yaml", "entry": REGISTRY},
        "containers": ["registry"],
        "units": ["registry-gc.timer"],
    }
    assert "a" * 64 not in json.dumps(spec) and "b" * 64 not in json.dumps(spec)


class _Seen(HostStateProvider):
    """The provider with the host's answer given (the SSH probe itself runs in tests/e2e/test_drift.py)."""

    def __init__(self, seen: dict[str, Any]) -> None:
        super().__init__("unused")
        self.seen = seen

    def probe(self, host: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
        return self.seen


def test_a_drifted_read_raises_the_repair_count_that_the_next_up_records() -> None:
    program = {"observer": "registry-state", "host": {"address": "h", "port": 22, "user": "u"}, "expect": EXPECT}
    clean = _Seen(CLEAN)
    inputs = clean.check({}, program).inputs
    outs = clean.create(inputs).outs
    assert outs is not None and outs["repairs"] == 0 and outs["drift"] == {}
    read = clean.read("registry-state", outs)
    assert read.outs is not None and read.inputs is not None
    assert read.outs["drift"] == {} and read.inputs["repairs"] == 0
    assert not clean.diff("registry-state", read.outs, clean.check(read.inputs, program).inputs).changes

    drifted = _Seen(_with(["containers", "registry"], None))
    read = drifted.read("registry-state", outs)
    assert read.outs is not None and read.inputs is not None
    assert read.outs["drift"] == {"container registry": "missing"} and read.inputs["repairs"] == 1
    again = drifted.read("registry-state", read.outs)  # a second refresh before the repair counts it once
    assert again.inputs is not None and again.inputs["repairs"] == 1
    news = drifted.check(read.inputs, program).inputs
    assert news["repairs"] == 1 and drifted.diff("registry-state", read.outs, news).changes
    repaired = drifted.update("registry-state", read.outs, news).outs
    assert repaired is not None and repaired["repairs"] == 1 and repaired["drift"] == {}
    assert not clean.diff("registry-state", repaired, clean.check(news, program).inputs).changes
