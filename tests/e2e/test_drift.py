"""Drift on the real test host: `pulumi refresh` reads back what the program owns, the drift gate fails naming what
drifted, and `pulumi up --refresh` puts it back.

One stack for the module on the session's engine (flux off: the test host serves no Kubernetes API). Each drift case
breaks one thing by hand, as an operator on the server would, and leaves the host repaired. The last test upgrades a
stack made by the previous version of the program (before the observers) and checks that nothing on the host moves.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e import engine as eng_mod
from tests.e2e.clients import stack_config
from tests.e2e.engine import Engine, Run
from tests.e2e.stacks import EngineStack
from tests.e2e.testhost import TestHost

pytestmark = pytest.mark.e2e

STACK = "drift"
SITE_FILE = "/etc/caddy/registry.caddy"
CADDYFILE = "/etc/caddy/Caddyfile"
REGISTRIES_YAML = "/etc/rancher/k3s/registries.yaml"
CHANGED_SINCE_THE_OBSERVERS: dict[str, str] = {
    "host-preflight": "issue 18: the preflight ships as host/steps/host/preflight.sh behind a header (it runs once more)",
}
"""Steps a later commit changes on purpose: on upgrade from the version before the observers they update (and run),
nothing else does."""
ENV_FILE = "/etc/registry/registry.env"
OBSERVERS = ("caddy-site-state", "registry-state", "k3s-trust-state", "maintenance-state")
q = shlex.quote


@dataclass
class Drift(EngineStack):
    """The module's stack, and everything the CLI printed while drift was about (checked for secrets at the end)."""

    printed: list[str] = field(default_factory=list)

    def sh(self, cmd: str, stdin: str | None = None, check: bool = True) -> str:
        return self.clients.sh(cmd, stdin=stdin, check=check).stdout

    def keep(self, run: Run) -> Run:
        self.printed.extend(run.printed)
        return run


@pytest.fixture(scope="module")
def drift(testhost: TestHost, engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drift]:
    s: Drift = Drift.open(
        engine, STACK, testhost, tmp_path_factory.mktemp("drift-project"), stack_config(testhost, flux="false")
    )
    s.clients.trust_pebble()
    try:
        result = s.apply()
        assert result.ok, f"fresh up failed:\n{result.error}"
        yield s
    finally:
        s.cleanup()


def test_right_after_an_up_the_host_shows_no_drift(drift: Drift) -> None:
    since = drift.clients.now()
    preview = drift.keep(drift.preview(refresh=True, expect_no_changes=True))
    assert preview.ok, preview.error
    gate = drift.keep(drift.drift_gate())
    assert gate.ok, gate.text
    # One SSH session per observer and per refresh (preview --refresh and the gate), nothing else.
    assert drift.clients.ssh_logins(since) == 2 * len(OBSERVERS)


def _pull_password_to(value: str) -> Callable[[Drift], object]:
    def edit(s: Drift) -> None:
        # The password travels on stdin; the file is edited in place (mode and owner kept).
        s.sh(
            "python3 -c 'import sys; p = sys.stdin.read(); f = sys.argv[1]; t = open(f).read(); assert p in t; "
            f"open(f, \"w\").write(t.replace(p, sys.argv[2]))' {REGISTRIES_YAML} {q(value)}",
            stdin=s.exports["pullPassword"],
        )

    return edit


@dataclass(frozen=True)
class Case:
    breaks: Callable[[Drift], object]
    observer: str
    """The observer the gate must name."""
    says: str
    """What its drift message says."""
    reruns: tuple[str, ...]
    """The commands `up --refresh` runs again."""
    repaired: str
    """A host command whose output is the same before the break and after the repair."""


