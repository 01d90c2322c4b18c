"""Credential rotation as a handover, replayed over SSH against the test host with clients running throughout.

Three clients loop while the rotation's update runs:

* k3s: `k3s crictl pull` every second through the k3s stand-in, which uses what registries.yaml held when k3s
  last started (as k3s does);
* Flux: a STAND-IN for image-reflector-controller (no Kubernetes API here): every 2 s it lists tags with the
  `.dockerconfigjson` the Flux secret holds at that moment, i.e. the one the replay last recorded for
  `flux-secret` (the replay records Kubernetes resources, it does not apply them);
* CI: pushes in a loop with the push credential read from the stack outputs before the update.

The replay's step hook keeps the clients in step with the update instead of relying on timing: at chosen steps
it waits until each loop has completed another round. With the default grace period the previous credentials are
refused by the update's last site step, so the CI loop (a job that outlives the update) stops just before it;
with a grace period it runs through the whole update and past it.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.e2e import apply as e2e_apply
from tests.e2e import replay
from tests.e2e.clients import Clients, stack_config
from tests.e2e.testhost import TestHost
from tests.harness import ProgramRun, run_program

pytestmark = pytest.mark.e2e

STACK = "rotation"
REGISTRIES_YAML = "/etc/rancher/k3s/registries.yaml"
PEBBLE_CLOSED_PORT = 5443
EXPIRY_DIR = "/var/lib/registry-credential-expiry"
UNAUTHORIZED = re.compile(r"\b401\b|unauthorized", re.IGNORECASE)


@dataclass
class Attempt:
    credential: str
    """Which password the client used (a label, never the password)."""
    ok: bool
    unauthorized: bool
    output: str


@dataclass
class Loop:
    """One client repeating an action in a thread until stopped; `rounds` counts completed attempts."""

    name: str
    action: Callable[[], Attempt]
    pause: float
    attempts: list[Attempt] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    cond: threading.Condition = field(default_factory=threading.Condition)
    thread: threading.Thread | None = None

    def start(self) -> Loop:
        self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stop.is_set():
            attempt = self.action()
            with self.cond:
                self.attempts.append(attempt)
                self.cond.notify_all()
            self.stop.wait(self.pause)

    def another_round(self, timeout: float = 120) -> None:
        """Block until one more attempt has completed (it started after this call, or was running)."""
        with self.cond:
            target = len(self.attempts) + 1
            assert self.cond.wait_for(lambda: len(self.attempts) >= target or self.stop.is_set(), timeout), self.name

    def halt(self) -> None:
        """Stop after the attempt in flight (it completes)."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=300)

    def unauthorized(self) -> list[Attempt]:
        return [a for a in self.attempts if a.unauthorized]


@dataclass
class Stack:
    host: TestHost
    clients: Clients
    state_dir: e2e_apply.StateDir
    config: dict[str, Any]
    run: ProgramRun | None = None

    def apply(self, hook: replay.StepHook | None = None, **changes: str) -> replay.ApplyResult:
        self.config.update(changes)
        outcome = e2e_apply.up(self.config, self.state_dir, stack=STACK, console=lambda _line: None, hook=hook)
        assert outcome.result is not None
        self.run = outcome.run
        return outcome.result

    @property
    def exports(self) -> dict[str, Any]:
        assert self.run is not None
        return self.run.exports

    def flux_config_json(self) -> str:
        for entry in self.state_dir.replay_state().resources.values():
            if entry["name"] == "flux-secret":
                return str(entry["inputs"]["stringData"][".dockerconfigjson"])
        raise KeyError("flux-secret")


def password_of(config_json: str) -> str:
    entry = next(iter(json.loads(config_json)["auths"].values()))
    return str(entry["password"])


