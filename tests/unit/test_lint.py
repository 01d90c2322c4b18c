"""Static checks: every shell script the program sends passes shellcheck; ruff, mypy and workflow schemas are clean."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from renderers.caddy_site import caddy_site_settle
from tests.harness import ROOT, ProgramRun
from tests.unit.support import TYPICAL, Programs, shellcheck, tool

# Together these reach every branch of the script renderers: sudo or not, k3s checks on or off, every option set.
VARIANTS = {
    "root, every option": {
        **TYPICAL, "sshUser": "root", "sshPort": "2222", "registryCaFile": "/etc/rancher/k3s/registry-ca.pem",
        "acmeCaUrl": "https://ca.test:14000/dir", "acmeCaRoot": "/etc/caddy/test-ca.pem", "k3sService": "k3s-agent",
        "dataDir": "/srv/data/registry@2", "caddySiteFile": "/etc/caddy/sites/registry+1.caddy",
    },
    "ubuntu, every option": {
        **TYPICAL, "registryCaFile": "/etc/rancher/k3s/registry-ca.pem", "acmeCaUrl": "https://ca.test:14000/dir",
        "acmeCaRoot": "/etc/caddy/test-ca.pem", "retention": "true",
    },
    "ubuntu, no k3s or flux": {**TYPICAL, "k3sTrust": "false", "flux": "false"},
    "ubuntu, registry:3, S3 with a private CA, 3 replicas": {
        **TYPICAL, "registryImage": "registry:3", "registryReplicas": "3", "storage": "s3",
        "s3Endpoint": "https://s3.example.com", "s3Bucket": "registry", "s3AccessKey": "AKIALINT",
        "s3SecretKey": "lint-only", "s3CaFile": "/etc/ssl/s3-ca.pem",
    },
}


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


@pytest.mark.parametrize("config", VARIANTS.values(), ids=VARIANTS.keys())
def test_every_script_sent_to_the_host_passes_shellcheck(
    programs: Programs, tmp_path: Path, config: dict[str, object]
) -> None:
    scripts = sent_scripts(programs.ok(config))
    expected = {"host-preflight.create", "host-data-dir.create", "registry-container.create", "caddy-site-file.delete"}
    assert expected <= set(scripts)
    shellcheck(tmp_path, scripts)


def test_grace_period_scripts_pass_shellcheck(tmp_path: Path) -> None:
    """The site step during a grace period (only sent after a rotation) and the expiry script it installs."""
    settle = caddy_site_settle(
        "/etc/caddy/Caddyfile", "/etc/caddy/sites/registry+1.caddy", "registry.example.test", "127.0.0.1:5000", 1_900_000_000
    )
    expire = settle.split("<<'REGISTRY_EXPIRE'\n", 1)[1].split("\nREGISTRY_EXPIRE\n", 1)[0]
    assert "grace period over" in expire
    shellcheck(tmp_path, {"settle-grace": settle, "expire": expire})


def test_shellcheck_is_not_vacuous(tmp_path: Path) -> None:
    script = tmp_path / "bad.sh"
    script.write_text("set -eu\nrm -rf $dir/*\n")
    result = subprocess.run([tool("shellcheck"), "--shell=sh", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "SC2086" in result.stdout


def test_ruff_is_clean() -> None:
    result = subprocess.run(
        [tool("ruff"), "check", "--no-cache", "--output-format=concise", "."],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_is_clean() -> None:
    result = subprocess.run(
        [tool("mypy")], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_github_workflows_match_the_schema() -> None:
    workflows = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
    if not workflows:
        pytest.skip("no .github/workflows/*.yml yet: nothing to validate")
    result = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *map(str, workflows)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_projects_own_shell_scripts_pass_shellcheck() -> None:
    """The entry points and build scripts (dev.sh, toolchain.sh, .ci/run, the test host's scripts), as files."""
    files = sorted(
        str(p.relative_to(ROOT)) for p in [*ROOT.glob("scripts/*.sh"), *ROOT.glob("tests/e2e/**/*.sh"), ROOT / ".ci/run"]
    )
    assert "scripts/toolchain.sh" in files and "scripts/dev.sh" in files, files
    proc = subprocess.run([tool("shellcheck"), "-x", *files], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:]
