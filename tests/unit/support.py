"""Helpers shared by the unit tests: the harness's runs, the passwords they generated, and where secrets show."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.registry import CONTAINER, ENV_FILE
from renderers import shipped
from renderers.maintenance_script import (
    MaintenanceSpec,
)
from renderers.registries_yaml import registries_entries
from renderers.registry_env import StorageSpec
from renderers.retention_config import (
    RetentionSpec,
)
from settings.model import SEMVER_TAG
from tests.harness import ROOT, ProgramRun, Registration, is_secret, reveal, run_program

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
    "kubeContext": "k3s-prod",
}
"""A typical stack: ubuntu over sudo, an allowlist, two Flux images (one nested), everything else default."""

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
KEPT = "ci-has-used-this-one-for-years"
"""A push password CI already holds, kept by `existingPushPassword`."""
PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAAunit-test-only\n-----END OPENSSH PRIVATE KEY-----\n"
KUBECONFIG = "apiVersion: v1\nkind: Config\nclusters:\n- name: unit-test-only\n  cluster: {server: 'https://10.0.0.1:6443'}\n"


def shellcheck(tmp_path: Path, scripts: dict[str, str]) -> None:
    """Assert every script passes shellcheck as POSIX sh, at style severity."""

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


# --- shared test data and helpers of several test modules ---------------------------------------------------

BASE = {"host": HOST, "domain": "registry.example.com", "acmeEmail": "ops@example.com"}


def _waits_for(run: ProgramRun, name: str) -> set[str]:
    """Every resource `name` waits for, directly or through others (components stand for their children)."""
    by_urn = {r.urn: r for r in run.registrations}
    children: dict[str, list[str]] = {}
    for r in run.registrations:
        children.setdefault(r.parent, []).append(r.urn)
    seen: set[str] = set()
    todo = list(run.named(name).dependencies)
    while todo:
        urn = todo.pop()
        if urn in seen or urn not in by_urn:
            continue
        seen.add(urn)
        todo += by_urn[urn].dependencies + children.get(urn, [])
    return {by_urn[u].name for u in seen}


def sent_scripts(run: ProgramRun) -> dict[str, str]:
    """resource.operation -> the script inside `[sudo -n] sh -c '<script>'`."""
    scripts = {}
    for command in run.commands:
        for op in ("create", "update", "delete"):
            line = command.value(op)
            if line:
                argv = shlex.split(line)
                assert argv[:-1] in (["sh", "-c"], ["sudo", "-n", "sh", "-c"]), line
                scripts[f"{command.name}.{op}"] = argv[-1]
    return scripts


NODES: list[dict[str, Any]] = [
    {"name": "agent-1", "address": "10.0.0.21"},
    {"name": "server-2", "address": "10.0.0.12", "sshPort": 2222, "user": "root", "service": "k3s"},
    {"name": "agent-3", "address": "agent-3.example.com", "registriesFile": "/etc/k3s/registries.yaml"},
]


SPEC = MaintenanceSpec(
    container=CONTAINER,
    image="registry:2.8.3",
    port=5000,
    data_dir="/srv/data/registry",
    env_file=ENV_FILE,
    backup_dir="/srv/backups/registry",
    backup_keep=7,
)
GC_SCHEDULE, BACKUP_SCHEDULE = "Sun *-*-* 03:00:00", "*-*-* 02:30:00"


def heredoc_files(install: str) -> dict[str, str]:
    """target path -> content, from the install script's here-documents and install lines."""
    lines = install.split("\n")
    by_tmp: dict[str, str] = {}
    i = 0
    while i < len(lines):
        if lines[i].startswith("cat > ") and lines[i].endswith("<<'REGISTRY_OPS_FILE_END'"):
            tmp = lines[i].split()[2]
            end = lines.index("REGISTRY_OPS_FILE_END", i)
            by_tmp[tmp] = "\n".join(lines[i + 1 : end]) + "\n"
            i = end
        i += 1
    files = {}
    for line in lines:
        if line.startswith("install -m "):
            _, _, _mode, tmp, target = shlex.split(line)
            files[target] = by_tmp[f'"{tmp}"']
    return files


def sudo_script(command: Registration, op: str = "create") -> str:
    """The script inside a command's `sudo -n sh -c '...'`."""
    argv = shlex.split(command.value(op))
    assert argv[:-1] == ["sudo", "-n", "sh", "-c"]
    return argv[-1]


PULL_USER, PULL_PASSWORD = "k3s_pull", "PullPassw0rdForUnitTestsOnly0002"

if TYPE_CHECKING:  # the shipped files, by the names pyproject.toml's mypy_path gives them
    import retention
else:
    retention = shipped.module(shipped.RETENTION)


Policy = retention.Policy
Rule = retention.Rule
DEFAULT_KEEP = (SEMVER_TAG, "latest")
RETENTION_SPEC = MaintenanceSpec(
    container=CONTAINER, image="registry:2.8.3", port=5000, data_dir="/srv/data/registry", env_file=ENV_FILE,
    backup_dir="/srv/backups/registry", backup_keep=7,
    retention=RetentionSpec(enabled=True, rules=(("*", 10),), keep_tags=DEFAULT_KEEP, k3s=True),
)


ACCESS, SECRET = "AKIAUNITTESTONLY", "unit/test+secret=key"
S3: dict[str, str] = {
    "storage": "s3", "s3Endpoint": "https://s3.example.com:9000", "s3Bucket": "registry-data", "s3AccessKey": ACCESS,
    "s3SecretKey": SECRET,
}  # fmt: skip
STORAGE = StorageSpec(kind="s3", endpoint="http://127.0.0.1:8333", region="garage", bucket="reg", root_directory="/r")
S3_SPEC = MaintenanceSpec(
    container=CONTAINER, image="registry:3", port=5000, data_dir="/srv/data/registry", env_file=ENV_FILE,
    backup_dir="/srv/backups/registry", backup_keep=7, distribution=3, storage=STORAGE,
)  # fmt: skip
REPLICAS = MaintenanceSpec(**{**S3_SPEC.__dict__, "replicas": 3})


if TYPE_CHECKING:  # the shipped files, by the names pyproject.toml's mypy_path gives them
    import caddy_takeover
    import registries_merge
else:
    caddy_takeover = shipped.module(shipped.CADDY_TAKEOVER)
    registries_merge = shipped.module(shipped.REGISTRIES_MERGE)


OWNED = registries_entries(DOMAIN, "k3s_pull", 'p"w:1 #x', "/etc/rancher/k3s/registry-ca.pem")
HAND_MADE = f"""# set up by hand
mirrors:
  docker.io:
    endpoint: ["https://mirror.example.test"]
  {DOMAIN}:
    endpoint:
      - https://{DOMAIN}
configs:
  "other.example.test:5000":
    auth:
      username: someone   # keep me
      password: 'their secret'

  {DOMAIN}:
    auth:
      username: robot_user
      password: plaintext
    tls:
      insecure_skip_verify: true
  third.example.test:
    auth: {{username: x, password: y}}
"""
