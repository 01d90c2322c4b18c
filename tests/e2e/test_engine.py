"""What only a real engine shows: previews of a new stack, bad settings refused before any remote change, the
README's steps for a real server run as written, and an `up` whose CLI is killed mid-update recovered by docs/operations.md.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import engine as eng_mod
from tests.e2e.clients import Clients, stack_config
from tests.e2e.engine import Engine
from tests.e2e.stacks import EngineStack
from tests.e2e.testhost import TestHost

pytestmark = pytest.mark.e2e

ROOT = eng_mod.ROOT


@pytest.fixture
def clients(testhost: TestHost) -> Clients:
    """Clients of the test host, with Pebble's roots where registryCaFile points (as a user installs their CA)."""
    c = Clients(testhost)
    c.trust_pebble()
    return c


def _fresh(engine: Engine, tmp_path: Path, name: str, config: dict[str, Any]) -> eng_mod.Stack:
    return eng_mod.Stack(engine, name, eng_mod.make_project(tmp_path / "project"), config)


def _logins_during(clients: Clients, action: Any) -> tuple[Any, int]:
    since = clients.now()
    result = action()
    return result, clients.ssh_logins(since)


@pytest.mark.parametrize(
    "variant",
    ["generated", "existingPushPassword", "unreachable"],
)
def test_preview_of_a_new_stack_succeeds_and_touches_nothing(
    variant: str, testhost: TestHost, engine: Engine, tmp_path: Path
) -> None:
    """What a PR preview of a fresh stack runs. It used to fail: `triggers[0]: malformed secret: missing value`."""
    config = stack_config(testhost, flux="false")
    if variant == "existingPushPassword":
        config["existingPushPassword"] = "hand-made-password-of-ci"
    if variant == "unreachable":
        config["sshPort"] = "1"  # nothing listens there
    stack = _fresh(engine, tmp_path, f"preview-{variant.lower()}", config)
    run, logins = _logins_during(Clients(testhost), stack.preview)
    assert run.ok, run.error
    assert "malformed secret" not in run.text
    assert run.changes.get("create", 0) >= 15, run.changes
    assert logins == 0  # a preview runs no command on the server
    assert stack.resources() == {}  # and records nothing


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("sshPort", "abc", ["'sshPort' must be of type 'integer'"]),  # Pulumi's own check of the project schema
        ("sshPrt", "22", ["registry:sshPrt is not a known setting; known settings: acmeCaRoot"]),
        ("domain", "registry example.com", ["registry:domain = 'registry example.com' is invalid; accepted:"]),
    ],
)
def test_bad_setting_fails_before_any_remote_change_naming_the_key(
    key: str, value: str, named: list[str], testhost: TestHost, engine: Engine, tmp_path: Path
) -> None:
    stack = _fresh(engine, tmp_path, f"bad-{key.lower()}", stack_config(testhost, flux="false"))
    stack.configure({key: value})  # as `pulumi config set KEY VALUE`
    run, logins = _logins_during(Clients(testhost), stack.up)
    assert not run.ok
    assert all(n in run.error for n in named), run.error[-3000:]
    assert "Traceback" not in run.error  # the message, not the program's stack
    assert logins == 0
    assert [r for r in stack.resources() if not r.startswith("registry-")] == []  # nothing but the stack itself


# --- the README's steps for a real server --------------------------------------------------------------------------

README_BLOCK = re.compile(r"<!-- real-server-steps -->\n```sh\n(?P<body>.*?)```", re.S)


def readme_steps() -> str:
    match = README_BLOCK.search((ROOT / "README.md").read_text())
    assert match, "README.md has no block marked <!-- real-server-steps -->"
    return match.group("body")


