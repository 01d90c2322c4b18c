"""The project files agree with the settings object and each other: schema, stack files, README and docs/ links."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from settings.load import REQUIRED, parse_settings
from settings.model import Settings
from settings.schema import SCHEMA

ROOT = Path(__file__).resolve().parents[2]
PROJECT = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())


def test_pulumi_yaml_schema_lists_exactly_the_settings_with_type_description_and_default() -> None:
    assert set(PROJECT["config"]) == set(SCHEMA)
    for key, spec in PROJECT["config"].items():
        assert {"type", "description", "default"} <= set(spec), key
        assert spec["description"].strip(), key


@pytest.mark.parametrize("key", sorted(k for k in SCHEMA if k not in REQUIRED))
def test_pulumi_yaml_defaults_equal_the_program_defaults(key: str) -> None:
    raw = PROJECT["config"][key]["default"]
    parsed = parse_settings({"host": "192.0.2.1", "domain": "registry.example.com", "acmeEmail": "ops@example.com", key: raw if isinstance(raw, str) else json.dumps(raw)})
    field_name = SCHEMA[key][0]
    assert getattr(parsed, field_name) == getattr(Settings(host="192.0.2.1", domain="registry.example.com", acme_email="ops@example.com"), field_name)


@pytest.mark.parametrize("stack", ["prod", "dev"])
def test_stack_files_hold_only_valid_known_settings(stack: str) -> None:
    config = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
    raw = {k.split(":", 1)[1]: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
    settings = parse_settings(raw)
    assert settings.host


def test_prod_stack_carries_the_seed_values() -> None:
    config = yaml.safe_load((ROOT / "Pulumi.prod.yaml").read_text())["config"]
    settings = parse_settings({k.split(":", 1)[1]: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()})
    assert (settings.domain, settings.acme_email, settings.push_user, settings.ssh_user) == (
        "registry.lvs.me.uk", "letsencrypt@lvs.me.uk", "robot_user", "ubuntu")
    assert (settings.flux_secret_name, settings.flux_images, settings.flux_interval) == (
        "registry-credentials", ("ruby-demo-app",), "1m")
    # The seed deployed with `scp ubuntu@app.lvs.me.uk`: SSH goes to the server's own name, not the registry's.
    assert settings.host == "app.lvs.me.uk"


@pytest.mark.parametrize("key", sorted(REQUIRED))
def test_required_settings_have_an_empty_default_in_pulumi_yaml(key: str) -> None:
    assert PROJECT["config"][key]["default"] == ""  # an empty default is "not set": no stack borrows a value


def test_readme_config_reference_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [key for key in SCHEMA if f"| `{key}` |" not in readme]
    assert not missing


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/dev.sh test" in readme
    assert "exec bash scripts/dev.sh test" in ci


def _toolchain_pins() -> dict[str, str]:
    """NAME_VERSION=... lines of scripts/toolchain.sh, the one place the engine's versions are pinned."""
    pins = {}
    for line in (ROOT / "scripts" / "toolchain.sh").read_text().splitlines():
        name, sep, rest = line.partition("_VERSION=")
        if sep and name.isupper() and name.isalpha():
            pins[name.lower()] = rest.split()[0]
    return pins


def test_requirements_pin_the_provider_sdks_at_the_versions_the_toolchain_builds() -> None:
    requirements = dict(
        line.split("==", 1) for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line
    )
    pins = _toolchain_pins()
    assert {"command", "random", "kubernetes", "pulumi"} <= set(pins), pins
    for provider in ("command", "random", "kubernetes"):
        assert requirements[f"pulumi-{provider}"] == pins[provider], provider


def _verify(sources: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REGTEST_PULUMI_SOURCES": str(sources)}
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "toolchain.sh"), "verify"], env=env, capture_output=True, text=True, check=False
    )


