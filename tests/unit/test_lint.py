"""Static checks: shellcheck (scripts sent, .sh under host/), module and literal length, ruff, mypy, workflow schemas."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

from tests.harness import ROOT
from tests.unit.support import TYPICAL, Programs, sent_scripts, shellcheck, tool

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


@pytest.mark.parametrize("config", VARIANTS.values(), ids=VARIANTS.keys())
def test_every_script_sent_to_the_host_passes_shellcheck(
    programs: Programs, tmp_path: Path, config: dict[str, object]
) -> None:
    scripts = sent_scripts(programs.ok(config))
    expected = {"host-preflight.create", "host-data-dir.create", "registry-container.create", "caddy-site-file.delete"}
    assert expected <= set(scripts)
    shellcheck(tmp_path, scripts)


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
    workflows = sorted((ROOT / ".github" / "workflows").glob("*.y*ml")) + [ROOT / "docs" / "examples" / "app-image.yml"]
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


SHIPPED_SCRIPTS = sorted((ROOT / "host").rglob("*.sh"))


def test_every_shipped_shell_file_passes_shellcheck_as_a_file() -> None:
    """host/**/*.sh as they are on disk (host/.shellcheckrc: POSIX sh; their header assigns the values)."""
    names = [str(p.relative_to(ROOT)) for p in SHIPPED_SCRIPTS]
    assert {"host/usr/local/sbin/registry-maintenance.sh", "host/steps/verify/check.sh"} <= set(names), names
    proc = subprocess.run(
        [tool("shellcheck"), "--severity=style", *names], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr


def test_the_shipped_shellcheck_settings_still_catch_a_real_mistake(tmp_path: Path) -> None:
    (tmp_path / ".shellcheckrc").write_text((ROOT / "host" / ".shellcheckrc").read_text())
    (tmp_path / "bad.sh").write_text("rm -rf $dir/*\n")
    proc = subprocess.run([tool("shellcheck"), "bad.sh"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "SC2086" in proc.stdout, proc.stdout


PROGRAM_PYTHON = sorted(
    [ROOT / "__main__.py", *(p for d in ("components", "providers", "renderers", "settings", "host") for p in (ROOT / d).rglob("*.py"))]
)
SHIPS_AS_ONE_FILE = {ROOT / "host/usr/local/lib/registry-maintenance/retention.py"}
"""Python the host runs as a single file (python3 -I FILE): splitting it would change what lands on the host."""
MAX_MODULE_LINES = 400
MAX_LITERAL_LINES = 40


def long_literals(path: Path) -> list[str]:
    """`line (N lines)` for every string literal (f-strings whole) spanning more than MAX_LITERAL_LINES lines."""
    spans = {
        (node.lineno, node.end_lineno or node.lineno)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        if isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str | bytes))
    }
    return [f"{start} ({end - start + 1} lines)" for start, end in sorted(spans) if end - start >= MAX_LITERAL_LINES]


def test_no_program_module_is_over_400_lines() -> None:
    assert len(PROGRAM_PYTHON) > 20, PROGRAM_PYTHON
    long = {
        str(p.relative_to(ROOT)): n
        for p in PROGRAM_PYTHON
        if p not in SHIPS_AS_ONE_FILE and (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"split these modules (at most {MAX_MODULE_LINES} lines): {long}"


def test_no_python_string_literal_is_over_40_lines() -> None:
    """A longer text is a file of its own (a shell body under host/, a template) rather than Python: in the program,
    the tests and the benchmarks alike."""
    python = [p for p in ROOT.rglob("*.py") if not {".venv", ".e2e", ".git"} & set(p.relative_to(ROOT).parts)]
    assert set(PROGRAM_PYTHON) < set(python) and ROOT / "bench" / "_fronts.py" in python
    long = [f"{p.relative_to(ROOT)}:{hit}" for p in python for hit in long_literals(p)]
    assert not long, long


def test_the_literal_check_sees_a_long_string(tmp_path: Path) -> None:
    def lines(n: int) -> str:  # the body of a triple-quoted literal that spans n lines
        return "\n".join(f"line {i}" for i in range(n))

    probe = tmp_path / "probe.py"
    probe.write_text(f'A = """{lines(40)}"""\nX = f"""{{A}}{lines(41)}"""\nY = b"""{lines(42)}"""\n')
    assert long_literals(probe) == ["41 (41 lines)", "82 (42 lines)"]
