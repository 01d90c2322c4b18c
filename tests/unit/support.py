"""Helpers shared by the unit tests: the harness's runs, the passwords they generated, and where secrets show."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.harness import ROOT, ProgramRun, is_secret, reveal, run_program

RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"
COMMAND = "command:remote:Command"

HOST = "203.0.113.10"
DOMAIN = "registry.example.com"
TYPICAL: dict[str, Any] = {
    "host": HOST,
    "domain": DOMAIN,
    "acmeEmail": "ops@example.com",
    "registryImage": "registry:2.8.3",
    "allowlist": ["198.51.100.0/24", "2001:db8::/32"],
    "fluxImages": ["ruby-demo-app", "team/api"],
}
"""A typical stack: ubuntu over sudo, an allowlist, two Flux images (one nested), everything else default."""

PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAAunit-test-only\n-----END OPENSSH PRIVATE KEY-----\n"
KUBECONFIG = "apiVersion: v1\nkind: Config\nclusters:\n- name: unit-test-only\n  cluster: {server: 'https://10.0.0.1:6443'}\n"


def shellcheck(tmp_path: Path, scripts: dict[str, str]) -> None:
    """Assert every script passes shellcheck as POSIX sh, at style severity."""
    import subprocess

    files = []
    for name, text in sorted(scripts.items()):
        path = tmp_path / f"{name}.sh"
        path.write_text(text)
        files.append(str(path))
    result = subprocess.run(
        [tool("shellcheck"), "--shell=sh", "--severity=style", *files], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def tool(name: str) -> str:
    """A tool installed in this virtualenv (requirements-dev.txt), else from PATH; fails loudly when missing."""
    venv_bin = str(Path(sys.executable).parent)
    found = shutil.which(name, path=os.pathsep.join([venv_bin, str(ROOT / ".venv" / "bin"), os.environ.get("PATH", "")]))
    assert found, f"{name} not found next to {sys.executable} nor on PATH: pip install -r requirements-dev.txt"
    return found


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def generated(run: ProgramRun, name: str) -> dict[str, Any]:
    """The outputs (result, bcryptHash) of the RandomPassword `name` as the run left them in state."""
    outputs: dict[str, Any] = reveal(run.state[f"{RANDOM_PASSWORD}::{name}"]["outputs"])
    return outputs


def password(run: ProgramRun, name: str) -> str:
    value: str = generated(run, name)["result"]
    return value


def exposed_strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string reachable without passing through a secret wrapper, with its path."""
    if is_secret(value):
        return
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from exposed_strings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from exposed_strings(item, f"{path}[{index}]")


class Programs:
    """Memoised `run_program` (~1 s each): identical (config, state, preview) requests share one run."""

    def __init__(self) -> None:
        self._runs: dict[str, ProgramRun] = {}

    def run(self, config: dict[str, Any], state: dict[str, Any] | None = None, preview: bool = False) -> ProgramRun:
        key = json.dumps([config, state, preview], sort_keys=True)
        if key not in self._runs:
            self._runs[key] = run_program(config, state=state, preview=preview)
        return self._runs[key]

    def ok(self, config: dict[str, Any], state: dict[str, Any] | None = None, preview: bool = False) -> ProgramRun:
        """A run that must succeed."""
        run = self.run(config, state, preview)
        assert run.error is None, run.error
        return run