@pytest.fixture(scope="module")
def stack(testhost: TestHost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    clients = Clients(testhost)
    clients.pebble_tls_port(PEBBLE_CLOSED_PORT)
    clients.forget_certificates()
    s = Stack(
        testhost,
        clients,
        e2e_apply.StateDir(tmp_path_factory.mktemp("rotation-state")),
        stack_config(testhost, credentialRotation="1", flux="true"),
    )
    try:
        result = s.apply()
        assert result.ok, f"fresh apply failed:\n{result.error}"
        push = clients.authfile("seed-push", s.exports["dockerConfigJson"])
        clients.push(clients.make_image("rotation-seed"), "e2e/rotation:1", push)
        clients.make_image("rotation-ci")
        yield s
    finally:
        if s.state_dir.replay_state().resources:
            e2e_apply.down(s.state_dir, console=lambda _line: None)
        clients.pebble_tls_port(443)


def _attempt(label: str, proc: Any) -> Attempt:
    text = (proc.stdout or "") + (proc.stderr or "")
    return Attempt(label, proc.returncode == 0, proc.returncode != 0 and bool(UNAUTHORIZED.search(text)), text[-600:])


def k3s_loop(stack: Stack) -> Loop:
    c = stack.clients

    def pull() -> Attempt:
        loaded = c.sh("cat /var/lib/k3s-standin/starts.log | tail -n 1 | cut -d' ' -f2", check=False).stdout.strip()
        return _attempt(loaded[:12], c.k3s_pull("e2e/rotation:1", check=False))

    return Loop("k3s", pull, pause=1.0)


class FluxStandIn:
    """What image-reflector-controller would do with the secret: list tags with whatever it holds right now."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.lock = threading.Lock()
        self.config_json = stack.flux_config_json()

    def hook(self, event: str, step: replay.Step) -> None:
        if event == "done" and step.name == "flux-secret" and step.new is not None:
            with self.lock:
                self.config_json = step.new["inputs"]["stringData"][".dockerconfigjson"]

    def loop(self) -> Loop:
        c = self.stack.clients

        def scan() -> Attempt:
            with self.lock:
                config_json = self.config_json
            path = c.authfile("flux-standin", config_json)
            return _attempt(password_of(config_json)[:4], c.list_tags("e2e/rotation", path, check=False))

        return Loop("flux", scan, pause=2.0)


def ci_loop(stack: Stack, config_json: str, label: str) -> Loop:
    c = stack.clients
    path = c.authfile(f"ci-{label}", config_json)
    counter = iter(range(1, 10_000))

    def push() -> Attempt:
        return _attempt(label, c.push("e2e/rotation-ci:1", f"e2e/rotation-ci:{label}-{next(counter)}", path, check=False))

    return Loop("ci", push, pause=0.2)


def status(stack: Stack, user: str, password: str) -> int:
    return stack.clients.http("/v2/", user=user, password=password).status


def ran(result: replay.ApplyResult) -> dict[str, str]:
    return {s.name: s.op for s in result.steps if s.applied and s.op != "same" and result.status.get(s.urn) == "ok"}


def old_credentials(stack: Stack) -> dict[str, tuple[str, str]]:
    return {
        "push": (stack.exports["pushUsername"], stack.exports["pushPassword"]),
        "pull": (stack.exports["pullUsername"], stack.exports["pullPassword"]),
    }


# --- the handover, default grace period (refused at the end of the same update) ------------------------


def test_rotation_hands_over_without_a_401_and_restarts_k3s_once(stack: Stack) -> None:
    c = stack.clients
    old = old_credentials(stack)
    starts_before = c.starts()
    flux = FluxStandIn(stack)
    loops = {"k3s": k3s_loop(stack).start(), "flux": flux.loop().start(),
             "ci": ci_loop(stack, stack.exports["dockerConfigJson"], "before").start()}
    order: list[str] = []

    def hook(event: str, step: replay.Step) -> None:
        flux.hook(event, step)
        if step.op == "same":
            return
        order.append(f"{event} {step.name}")
        if event == "done" and step.name == "caddy-site-handover":
            for loop in loops.values():  # every client, still on the old password, meets the handover site
                loop.another_round()
        if event == "start" and step.name == "caddy-site-file":
            for name in ("k3s", "flux"):  # ... and k3s and Flux, now on the new one, meet it too
                loops[name].another_round()
            loops["ci"].halt()  # the CI job outliving the update is the one the default grace period refuses

    try:
        for loop in loops.values():
            loop.another_round()
        result = stack.apply(hook=hook, credentialRotation="2")
        assert result.ok, result.error
        for name in ("k3s", "flux"):  # both on the new password against the final site
            loops[name].another_round()
    finally:
        for loop in loops.values():
            loop.halt()

    for name, loop in loops.items():
        assert not loop.unauthorized(), f"{name} got 401: {loop.unauthorized()[0].output}"
        # The only other failure allowed: a pull in the instant k3s itself restarts (it is not running).
        failed = [a for a in loop.attempts if not a.ok and not (name == "k3s" and "is not running" in a.output)]
        assert not failed, f"{name} failed: {failed[0].output}"
    print(f"\nattempts during the rotation: { {n: len(lp.attempts) for n, lp in loops.items()} }")
    # The order the handover needs: site accepts both -> clients switch -> site drops the old ones.
    assert order.index("done caddy-site-handover") < order.index("start k3s-trust-file")
    assert order.index("done caddy-site-handover") < order.index("start flux-secret")
    assert order.index("done k3s-trust-restart") < order.index("start caddy-site-file")
    assert order.index("done flux-secret") < order.index("start caddy-site-file")
    # Each loop really ran on both sides of the switch.
    assert len({a.credential for a in loops["k3s"].attempts}) == 2
    assert len({a.credential for a in loops["flux"].attempts}) == 2
    assert loops["ci"].attempts
    # After the update: the previous passwords are refused, the new ones work, k3s started exactly once more.
    for user, password in old.values():
        assert status(stack, user, password) == 401
    assert status(stack, stack.exports["pushUsername"], stack.exports["pushPassword"]) == 200
    assert status(stack, stack.exports["pullUsername"], stack.exports["pullPassword"]) == 200
    starts_after = c.starts()
    assert starts_after[: len(starts_before)] == starts_before
    assert len(starts_after) == len(starts_before) + 1
    assert starts_after[-1][1] == c.sha256(REGISTRIES_YAML)
    assert "handle_errors" not in c.sh("cat /etc/caddy/registry.caddy").stdout


def test_a_second_update_after_the_rotation_changes_nothing(stack: Stack) -> None:
    result = stack.apply()
    assert result.ok, result.error
    assert not result.executions, [e.name for e in result.executions]


# --- interrupted between the site and the trust file -----------------------------------------------------


def test_interrupted_rotation_leaves_every_client_working_and_the_next_update_completes_it(stack: Stack) -> None:
    c = stack.clients
    old = old_credentials(stack)
    old_flux = c.authfile("interrupted-old-flux", stack.flux_config_json())
    old_push = c.authfile("interrupted-old-push", stack.exports["dockerConfigJson"])
    starts_before = c.starts()
    trust_before = c.sha256(REGISTRIES_YAML)

    def kill_after_site(event: str, step: replay.Step) -> None:
        if event == "done" and step.name == "caddy-site-handover":
            raise replay.Interrupted("CLI killed between the site and the trust file")

    with pytest.raises(replay.Interrupted):
        stack.apply(hook=kill_after_site, credentialRotation="3")
    recorded = {e["name"] for e in stack.state_dir.replay_state().resources.values()}
    assert "caddy-site-handover" in recorded
    assert c.sha256(REGISTRIES_YAML) == trust_before and c.starts() == starts_before  # trust step never ran
    # Every client works: the old password everywhere it still is, and the new one.
    assert "Image is up to date" in c.k3s_pull("e2e/rotation:1").stdout
    assert json.loads(c.list_tags("e2e/rotation", old_flux).stdout)["Tags"] == ["1"]
    c.push("e2e/rotation-ci:1", "e2e/rotation-ci:interrupted-old", old_push)
    new = run_program(stack.config, stack.state_dir.program_state(), stack=STACK)  # the outputs it would show
    assert new.error is None, new.error
    new_push = c.authfile("interrupted-new-push", new.exports["dockerConfigJson"])
    c.push("e2e/rotation-ci:1", "e2e/rotation-ci:interrupted-new", new_push)
    for user, password in old.values():
        assert status(stack, user, password) == 200

    result = stack.apply()  # the same config: completes the rotation
    assert result.ok, result.error
    changed = ran(result)
    assert "caddy-site-handover" not in changed
    assert {"k3s-trust-file", "k3s-trust-restart", "caddy-site-file"} <= set(changed)
    for user, password in old.values():
        assert status(stack, user, password) == 401
    assert status(stack, stack.exports["pullUsername"], stack.exports["pullPassword"]) == 200
    assert len(c.starts()) == len(starts_before) + 1
    assert "Image is up to date" in c.k3s_pull("e2e/rotation:1").stdout
    new_flux = c.authfile("interrupted-new-flux", stack.flux_config_json())
    assert json.loads(c.list_tags("e2e/rotation", new_flux).stdout)["Tags"] == ["1"]


# --- a grace period ----------------------------------------------------------------------------------------


def test_grace_period_keeps_the_old_credentials_until_the_host_timer_refuses_them(stack: Stack) -> None:
    c = stack.clients
    old = old_credentials(stack)
    starts_before = c.starts()
    flux = FluxStandIn(stack)
    # This time the CI job with the old password runs through the whole update and past it.
    loops = {"k3s": k3s_loop(stack).start(), "flux": flux.loop().start(),
             "ci": ci_loop(stack, stack.exports["dockerConfigJson"], "graced").start()}

    def hook(event: str, step: replay.Step) -> None:
        flux.hook(event, step)
        if event == "done" and step.name == "caddy-site-handover":
            for loop in loops.values():
                loop.another_round()

    try:
        for loop in loops.values():
            loop.another_round()
        result = stack.apply(hook=hook, credentialGracePeriod="60s", credentialRotation="4")
        assert result.ok, result.error
        for loop in loops.values():  # after the update: k3s and Flux on the new password, CI still on the old
            loop.another_round()
    finally:
        for loop in loops.values():
            loop.halt()
    for name, loop in loops.items():
        assert not loop.unauthorized(), f"{name} got 401: {loop.unauthorized()[0].output}"
        failed = [a for a in loop.attempts if not a.ok and not (name == "k3s" and "is not running" in a.output)]
        assert not failed, f"{name} failed: {failed[0].output}"
    assert len(c.starts()) == len(starts_before) + 1
    new = old_credentials(stack)
    # Right after the update both generations work; a timer on the host ends the grace period.
    for user, password in [*old.values(), *new.values()]:
        assert status(stack, user, password) == 200
    assert c.sh("systemctl is-active registry-credential-expiry.timer", check=False).stdout.strip() == "active"
    assert c.sh(f"stat -c '%a %U' {EXPIRY_DIR} {EXPIRY_DIR}/site").stdout.split() == ["700", "root", "600", "root"]
    # Waiting for the timer (not timing it): the staged site is gone once it has run.
    deadline = time.monotonic() + 240
    while c.sh(f"test -e {EXPIRY_DIR}/site", check=False).returncode == 0:
        assert time.monotonic() < deadline, c.sh("systemctl status registry-credential-expiry.timer", check=False).stdout
        time.sleep(2)
    for user, password in old.values():
        assert status(stack, user, password) == 401
    for user, password in new.values():
        assert status(stack, user, password) == 200
    assert "previous credentials refused" in c.sh("journalctl -u registry-credential-expiry -o cat --no-pager").stdout
    assert "handle_errors" not in c.sh("cat /etc/caddy/registry.caddy").stdout
    # The next update sees nothing to do: the timer's site is the one the program expects.
    again = stack.apply()
    assert again.ok, again.error
    assert not again.executions, [e.name for e in again.executions]


def test_grace_period_back_to_zero_removes_the_timer(stack: Stack) -> None:
    c = stack.clients
    old = old_credentials(stack)
    result = stack.apply(credentialGracePeriod="1h", credentialRotation="5")
    assert result.ok, result.error
    assert status(stack, *old["push"]) == 200
    assert c.sh("systemctl is-active registry-credential-expiry.timer", check=False).stdout.strip() == "active"
    result = stack.apply(credentialGracePeriod="0")
    assert result.ok, result.error
    assert {e.name for e in result.executions} >= {"caddy-site-file"}
    assert status(stack, *old["push"]) == 401
    assert c.sh(f"test -e {EXPIRY_DIR} || test -e /etc/systemd/system/registry-credential-expiry.timer", check=False).returncode != 0


def test_grace_period_ends_at_boot_when_the_host_was_down_at_its_end(stack: Stack) -> None:
    c = stack.clients
    old = old_credentials(stack)
    result = stack.apply(credentialGracePeriod="40s", credentialRotation="6")
    assert result.ok, result.error
    assert status(stack, *old["pull"]) == 200
    generations = next(
        v for k, v in stack.state_dir.program_state().items() if k.endswith("::credentials-generations")
    )
    deadline = int(generations["outputs"]["rotated_at"]) + 40
    # Stopping the timer stands in for a host that is down when the grace period ends ...
    c.sh("systemctl stop registry-credential-expiry.timer")
    until = time.monotonic() + 120
    while int(c.sh("date +%s").stdout) <= deadline:
        assert time.monotonic() < until
        time.sleep(2)
    assert status(stack, *old["pull"]) == 200  # nothing ended it yet
    # ... and comes back after it: the expiry unit runs at boot and finds the period over.
    stack.host.restart()
    c.trust_pebble()
    c.wait_registry(timeout=90)
    until = time.monotonic() + 120
    while c.sh(f"test -e {EXPIRY_DIR}/site", check=False).returncode == 0:
        assert time.monotonic() < until, c.sh("systemctl status registry-credential-expiry.service", check=False).stdout
        time.sleep(2)
    for user, password in old.values():
        assert status(stack, user, password) == 401
    assert status(stack, stack.exports["pullUsername"], stack.exports["pullPassword"]) == 200
    again = stack.apply()
    assert again.ok, again.error
    assert not again.executions, [e.name for e in again.executions]