def _fake_sources(tmp_path: Path) -> Path:
    """A sources folder whose archives carry the pinned digests' names but not their bytes."""
    sources = tmp_path / "sources"
    sources.mkdir()
    sums = []
    for line in (ROOT / "scripts" / "toolchain.sh").read_text().splitlines():
        words = line.strip().strip('"').split()
        if len(words) == 2 and len(words[0]) == 64 and words[1].endswith(".tar.gz"):
            (sources / words[1]).write_bytes(b"not the archive")
            sums.append(f"{words[0]}  {words[1]}")
    (sources / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    assert len(sums) == 5, sums
    return sources


def test_toolchain_refuses_an_altered_archive_naming_it(tmp_path: Path) -> None:
    proc = _verify(_fake_sources(tmp_path))
    assert proc.returncode != 0
    assert "altered archive" in proc.stderr and "pulumi-language-python-v3.259.0.tar.gz" in proc.stderr, proc.stderr


def test_toolchain_refuses_a_missing_archive_naming_it(tmp_path: Path) -> None:
    sources = _fake_sources(tmp_path)
    (sources / "pulumi-language-python-v3.259.0.tar.gz").unlink()
    proc = _verify(sources)
    assert proc.returncode != 0
    assert "missing archive" in proc.stderr and "pulumi-language-python-v3.259.0.tar.gz" in proc.stderr, proc.stderr


def test_toolchain_refuses_a_folder_that_does_not_exist(tmp_path: Path) -> None:
    proc = _verify(tmp_path / "nowhere")
    assert proc.returncode != 0 and "REGTEST_PULUMI_SOURCES" in proc.stderr, proc.stderr


def test_an_engine_project_folder_links_every_package_the_program_imports_and_the_shipped_files() -> None:
    """tests/e2e/engine.py builds each stack's project folder from PROGRAM_FILES: a package missing there breaks
    every real-engine run with an ImportError the unit tier would never see."""
    import ast

    from tests.e2e.engine import PROGRAM_FILES

    local = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    imported: set[str] = set()
    for source in [ROOT / "__main__.py", *ROOT.glob("components/*.py"), *ROOT.glob("renderers/*.py"), *ROOT.glob("settings/*.py")]:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
    assert {"components", "renderers", "settings"} <= imported & local <= set(PROGRAM_FILES)
    assert "host" in PROGRAM_FILES and (ROOT / "host").is_dir()


DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "bench" / "README.md", ROOT / "tests/e2e/README.md"])
LINK = re.compile(r"\]\((?!https?://)([^)#\s]*)(?:#([\w-]+))?\)")


def _anchors(path: Path) -> set[str]:
    """GitHub's anchor for every heading of a Markdown file (fenced code skipped)."""
    anchors, fenced = set(), False
    for line in path.read_text().splitlines():
        fenced ^= line.startswith("```")
        heading = re.match(r"#{1,6} (.*)", line)
        if heading and not fenced:
            anchors.add(re.sub(r"[^\w\- ]", "", heading[1].strip().lower()).replace(" ", "-"))
    return anchors


def test_every_relative_link_in_the_docs_reaches_a_file_and_heading() -> None:
    broken, checked = [], 0
    for doc in DOCS:
        for target, anchor in LINK.findall(doc.read_text()):
            path = (doc.parent / target).resolve() if target else doc
            checked += 1
            if not path.exists() or (anchor and path.suffix == ".md" and anchor not in _anchors(path)):
                broken.append(f"{doc.relative_to(ROOT)}: ({target}#{anchor})")
    assert checked > 20 and not broken, broken


@pytest.mark.parametrize(
    ("doc", "marker"),
    [("README.md", "real-server-steps"), ("docs/operations.md", "interrupted-update-steps")],
)
def test_the_blocks_the_engine_tests_run_are_where_they_read_them(doc: str, marker: str) -> None:
    """tests/e2e/test_engine.py runs these blocks verbatim; a move of the section must move its reader too."""
    assert re.search(rf"<!-- {marker} -->\n```sh\n.+?```", (ROOT / doc).read_text(), re.S), (doc, marker)


def test_application_ci_pushes_with_its_own_secret_and_holds_no_pulumi_token() -> None:
    app = yaml.safe_load((ROOT / "docs" / "examples" / "app-image.yml").read_text())
    text = json.dumps(app)
    assert "PULUMI_ACCESS_TOKEN" not in text and "pulumi" not in text.lower()
    assert "secrets.REGISTRY_PUSH_PASSWORD" in text and "--password-stdin" in text
    deploy = yaml.safe_load((ROOT / ".github" / "workflows" / "deploy.yml").read_text())
    [step] = [s for s in deploy["jobs"]["up"]["steps"] if "push credential" in s.get("name", "")]
    assert step["env"]["GH_TOKEN"] == "${{ secrets.APP_SECRETS_TOKEN }}"
    # The password reaches gh on stdin (printf is a shell builtin): never in an argument.
    assert '| gh secret set REGISTRY_PUSH_PASSWORD --repo "$repo"' in step["run"]
    assert "--body \"$password\"" not in step["run"] and "::add-mask::$password" in step["run"]
