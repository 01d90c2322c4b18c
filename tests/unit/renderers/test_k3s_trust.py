"""renderers/k3s_trust.py: the trust file step run with a local python3."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from renderers.k3s_trust import trust_file_remove, trust_file_write
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
