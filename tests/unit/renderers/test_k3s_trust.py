"""renderers/k3s_trust.py: the trust file step run with a local python3."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from renderers.k3s_trust import node_pull, trust_file_remove, trust_file_write
from tests.unit.support import DOMAIN, HAND_MADE, OWNED, registries_merge


def _run_tool_script(script: str, tmp_path: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """A script the program sends, run here with sh (python3 is this interpreter); only the file paths differ."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(exist_ok=True)
    for name, body in {"python3": f'exec {sys.executable} "$@"', "chown": "exit 0"}.items():
        (fake_bin / name).write_text(f"#!/bin/sh\n{body}\n")
        (fake_bin / name).chmod(0o755)
    script = script.replace("/run/registry", f"{tmp_path}/run")
    return subprocess.run(
        ["sh", "-c", script], input=stdin, capture_output=True, text=True, check=False,
        env={"PATH": f"{fake_bin}:/usr/bin:/bin"},
    )  # fmt: skip


def test_trust_file_script_merges_writes_0600_and_leaves_a_restart_pending_only_on_change(tmp_path: Path) -> None:
    path = tmp_path / "registries.yaml"
    path.write_text(HAND_MADE)
    path.chmod(0o644)
    owned = registries_merge.json.dumps(OWNED)
    first = _run_tool_script(trust_file_write(str(path)), tmp_path, owned)
    assert first.returncode == 0, first.stderr
    assert "registries.yaml written" in first.stdout
    assert path.stat().st_mode & 0o777 == 0o600
    assert yaml.safe_load(path.read_text())["configs"][DOMAIN] == OWNED["configs"][DOMAIN]
    pending = tmp_path / "run" / "k3s-restart-pending"
    assert pending.exists()
    pending.unlink()
    again = _run_tool_script(trust_file_write(str(path)), tmp_path, owned)
    assert "registries.yaml unchanged" in again.stdout and not pending.exists()
    removed = _run_tool_script(trust_file_remove(str(path), DOMAIN), tmp_path)
    assert removed.returncode == 0, removed.stderr
    assert DOMAIN not in yaml.safe_load(path.read_text())["configs"]
    assert list(tmp_path.glob("registries.yaml.*")) == []  # no temporary file left


def _run_with_k3s(script: str, tmp_path: Path, *, active: str, pull: str) -> subprocess.CompletedProcess[str]:
    """A node step run here with `systemctl is-active` answering ACTIVE (a file, changeable while it runs) and
    `k3s crictl pull` running the shell snippet PULL; `sleep` is instant."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(exist_ok=True)
    (tmp_path / "active").write_text(active)
    stubs = {
        "systemctl": f'state=$(cat {tmp_path}/active); echo "$state"; [ "$state" = active ]',
        "k3s": f'echo "$@" >> {tmp_path}/calls; {pull}',
        "sleep": f'echo slept >> {tmp_path}/sleeps; n=$(wc -l < {tmp_path}/sleeps); [ "$n" -lt 3 ] || echo active > {tmp_path}/active',
    }
    for name, body in stubs.items():
        (fake_bin / name).write_text(f"#!/bin/sh\n{body}\n")
        (fake_bin / name).chmod(0o755)
    return subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, check=False, env={"PATH": f"{fake_bin}:/usr/bin:/bin"},
    )  # fmt: skip


def test_node_pull_waits_for_the_unit_then_pulls_the_probe_through_k3s(tmp_path: Path) -> None:
    done = _run_with_k3s(node_pull("agent-1", "k3s-agent", DOMAIN, accept_missing=False), tmp_path,
                         active="activating", pull="echo 'Image is up to date for sha256:abc'")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "node agent-1: k3s-agent is up and pulled" in done.stdout and "sha256:abc" in done.stdout
    assert (tmp_path / "calls").read_text().split() == ["crictl", "pull", f"{DOMAIN}/ops/verify-probe:v1"]
    assert len((tmp_path / "sleeps").read_text().split()) == 3  # polled until the unit turned active (3rd sleep)


NOT_FOUND = "echo 'ctr: failed to resolve reference \"x\": x: not found' >&2; exit 1"


def test_node_back_check_takes_not_found_as_the_registry_accepting_the_credential(tmp_path: Path) -> None:
    done = _run_with_k3s(node_pull("agent-1", "k3s-agent", DOMAIN, accept_missing=True), tmp_path,
                         active="active", pull=NOT_FOUND)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "the registry accepted its credential" in done.stdout


def test_node_pull_fails_naming_the_node_when_it_never_pulls(tmp_path: Path) -> None:
    script = node_pull("agent-1", "k3s-agent", DOMAIN, accept_missing=False, deadline=0)
    for pull in (NOT_FOUND, "echo 'unexpected status from GET request: 401 Unauthorized' >&2; exit 1"):
        failed = _run_with_k3s(script, tmp_path, active="active", pull=pull)
        assert failed.returncode == 1
        assert failed.stderr.startswith("node agent-1: FAILED: k3s-agent could not pull"), failed.stderr
    unauthorized = _run_with_k3s(node_pull("agent-1", "k3s-agent", DOMAIN, accept_missing=True, deadline=0),
                                 tmp_path, active="active", pull="echo '401 Unauthorized' >&2; exit 1")  # fmt: skip
    assert unauthorized.returncode == 1 and "401 Unauthorized" in unauthorized.stderr