def test_readme_steps_for_a_real_server_run_as_written(
    testhost: TestHost, engine: Engine, clients: Clients, tmp_path: Path
) -> None:
    """A new user's checkout: the committed files only, a virtualenv from requirements.txt alone, the README's lines
    run verbatim by bash. The one difference: Pulumi.prod.yaml points at the test host, not the production server."""
    checkout = tmp_path / "checkout"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, checkout / name)
    import yaml

    settings = {k: v for k, v in stack_config(testhost, flux="false").items() if k not in eng_mod.SECRET_KEYS}
    (checkout / "Pulumi.prod.yaml").write_text(
        yaml.safe_dump({"config": {f"registry:{k}": v for k, v in settings.items()}})
    )
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    key = home / ".ssh" / "registry_deploy"
    key.write_text(testhost.private_key)
    key.chmod(0o600)
    env = {
        **os.environ, **engine.env(),
        "HOME": str(home), "PULUMI_CONFIG_PASSPHRASE": "readme-test-passphrase",
    }  # fmt: skip
    for name in ("PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE_FILE", "VIRTUAL_ENV"):
        env.pop(name, None)  # the README's own lines choose the backend
    env["PULUMI_HOME"] = str(engine.home)  # the plugins this machine built (a user's CLI downloads them)
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", readme_steps()], cwd=checkout, env=env, capture_output=True, text=True,
        timeout=1800, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "pushPassword" in proc.stdout and "[secret]" in proc.stdout
    assert clients.http("/v2/").status == 401  # the site is live and asks for credentials
    env["PULUMI_BACKEND_URL"] = f"file://{home}/.pulumi-registry-state"  # what the README's lines chose
    destroy = subprocess.run(
        ["pulumi", "destroy", "--yes", "--stack", "prod", "--non-interactive"], cwd=checkout, env=env,
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert destroy.returncode == 0, destroy.stdout[-3000:] + destroy.stderr[-3000:]


# --- a killed CLI -------------------------------------------------------------------------------------------------


def test_cli_killed_during_the_container_step_is_recovered_by_the_documented_steps(
    testhost: TestHost, engine: Engine, clients: Clients, tmp_path: Path
) -> None:
    s: EngineStack = EngineStack.open(
        engine, "killed", testhost, tmp_path / "project", stack_config(testhost, flux="false")
    )
    c = s.clients
    try:
        first = s.apply()
        assert first.ok, first.error
        auth = c.authfile("killed-push", s.exports["dockerConfigJson"])
        c.push(c.make_image("killed"), "e2e/killed:1", auth)
        digest = c.digest("e2e/killed:1", auth)
        c.sh("docker tag registry:2 registry:2-killed")

        killed = threading.Event()

        def kill_in_container_step(event: str, name: str, op: str) -> None:
            if event == "before" and name == "registry-container" and not killed.is_set():
                time.sleep(0.5)  # the step's command is running on the host
                killed.set()
                eng_mod.kill_cli()

        run = s.apply(hook=kill_in_container_step, registryImage="registry:2-killed")
        assert killed.is_set() and not run.ok
        # docs/operations.md's recovery, verbatim (section "If an update was interrupted").
        recovery = f"pulumi stack select {s.stack.name}\n" + _documented_recovery()
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", recovery], cwd=s.stack.project_dir,
            env={**os.environ, **engine.env()}, capture_output=True, text=True,
            timeout=900, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        converged = s.apply()
        assert converged.ok, converged.error
        again = s.preview(expect_no_changes=True)
        assert again.ok, again.error
        assert c.inspect_container()["Config"]["Image"] == "registry:2-killed"
        c.wait_registry()
        assert c.digest("e2e/killed:1", auth) == digest
    finally:
        s.cleanup()


RECOVERY_BLOCK = re.compile(r"<!-- interrupted-update-steps -->\n```sh\n(?P<body>.*?)```", re.S)


def _documented_recovery() -> str:
    match = RECOVERY_BLOCK.search((ROOT / "docs" / "operations.md").read_text())
    assert match, "docs/operations.md has no block marked <!-- interrupted-update-steps -->"
    return match.group("body")