CASES = {
    "line-appended-to-the-site-file": Case(
        lambda s: s.sh(f"echo '# edited by hand' >> {SITE_FILE}"),
        "caddy-site-state", f"{SITE_FILE}", ("caddy-site-handover",),
        f"sha256sum {SITE_FILE}; stat -c '%a %U' {SITE_FILE}",
    ),
    "registries-yaml-password-changed": Case(
        _pull_password_to("changed-by-hand"),
        "k3s-trust-state", "entry sha256", ("k3s-trust-file", "k3s-trust-restart"),
        f"sha256sum {REGISTRIES_YAML}; stat -c '%a %U' {REGISTRIES_YAML}",
    ),
    "env-file-mode-0644": Case(
        lambda s: s.sh(f"chmod 0644 {ENV_FILE}"),
        "registry-state", "mode 0644 (expected 0600)", ("registry-container",),
        f"sha256sum {ENV_FILE}; stat -c '%a %U' {ENV_FILE}",
    ),
    "registry-container-stopped": Case(
        lambda s: s.sh("docker stop registry >/dev/null"),
        "registry-state", "running false (expected true)", ("registry-container",),
        "docker inspect -f '{{.State.Running}} {{.Config.Image}} {{.HostConfig.NetworkMode}}' registry",
    ),
    "registry-container-removed": Case(
        lambda s: s.sh("docker rm -f registry >/dev/null"),
        "registry-state", "container registry", ("registry-container",),
        "docker inspect -f '{{.State.Running}} {{.Config.Image}} {{.HostConfig.NetworkMode}}' registry",
    ),
    "gc-timer-disabled": Case(
        lambda s: s.sh("systemctl disable --now registry-gc.timer 2>/dev/null"),
        "maintenance-state", "unit registry-gc.timer", ("maintenance-install",),
        "systemctl is-enabled registry-gc.timer; systemctl is-active registry-gc.timer",
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_drift_fails_the_gate_naming_it_and_up_refresh_repairs_it(drift: Drift, case: str) -> None:
    c = CASES[case]
    before = drift.sh(c.repaired)
    starts = len(drift.clients.starts())
    c.breaks(drift)
    assert drift.sh(c.repaired, check=False) != before, "the break changed nothing"

    gate = drift.keep(drift.drift_gate())
    assert not gate.ok, f"the gate passed on a drifted host:\n{gate.text}"
    print(f"\n--- drift gate, {case}:\n{gate.text}")
    named = {o for o in OBSERVERS if o in gate.text}
    assert named == {c.observer}, gate.text
    assert c.says in gate.text, gate.text
    preview = drift.keep(drift.preview(refresh=True, diff=True))
    assert preview.ok, preview.error
    assert c.says in preview.text and c.observer in preview.text, preview.text
    print(f"--- preview --refresh --diff, {case}:\n{preview.text}")
    # The preview already shows the commands that will run again (their scripts carry the new repair count).
    for name in c.reruns:
        assert preview.ops.get(name) == "update", (name, preview.ops)

    repair = drift.keep(drift.up_refresh())
    assert repair.ok, repair.error
    ran = sorted({e.name for e in repair.executions})
    assert ran == sorted(c.reruns), ran
    assert all(e.ok for e in repair.executions)
    assert drift.sh(c.repaired) == before
    if c.observer == "k3s-trust-state":
        assert len(drift.clients.starts()) == starts + 1  # the repaired file is read by a restarted k3s
    if c.observer == "registry-state":
        drift.clients.wait_registry()

    gate = drift.keep(drift.drift_gate())
    assert gate.ok, f"still drifted after up --refresh:\n{gate.text}"
    again = drift.keep(drift.preview(expect_no_changes=True))
    assert again.ok, again.error  # the repair left nothing for the next up


def test_changes_to_what_the_program_does_not_own_are_not_drift(drift: Drift) -> None:
    saved = {path: drift.sh(f"cat {path}") for path in (CADDYFILE, REGISTRIES_YAML)}
    try:
        drift.sh(f"printf '\\nother.example.test {{\\n\\trespond \"another site\"\\n}}\\n' >> {CADDYFILE}")
        drift.sh(
            "python3 -c 'import sys, yaml; f = sys.argv[1]; d = yaml.safe_load(open(f)); "
            "d.setdefault(\"configs\", {})[\"other.example.test:5000\"] = {\"auth\": {\"username\": \"x\", \"password\": \"y\"}}; "
            f"open(f, \"w\").write(yaml.safe_dump(d))' {REGISTRIES_YAML}"
        )
        assert "other.example.test:5000" in drift.sh(f"cat {REGISTRIES_YAML}")
        gate = drift.keep(drift.drift_gate())
        assert gate.ok, gate.text
    finally:
        for path, text in saved.items():
            drift.sh(f"cat > {path}", stdin=text)
    assert drift.keep(drift.drift_gate()).ok


def test_no_secret_in_anything_printed_about_drift(drift: Drift) -> None:
    secrets = [v for v in drift.secrets().values() if v]
    secrets.append(drift.sh(f"cat {ENV_FILE}").strip())
    secrets += [line.split("=", 1)[1] for line in drift.sh(f"cat {ENV_FILE}").splitlines() if "SECRET" in line]
    text = "\n".join(drift.printed)
    assert len(drift.printed) > 100 and "drift" in text
    leaked = [s[:4] + "..." for s in secrets if len(s) >= 8 and s in text]
    assert not leaked, leaked


def test_upgrading_a_stack_of_the_previous_version_moves_nothing(
    drift: Drift, engine: Engine, testhost: TestHost, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Made by the version before the observers, the stack upgrades with four creations; no command runs but the
    ones changed on purpose since (CHANGED_SINCE_THE_OBSERVERS), and the registry container stays the same."""
    drift.cleanup()  # the host is the module's; its stack goes first
    old = eng_mod.previous_version(tmp_path_factory.mktemp("previous-version"))
    assert not (old / "providers").exists()
    folder: Path = tmp_path_factory.mktemp("upgrade-project")
    s: EngineStack = EngineStack.open(engine, "upgrade", testhost, folder, dict(drift.config), source=old)
    try:
        first = s.apply()
        assert first.ok, first.error
        assert not {o for o in OBSERVERS if o in s.stack.resources()}
        container = testhost.exec("docker inspect -f '{{.Id}}' registry").stdout
        eng_mod.make_project(folder)  # the same stack, now this version of the program
        preview = s.preview(diff=True)
        assert preview.ok, preview.error
        expected = {**{o: "create" for o in OBSERVERS}, **{n: "update" for n in CHANGED_SINCE_THE_OBSERVERS}}
        assert preview.changed() == expected, preview.changed()
        assert preview.changes.get("create") == len(OBSERVERS), preview.changes
        since = s.clients.now()
        up = s.apply()
        assert up.ok, up.error
        assert up.changed() == expected, up.changed()
        assert {e.name for e in up.executions} == set(CHANGED_SINCE_THE_OBSERVERS), up.executions
        assert s.clients.ssh_logins(since) == len(CHANGED_SINCE_THE_OBSERVERS)  # one login per re-run step
        assert testhost.exec("docker inspect -f '{{.Id}}' registry").stdout == container
        gate = s.drift_gate()
        assert gate.ok, gate.text
    finally:
        t0 = time.monotonic()
        s.cleanup()
        print(f"\nupgrade stack destroyed in {time.monotonic() - t0:.1f}s")

